"""The ``smpp`` gateway: SMPP 3.4 transceiver (or transmitter) binds to a carrier's SMSC.

Messages go out as submit_sm, pipelined in each bind's window (10 by default) over one or more
binds (``binds``; a configured ``rate_per_second`` is split among them); long messages as
concatenated parts (UDH with an 8- or 16-bit reference, or ``sar_*`` TLVs) on one bind, in
order. Answers become outcomes (ESME_RTHROTTLED 0x58 and RMSGQFUL 0x14 → ``throttled``; no
answer → ``unknown``); deliver_sm receipts and MO go to the sink the host attaches
(:meth:`SmppGateway.attach`), correlated and folded per message. The password comes from an
environment variable (``password_env``), never from the config file. docs/carriers-smpp-cmpp.md.
"""

from __future__ import annotations

import os
import ssl
from typing import Annotated, Literal

import msgspec

from pigeon import ConfigError, GatewayContext, GatewayRegistry, hookimpl
from plugins.gateway_smpp import codec as c
from plugins.gateway_smpp.wire import SmppDialect, SmppWire
from plugins.session_core.gateway import BinaryGateway
from plugins.session_core.link import Link, tcp_connect
from plugins.session_core.pool import BindPool
from plugins.session_core.receipts import Correlator
from plugins.session_core.session import SessionSettings

__all__ = ["SmppConfig", "SmppGateway"]

_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class SmppConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "smpp"`` options."""

    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 2775
    system_id: str
    password_env: str
    """Environment variable holding the bind password (at most 8 characters)."""
    system_type: str = ""
    bind: Literal["transceiver", "transmitter"] = "transceiver"
    """``transceiver`` also receives receipts and MO on the same bind."""
    binds: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    window: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    """Submits in flight per bind."""
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    rate_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """The SMSC's agreed rate in SMS parts per second for all binds together (0: none)."""
    source_addr: str = ""
    source_ton: Annotated[int, msgspec.Meta(ge=0, le=6)] = 0
    source_npi: Annotated[int, msgspec.Meta(ge=0, le=18)] = 0
    dest_ton: Annotated[int, msgspec.Meta(ge=0, le=6)] = 1
    dest_npi: Annotated[int, msgspec.Meta(ge=0, le=18)] = 1
    national_numbers: bool = False
    """Write Chinese numbers without 86 (``13800138000``) instead of ``8613800138000``."""
    service_type: str = ""
    registered_delivery: Annotated[int, msgspec.Meta(ge=0, le=0x1F)] = 1
    gsm7: Literal["unpacked", "packed", "never"] = "unpacked"
    """GSM-7 texts: one septet an octet (data_coding 0, most SMSCs), packed, or never (UCS-2)."""
    concat: Literal["udh8", "udh16", "sar"] = "udh8"
    connect_timeout: _Seconds = 5.0
    bind_timeout: _Seconds = 10.0
    response_timeout: _Seconds = 30.0
    enquire_link_interval: _Seconds = 30.0
    enquire_link_timeout: _Seconds = 10.0
    enquire_link_tries: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    unbind_timeout: _Seconds = 2.0
    """How long closing waits for unbind_resp."""
    reconnect_base: _Seconds = 0.5
    reconnect_cap: _Seconds = 30.0
    idempotent: bool = False
    """Whether the SMSC deduplicates resent submits (then a timeout is ``retry``, not ``unknown``)."""
    throttle_retry_after: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    tls: bool = False
    tls_ca_file: str = ""
    receipt_utc_offset_hours: float = 0.0
    max_tracked: Annotated[int, msgspec.Meta(ge=1000)] = 500_000
    """Messages remembered for receipt correlation and folding."""
    receipt_wait: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    """Seconds a ``pigeon send`` keeps the binds open after its last submit for the receipts still
    due (it stops as soon as every accepted message has its final receipt); those that do not come
    in time leave their recipients ``submitted``. 0: end at once (a running ``pigeon serve`` on the
    same account and store records the rest)."""


class SmppGateway(BinaryGateway):
    """SMPP 3.4 binds to one SMSC."""

    def __init__(self, config: SmppConfig, ctx: GatewayContext) -> None:
        password = os.environ.get(config.password_env, "")
        if not password:
            raise ConfigError(
                ctx.name, "options.password_env", f"the environment variable {config.password_env} is not set"
            )
        try:
            bind = c.Bind(
                command=c.BIND_TRANSCEIVER if config.bind == "transceiver" else c.BIND_TRANSMITTER,
                seq=0,
                system_id=config.system_id,
                password=password,
                system_type=config.system_type,
            )
            c.encode(bind)  # lengths checked now, not at the first bind
            template = c.SubmitTemplate(
                service_type=config.service_type,
                source_addr=config.source_addr,
                source_ton=config.source_ton,
                source_npi=config.source_npi,
                dest_ton=config.dest_ton,
                dest_npi=config.dest_npi,
                registered_delivery=config.registered_delivery,
            )
        except ValueError as exc:
            raise ConfigError(ctx.name, "options", str(exc)) from None
        wire = SmppWire(
            template,
            gsm7=config.gsm7,
            concat=config.concat,
            national=config.national_numbers,
            receipt_utc_offset_hours=config.receipt_utc_offset_hours,
            mo_packed=config.gsm7 == "packed",
        )
        settings = SessionSettings(
            window=config.window,
            response_timeout=config.response_timeout,
            bind_timeout=config.bind_timeout,
            keepalive_interval=config.enquire_link_interval,
            keepalive_timeout=config.enquire_link_timeout,
            keepalive_tries=config.enquire_link_tries,
            unbind_timeout=config.unbind_timeout,
        )
        tls = None
        if config.tls:
            tls = ssl.create_default_context(cafile=config.tls_ca_file or None)
        connect = tcp_connect(config.host, config.port, timeout=config.connect_timeout, tls=tls)
        links = [
            Link(
                lambda: SmppDialect(bind),
                connect,
                settings,
                name=f"{ctx.name}#{i}",
                idle_probe=config.enquire_link_interval,
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
            receipt_wait=config.receipt_wait
            if config.registered_delivery & 3 and config.bind == "transceiver"
            else 0.0,
        )


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``smpp``."""
    gateways.add("smpp", SmppGateway, SmppConfig, description="SMPP 3.4 binds to an SMSC (windowed)")
