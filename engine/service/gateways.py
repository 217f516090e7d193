"""The service's gateways: each configured one opened once for the service's life, with breakers, routes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio

from engine.core.config import convert_section
from engine.core.errors import ConfigError
from engine.core.plugin_host import PluginHost
from engine.sending.gateway import Gateway, GatewayContext, Receiving
from engine.sending.retry import Breaker
from engine.service.context import ServiceContext

__all__ = ["ServiceGateways"]


class ServiceGateways:
    """Gateways by name, their circuit breakers, and each carrier's route (primary first)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.gateways: dict[str, Gateway] = {}
        self.breakers: dict[str, Breaker] = {}
        self.routes: dict[str, str] = {}
        """Carrier → its primary gateway."""
        self.failover: dict[str, list[str]] = {}
        """Carrier → every gateway serving it, primary first."""
        for name, g in ctx.config.gateways.items():
            for carrier in g.carriers:
                self.routes.setdefault(carrier, name)
                self.failover.setdefault(carrier, []).append(name)

    def open(self, host: PluginHost, run_dir: Path) -> None:
        """Build every gateway from its plugin and options; a gateway's own series join the metrics."""
        engine = self.ctx.engine
        for name in sorted(engine.config.gateways):
            gcfg = engine.config.gateways[name]
            if gcfg.plugin not in host.gateways:
                raise ConfigError(
                    engine.file,
                    f"gateways.{name}.plugin",
                    f"unknown gateway plugin {gcfg.plugin!r}; installed: " + ", ".join(host.gateways.names()),
                )
            reg = host.gateways.get(gcfg.plugin)
            opts = convert_section(
                gcfg.options, reg.config_type, file=engine.file, path=f"gateways.{name}.options"
            )
            self.gateways[name] = reg.factory(
                opts, GatewayContext(name=name, base_dir=engine.base_dir, run_dir=run_dir)
            )
            self.breakers[name] = Breaker(gcfg.breaker_threshold, gcfg.breaker_cooldown)
        for gw in self.gateways.values():  # a gateway's own series (the binds of smpp/cmpp)
            collector = getattr(gw, "metrics_collector", None)
            if callable(collector):
                self.ctx.metrics.registry.register(collector())

    def receiving(self) -> dict[str, Receiving]:
        """The gateways that bring receipts and MO in on their own connections (SMPP, CMPP)."""
        return {n: gw for n, gw in self.gateways.items() if isinstance(gw, Receiving)}

    def carriers_down(self, now: float) -> list[str]:
        """Carriers none of whose gateways' breakers let a request through at ``now``."""
        return sorted(
            c for c, names in self.failover.items() if not any(self.breakers[g].allow(now) for g in names)
        )

    async def aclose(self) -> None:
        """Close every gateway (10 s each at most, errors ignored: the service is going away)."""
        for gw in self.gateways.values():
            with anyio.move_on_after(10, shield=True), contextlib.suppress(Exception):
                await gw.aclose()
