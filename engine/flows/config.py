"""Flow files: a trigger, timed steps, cancel events and limits in TOML, checked before anything starts."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo

import msgspec

from engine.core.config import _read_toml, convert_section
from engine.core.errors import ConfigError, TemplateError
from engine.core.periods import parse_period
from engine.core.sendwindow import SendWindow
from engine.core.service_config import ServiceTemplate
from engine.core.template import DEFAULT_OPT_OUT, Template, compile_template

__all__ = [
    "CUSTOMER_EVENTS",
    "EVENT_NAME",
    "KNOWN_EVENTS",
    "ORDER_EVENTS",
    "Flow",
    "FlowConfig",
    "FlowLimit",
    "FlowStep",
    "Step",
    "Wait",
    "check_event_name",
    "load_flow",
    "load_flows",
    "parse_wait",
]

Lane = Literal["transactional", "marketing"]

ORDER_EVENTS: Final = (
    "order_created",
    "order_paid",
    "order_shipped",
    "order_delayed",
    "order_in_city",
    "order_out_for_delivery",
    "order_delivered",
    "order_received",
    "order_closed",
    "refund",
    "review_posted",
)
"""Events about an order (they carry its ``order_id``): the seed's before, during and after the sale."""
CUSTOMER_EVENTS: Final = ("birthday", "signed_up", "product_used_up")
"""Events about a customer (no order)."""
KNOWN_EVENTS: Final = frozenset(ORDER_EVENTS + CUSTOMER_EVENTS)
EVENT_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""What an event type looks like; a type that is not in :data:`KNOWN_EVENTS` starts ``custom_``."""

_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Base(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Config base: immutable, keyword-only, a typo is an error."""


class FlowStep(_Base, kw_only=True, frozen=True):
    """``[[steps]]``: one message, a wait after the step before (or after the trigger)."""

    wait: str
    """``"30m"``, ``"2d"``, ``"1h30m"``, ``"0s"``; ``"at 20:00"`` (the next 20:00, in the flow's
    time zone); ``"2d at 10:00"`` (two days, then the next 10:00)."""
    name: str = ""
    """A label for people (``unpaid_1``); default ``step<N>``."""
    text: str = ""
    """The message, in template syntax (``{name}``, ``{item|您的宝贝}``): fields come from the event."""
    template: str = ""
    """Or a template of the service (``[service.templates.<id>]``), filed ones included."""
    lane: Lane | None = None
    """``transactional`` or ``marketing`` (default: the flow's)."""
    cancel_on: list[str] = []
    """More events that cancel this step (beside the flow's ``cancel_on``)."""


class FlowLimit(_Base, kw_only=True, frozen=True):
    """``[limit]``: how often the flow may start for one customer."""

    count: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    period: str = "30d"
    """A rolling period: ``24h``, ``7d``, ``30d``."""


class FlowConfig(_Base, kw_only=True, frozen=True):
    """One flow file: ``config/flows/<name>.toml``."""

    name: _Name | None = None
    """Default: the file's name without ``.toml``."""
    description: str = ""
    trigger: str
    """The event that starts the flow (``order_created``, ``birthday``, ``custom_…``)."""
    cancel_on: list[str] = []
    """Events (for the same order, or the same customer for customer events) that cancel every
    step still pending: ``order_paid`` before the reminder → no reminder."""
    lane: Lane = "transactional"
    """The steps' lane: ``marketing`` steps obey opt-outs, caps and quiet hours (held to the send
    window, never dropped for it) and carry the opt-out text."""
    send_window: str | None = None
    """Marketing steps' hours (default ``08:00-21:00``), in ``timezone``."""
    timezone: str = "Asia/Shanghai"
    """Where ``at 20:00`` and the send window are read."""
    expire_after: str | None = None
    """A step caught up later than this after its time is not sent (``expired``): ``2h``, ``1d``."""
    signature: str = ""
    """Default: ``service.signature``."""
    limit: FlowLimit | None = None
    """Per customer: starts within a period (more are ignored). One run per order at a time always."""
    enabled: bool = True
    steps: list[FlowStep]


@dataclass(frozen=True, slots=True)
class Wait:
    """A step's wait: ``seconds`` after the step before, then (if set) the next ``at`` o'clock."""

    seconds: float
    at: time | None = None

    def due(self, base: float, tz: ZoneInfo) -> float:
        """Epoch second the step is due, counted from ``base``."""
        t = base + self.seconds
        if self.at is None:
            return t
        local = datetime.fromtimestamp(t, tz)
        target = datetime.combine(local.date(), self.at, tzinfo=tz)
        if target < local:
            target = datetime.combine(local.date() + timedelta(days=1), self.at, tzinfo=tz)
        return target.timestamp()


_PART: Final = re.compile(r"(\d+)\s*([smhd])")
_WAIT: Final = re.compile(r"^\s*(?P<d>(?:\d+\s*[smhd]\s*)*)(?:at\s+(?P<h>\d{1,2}):(?P<m>\d{2}))?\s*$")
_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_wait(text: str) -> Wait:
    """``"30m"`` / ``"1h30m"`` / ``"at 20:00"`` / ``"2d at 10:00"`` → a :class:`Wait`; ValueError
    saying what to write otherwise."""
    m = _WAIT.match(text)
    if not m or not text.strip() or (not m.group("d") and m.group("h") is None):
        raise ValueError(
            f'{text!r} is not a wait: write e.g. "30m", "2d", "1h30m", "at 20:00" or "2d at 10:00"'
        )
    seconds = sum(int(n) * _UNIT[u] for n, u in _PART.findall(m.group("d") or ""))
    at = None
    if m.group("h") is not None:
        h, mi = int(m.group("h")), int(m.group("m"))
        if not (0 <= h <= 23 and 0 <= mi <= 59):
            raise ValueError(f"{text!r}: the hour or minute is out of range")
        at = time(h, mi)
    if seconds > 366 * 86400:
        raise ValueError(f"{text!r} is over a year")
    return Wait(float(seconds), at)


def check_event_name(name: str) -> str | None:
    """Why ``name`` is not an event type a flow can use (None: it is)."""
    if name in KNOWN_EVENTS or (name.startswith("custom_") and EVENT_NAME.match(name)):
        return None
    close = difflib.get_close_matches(name, sorted(KNOWN_EVENTS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"unknown event {name[:64]!r}: {hint}the events are {', '.join(sorted(KNOWN_EVENTS))}, "
        "and your own start with custom_ (custom_vip_upgrade)"
    )


@dataclass(frozen=True)
class Step:
    """A checked step: its wait, lane, template, and the events that cancel it."""

    index: int
    name: str
    wait: Wait
    lane: Lane
    template_id: str
    """The id it is sent under (``flow:<flow>:<index>`` for a step's own ``text``)."""
    template: ServiceTemplate
    compiled: Template | None
    """The step's own text compiled (None for a service template: the service checks those)."""
    cancel_on: frozenset[str]


@dataclass(frozen=True)
class Flow:
    """A checked flow, ready to schedule and fire."""

    name: str
    file: str
    config: FlowConfig
    steps: tuple[Step, ...]
    tz: ZoneInfo
    window: SendWindow
    expire_after: float | None
    limit: tuple[int, float] | None
    cancel_on: frozenset[str]

    @property
    def trigger(self) -> str:
        """The event that starts it."""
        return self.config.trigger

    def cancelled_steps(self, event: str) -> list[int] | None:
        """The steps ``event`` cancels: None for every step, [] for none."""
        if event in self.cancel_on:
            return None
        return [s.index for s in self.steps if event in s.cancel_on]


DEFAULT_FLOW_WINDOW: Final = "08:00-21:00"


def load_flow(
    path: Path,
    *,
    templates: Mapping[str, ServiceTemplate] | None = None,
    signature: str = "",
) -> Flow:
    """Read and check one flow file; :class:`ConfigError` naming the file, key and what to change."""
    file = str(path)
    raw = _read_toml(path)
    cfg = convert_section(raw, FlowConfig, file=file, path="")
    name = cfg.name or path.stem
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise ConfigError(
            file, "name", f"{name[:64]!r} is not a flow name: letters, digits, _ . - (up to 64)"
        )
    for key, ev in [("trigger", cfg.trigger), *(("cancel_on", e) for e in cfg.cancel_on)]:
        why = check_event_name(ev)
        if why:
            raise ConfigError(file, key, why)
    if cfg.trigger in cfg.cancel_on:
        raise ConfigError(
            file, "cancel_on", f"{cfg.trigger!r} is the trigger: it cannot also cancel the flow"
        )
    try:
        tz = ZoneInfo(cfg.timezone)
    except (KeyError, ValueError):
        raise ConfigError(
            file, "timezone", f"unknown time zone {cfg.timezone!r}: write e.g. Asia/Shanghai"
        ) from None
    try:
        window = SendWindow.parse(cfg.send_window or DEFAULT_FLOW_WINDOW, cfg.timezone)
    except ValueError as exc:
        raise ConfigError(file, "send_window", str(exc)) from None
    expire = None
    if cfg.expire_after is not None:
        try:
            expire = parse_period(cfg.expire_after)
        except ValueError as exc:
            raise ConfigError(file, "expire_after", str(exc)) from None
        if expire is None:
            raise ConfigError(file, "expire_after", "a rolling period (2h, 1d), not calendar_day")
    limit = None
    if cfg.limit is not None:
        try:
            period = parse_period(cfg.limit.period)
        except ValueError as exc:
            raise ConfigError(file, "limit.period", str(exc)) from None
        if period is None:
            raise ConfigError(file, "limit.period", "a rolling period (24h, 30d), not calendar_day")
        limit = (cfg.limit.count, period)
    if not cfg.steps:
        raise ConfigError(file, "steps", "a flow needs at least one [[steps]] table")
    if len(cfg.steps) > 50:
        raise ConfigError(file, "steps", f"{len(cfg.steps)} steps; at most 50: split the flow")
    known = dict(templates or {})
    steps: list[Step] = []
    for i, s in enumerate(cfg.steps):
        where = f"steps[{i}]"
        try:
            wait = parse_wait(s.wait)
        except ValueError as exc:
            raise ConfigError(file, f"{where}.wait", str(exc)) from None
        for ev in s.cancel_on:
            why = check_event_name(ev)
            if why:
                raise ConfigError(file, f"{where}.cancel_on", why)
        if bool(s.text) == bool(s.template):
            raise ConfigError(
                file, where, "give the step either text (the message) or template (a service template id)"
            )
        lane = s.lane or cfg.lane
        if s.template:
            if s.template not in known:
                close = difflib.get_close_matches(s.template, list(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    file,
                    f"{where}.template",
                    f"no service template {s.template[:64]!r}: {hint}known: "
                    + (", ".join(sorted(known)) or "(none)"),
                )
            tmpl = known[s.template]
            tid = s.template
        else:
            tmpl = ServiceTemplate(text=s.text, signature=cfg.signature)
            tid = f"flow:{name}:{i}"
        sig = tmpl.signature or cfg.signature or signature
        if not sig.strip().strip("【】"):
            raise ConfigError(
                file, "signature", "no signature: set it here or service.signature (carriers require one)"
            )
        compiled = None
        if s.text:
            try:
                compiled = compile_template(
                    s.text,
                    signature=sig,
                    opt_out_text=DEFAULT_OPT_OUT if lane == "marketing" else "",
                    max_length=tmpl.max_length,
                )
                compiled.check_length()
            except TemplateError as exc:
                raise ConfigError(file, f"{where}.text", str(exc)) from None
        steps.append(
            Step(
                index=i,
                name=s.name or f"step{i + 1}",
                wait=wait,
                lane=lane,
                template_id=tid,
                template=tmpl,
                compiled=compiled,
                cancel_on=frozenset(s.cancel_on),
            )
        )
    return Flow(
        name=name,
        file=file,
        config=cfg,
        steps=tuple(steps),
        tz=tz,
        window=window,
        expire_after=expire,
        limit=limit,
        cancel_on=frozenset(cfg.cancel_on),
    )


def load_flows(
    directory: Path,
    *,
    templates: Mapping[str, ServiceTemplate] | None = None,
    signature: str = "",
) -> dict[str, Flow]:
    """Every ``*.toml`` flow under ``directory`` (none when it does not exist), checked; two flows
    with one name are an error."""
    if not directory.is_dir():
        return {}
    out: dict[str, Flow] = {}
    for path in sorted(directory.glob("*.toml")):
        flow = load_flow(path, templates=templates, signature=signature)
        if flow.name in out:
            raise ConfigError(
                str(path), "name", f"flow {flow.name!r} is also defined in {out[flow.name].file}: rename one"
            )
        if flow.config.enabled:
            out[flow.name] = flow
    return out
