"""The ``cmpp`` gateway: CMPP 2.0 / 3.0 connections to China Mobile's ISMG (or an aggregator's).

Messages go out as CMPP_SUBMIT, pipelined in each connection's sliding window (W = 16 by
default, as the specification recommends) over one or more connections (``binds``; a configured
``rate_per_second`` is split among them). Long messages: ``TP_udhi`` 1 with the UDH in
``Msg_Content`` and ``Pk_total``/``Pk_number`` set, on one connection, in order. Links are
checked with CMPP_ACTIVE_TEST when idle (C = 180 s, T = 60 s, N = 3 by default). SUBMIT_RESP
result 8 (flow control) → ``throttled``; no answer → ``unknown``. CMPP_DELIVER status reports and
MO go to the sink the host attaches, correlated by the 64-bit ``Msg_Id`` (canonical: unsigned
decimal). The shared secret comes from an environment variable (``secret_env``).
docs/carriers-smpp-cmpp.md.
"""

from __future__ import annotations

import os
import ssl
from typing import Annotated, Literal

import msgspec

from pigeon import ConfigError, GatewayContext, GatewayRegistry, hookimpl
from plugins.gateway_cmpp import codec as c
from plugins.gateway_cmpp.wire import CmppDialect, CmppWire
from plugins.session_core.gateway import BinaryGateway
from plugins.session_core.link import Link, tcp_connect
from plugins.session_core.pool import BindPool
from plugins.session_core.receipts import Correlator
from plugins.session_core.session import SessionSettings

__all__ = ["CmppConfig", "CmppGateway"]

_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class CmppConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "cmpp"`` options."""

    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 7890
    source_addr: Annotated[str, msgspec.Meta(min_length=1, max_length=6)]
    """SP_Id (企业代码), the login name of CMPP_CONNECT."""
    secret_env: str
    """Environment variable holding the shared secret."""
    version: Literal["2.0", "3.0"] = "3.0"
    src_id: Annotated[str, msgspec.Meta(max_length=21)] = ""
    """The number handsets see (``106…`` plus an extension)."""
    service_id: Annotated[str, msgspec.Meta(max_length=10)] = ""
    msg_src: Annotated[str, msgspec.Meta(max_length=6)] = ""
    """Msg_src (defaults to ``source_addr``)."""
    fee_user_type: Annotated[int, msgspec.Meta(ge=0, le=3)] = 2
    """0 the recipient pays, 1 the sender, 2 the SP, 3 ``fee_terminal_id``."""
    fee_terminal_id: str = ""
    fee_type: Annotated[str, msgspec.Meta(max_length=2)] = "01"
    """01 free, 02 per message, 03 monthly…"""
    fee_code: Annotated[str, msgspec.Meta(max_length=6)] = "000000"
    msg_level: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    registered_delivery: Annotated[int, msgspec.Meta(ge=0, le=1)] = 1
    ascii_when_possible: bool = True
    """Send ASCII-only texts as Msg_Fmt 0 (160/153 a part); others always UCS-2 (Msg_Fmt 8)."""
    concat: Literal["udh8", "udh16"] = "udh8"
    national_numbers: bool = True
    binds: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    window: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    rate_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    connect_timeout: _Seconds = 5.0
    bind_timeout: _Seconds = 10.0
    response_timeout: _Seconds = 60.0
    active_test_interval: _Seconds = 180.0
    active_test_timeout: _Seconds = 60.0
    active_test_tries: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    reconnect_base: _Seconds = 0.5
    reconnect_cap: _Seconds = 30.0
    idempotent: bool = False
    throttle_retry_after: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    utc_offset_hours: float = 8.0
    """The ISMG's clock zone (CONNECT timestamps, report times): China is UTC+8."""
    tls: bool = False
    tls_ca_file: str = ""
    max_tracked: Annotated[int, msgspec.Meta(ge=1000)] = 500_000
    receipt_wait: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    """Seconds a ``pigeon send`` keeps the binds open after its last submit for the receipts still
    due (it stops as soon as every accepted message has its final receipt); those that do not come
    in time leave their recipients ``submitted``. 0: end at once (a running ``pigeon serve`` on the
    same account and store records the rest)."""


class CmppGateway(BinaryGateway):
    """CMPP connections to one ISMG."""

    def __init__(self, config: CmppConfig, ctx: GatewayContext) -> None:
        secret = os.environ.get(config.secret_env, "")
        if not secret:
            raise ConfigError(
                ctx.name, "options.secret_env", f"the environment variable {config.secret_env} is not set"
            )
        version = c.V3 if config.version == "3.0" else c.V2
        try:
            wire = CmppWire(
                version=version,
                service_id=config.service_id,
                src_id=config.src_id,
                msg_src=config.msg_src or config.source_addr,
                fee_user_type=config.fee_user_type,
                fee_terminal_id=config.fee_terminal_id,
                fee_type=config.fee_type,
                fee_code=config.fee_code,
                msg_level=config.msg_level,
                registered_delivery=config.registered_delivery,
                ascii_when_possible=config.ascii_when_possible,
                concat=config.concat,
                national=config.national_numbers,
                utc_offset_hours=config.utc_offset_hours,
            )
        except ValueError as exc:
            raise ConfigError(ctx.name, "options", str(exc)) from None
        settings = SessionSettings(
            window=config.window,
            response_timeout=config.response_timeout,
            bind_timeout=config.bind_timeout,
            keepalive_interval=config.active_test_interval,
            keepalive_timeout=config.active_test_timeout,
            keepalive_tries=config.active_test_tries,
        )
        tls = ssl.create_default_context(cafile=config.tls_ca_file or None) if config.tls else None
        connect = tcp_connect(config.host, config.port, timeout=config.connect_timeout, tls=tls)
        links = [
            Link(
                lambda: CmppDialect(config.source_addr, secret, version, config.utc_offset_hours),
                connect,
                settings,
                name=f"{ctx.name}#{i}",
                idle_probe=config.active_test_interval,
                backoff=self.backoff(config.reconnect_base, config.reconnect_cap),
            )
            for i in range(config.binds)
        ]
        pool = BindPool(
            ctx.name,
            wire,
            links,
            idempotent=config.idempotent,
            rate_per_second=config.rate_per_second,
            throttle_retry_after=config.throttle_retry_after,
            correlator=Correlator(ctx.name, max_tracked=config.max_tracked),
        )
        super().__init__(
            ctx.name,
            pool,
            max_batch=config.max_batch,
            idempotent=config.idempotent,
            receipt_wait=config.receipt_wait if config.registered_delivery else 0.0,
        )


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``cmpp``."""
    gateways.add(
        "cmpp", CmppGateway, CmppConfig, description="CMPP 2.0/3.0 connections to an ISMG (windowed)"
    )
