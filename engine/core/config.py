"""Engine and campaign config: msgspec Structs decoded from TOML, with errors that say what to change."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from engine.core.carriers import CARRIERS
from engine.core.errors import ConfigError, TemplateError
from engine.core.periods import parse_period
from engine.core.phone import mask, parse_phone
from engine.core.provider_template import ProviderTemplate, ProviderTemplateConfig, compile_provider_template
from engine.core.sendwindow import SendWindow
from engine.core.service_config import ServiceConfig
from engine.core.service_templates import compile_filed
from engine.core.template import DEFAULT_OPT_OUT

__all__ = [
    "Base",
    "CampaignConfig",
    "CapWindowConfig",
    "CarrierConfig",
    "CoordinatorConfig",
    "EngineConfig",
    "GatewayConfig",
    "LaneCapsConfig",
    "LoadedCampaign",
    "LoadedEngine",
    "OutageConfig",
    "PluginsConfig",
    "PolicyConfig",
    "ProviderTemplateConfig",
    "RetryConfig",
    "ReviewConfig",
    "RoutingConfig",
    "SegmentConfig",
    "StoreConfig",
    "TemplateConfig",
    "VariantConfig",
    "convert_section",
    "load_campaign",
    "load_engine",
]

S = TypeVar("S", bound=msgspec.Struct)


class Base(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Config base: immutable, keyword-only, and a typo is an error rather than a silent default."""


PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Identifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class CarrierConfig(Base, kw_only=True, frozen=True):
    """Per-carrier settings (``[carriers.cm]``…)."""

    price_per_part: NonNegativeFloat = 0.0
    """Price of one billed SMS part, in the engine's ``currency``; used for cost estimates."""
    rate_per_second: PositiveInt | None = None
    """Most SMS parts sent to this carrier in any one second, over all gateways; unset = unlimited."""
    transactional_share: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.2
    """Share of ``rate_per_second`` that ``pigeon serve`` keeps for transactional messages: blasts
    it runs use the rest, so a running blast never holds a transactional message back."""


class GatewayConfig(Base, kw_only=True, frozen=True):
    """One ``[gateways.<name>]`` section."""

    plugin: str
    """Which gateway plugin implements it (``blackhole``, ``file``, ``http``…)."""
    carriers: tuple[Literal["cm", "cu", "ct", "cbn", "intl"], ...] = CARRIERS
    """Carriers this gateway serves. The first gateway listing a carrier is its primary."""
    options: dict[str, Any] = {}
    """Plugin-specific settings, validated by the plugin's own config type."""
    in_flight: PositiveInt = 4
    """Requests kept open at once (keep it within the plugin's connection pool)."""
    rate_per_second: PositiveInt | None = None
    """Most SMS parts this gateway gets in any one second, all carriers together (an account's
    budget). When the provider answers "too fast" the rate is halved, then climbs back."""
    breaker_threshold: PositiveInt = 3
    """Failed requests in a row after which the gateway rests and its carriers fail over."""
    breaker_cooldown: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Seconds a tripped gateway rests before one trial request."""
    send_window: str | None = None
    """Hours this gateway accepts messages (``"08:00-22:00"``, in ``send_window_timezone``), on top
    of each campaign's own window: a provider's rule."""
    send_window_timezone: str = "Asia/Shanghai"
    urls_in_fields: bool = True
    """Whether the provider accepts links inside template variables (Tencent refuses them: links
    must be fixed, filed text). False: rows whose field values hold a link are rejected."""


class PluginsConfig(Base, kw_only=True, frozen=True):
    """``[plugins]``: which installed plugins to leave out."""

    disabled: list[str] = []


class RoutingConfig(Base, kw_only=True, frozen=True):
    """``[routing]``: carrier resolvers that override the prefix table."""

    resolvers: list[str] = []
    """Registered resolver names, applied in order after the prefix table."""
    options: dict[str, dict[str, Any]] = {}
    """Per-resolver settings: ``[routing.options.<name>]``."""


class RetryConfig(Base, kw_only=True, frozen=True):
    """``[retry]``: how often and how patiently a message is sent again."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    base: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    """Seconds before the first retry; doubles each time (with full jitter)."""
    cap: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Longest wait between two attempts."""


class StoreConfig(Base, kw_only=True, frozen=True):
    """``[store]``: where the engine keeps what outlives a run (opt-outs…)."""

    path: str = "pigeon.db"
    """The embedded SQLite store (WAL mode), relative to the engine file."""
    lease_ttl: Annotated[float, msgspec.Meta(ge=3, le=3600)] = 15.0
    """Seconds a campaign's lease lives without a heartbeat (renewed every third of it): after
    that, a run on another host may take over the campaign of a run that stopped answering. On
    this host a dead owner's lease is taken over at once (docs/ledger.md)."""


class OutageConfig(Base, kw_only=True, frozen=True):
    """``[outage]``: how long a send waits for gateways that cannot be reached."""

    limit: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    """Seconds every gateway of a carrier may stay unreachable (connection refused, DNS, TLS)
    before the run stops, everyone not sent still ``pending`` for ``pigeon resume``. Until then the
    route is paused and probed; nobody is failed or marked ``unknown`` for an outage."""


class CoordinatorConfig(Base, kw_only=True, frozen=True):
    """``[coordinator]``: what the workers of one campaign share (docs/scale-out.md).

    ``embedded`` (the default) is one host: the campaign's lease in the store, rates and claims in
    the process. A registered plugin (``redis``) shares each request's recipient claims and the
    carriers' and gateways' rate budgets among every worker that sends the campaign."""

    plugin: str = "embedded"
    """A registered coordinator (``pigeon plugins`` lists them): ``embedded`` or ``redis``."""
    options: dict[str, Any] = {}
    """The plugin's own settings (``[coordinator.options]``; ``redis``: ``url``, ``prefix``…)."""
    burst: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.1
    """The largest request on a shared budget, as a share of its rate (requests above are split):
    the workers together keep ``(1 - burst) / (1 + margin)`` of the rate at most."""
    margin: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.02
    """How much wider than a second each shared budget's window is taken, for the time between
    the charge and the request's arrival."""
    pause: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.25
    """Seconds a lane waits before asking a coordinator that did not answer again."""
    reserve: bool = False
    """Keep each carrier's ``transactional_share`` of the shared budgets as a bucket of its own:
    marketing campaigns book only the rest; transactional ones book the reserve, then the rest."""
    slow_down: bool = True
    """When a gateway answers "too fast" (HTTP 429, SMPP throttled), cut its shared budget for
    every worker (half, at most once per 0.2 s, not below 5%, climbing back by 5% of the rate a
    second) — not only the answering process's own rate. ``false``: each worker slows only itself
    (its gateway's own limiter, when the gateway has a ``rate_per_second``)."""
    share_store_optouts: bool = True
    """At start (``pigeon send --coordinator``, ``pigeon worker``, ``pigeon serve``), upload the
    store's opt-outs the coordinator's shared copy lacks (those added since this store's last
    upload; all of them the first time), so every worker's claims refuse them. ``false``: only
    opt-outs heard while running are shared."""


class CapWindowConfig(Base, kw_only=True, frozen=True):
    """One cap: at most ``limit`` messages per number per ``period``."""

    limit: PositiveInt
    period: str
    """``calendar_day`` (midnight to midnight in ``timezone``) or a rolling ``30s``/``15m``/``24h``/``7d``."""


class LaneCapsConfig(Base, kw_only=True, frozen=True):
    """``[caps.marketing]`` / ``[caps.transactional]``: the windows that apply to that kind."""

    windows: list[CapWindowConfig] = []
    timezone: str = "Asia/Shanghai"
    """Where a calendar day starts."""
    same_content: str | None = None
    """At most one message with the same text per number within this rolling period (``30s``)."""


class EngineConfig(Base, kw_only=True, frozen=True):
    """The engine file: gateways, carrier prices and limits, plugins, runtime knobs."""

    batch_size: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 1024
    """Recipients per batch through the stages."""
    backend: Literal["asyncio", "trio"] = "asyncio"
    """Event loop: asyncio (with uvloop when installed) or trio."""
    currency: str = "CNY"
    shards: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """Worker processes a ``pigeon send`` splits its campaign across, each reading a byte range of
    the segment (one per core is the most that helps; ``--shards`` overrides it). Rates and
    in-flight windows are split among them (docs/performance.md)."""
    runs_dir: str = "runs"
    """Where each run writes its summary, rejects and file-gateway output (relative to this file)."""
    carriers: dict[Literal["cm", "cu", "ct", "cbn", "intl"], CarrierConfig] = {}
    gateways: dict[Identifier, GatewayConfig]
    plugins: PluginsConfig = PluginsConfig()
    routing: RoutingConfig = RoutingConfig()
    store: StoreConfig = StoreConfig()
    retry: RetryConfig = RetryConfig()
    outage: OutageConfig = OutageConfig()
    caps: dict[Literal["marketing", "transactional"], LaneCapsConfig] = {}
    """Frequency caps per number, across campaigns and runs, per kind of message."""
    coordinator: CoordinatorConfig = CoordinatorConfig()
    """What the workers of a campaign share: ``embedded`` (one host) or ``redis`` (docs/scale-out.md)."""
    service: ServiceConfig = ServiceConfig()
    """``pigeon serve``: API keys, templates, limits, webhooks (docs/service.md)."""


class SegmentConfig(Base, kw_only=True, frozen=True):
    """The engine-level keys of ``[segment]``; all other keys belong to the source plugin."""

    source: str
    """Source plugin: ``csv`` or ``jsonl`` built in."""
    phone_field: str = "phone"
    """Column holding the phone number."""


class VariantConfig(Base, kw_only=True, frozen=True):
    """``[[template.variants]]``: one text of an A/B test and the share of recipients it goes to."""

    name: Identifier
    """How the report names it (``a``, ``b``, ``short-copy``…)."""
    share: Annotated[float, msgspec.Meta(gt=0, le=1)]
    """The share of the campaign's recipients who get this text; the shares add up to 1."""
    text: str
    """The body, in the ``template.text`` syntax (signature and opt-out text are the template's)."""


class TemplateConfig(Base, kw_only=True, frozen=True):
    """``[template]``: the text and what surrounds it."""

    text: str = ""
    """Body with ``{field}`` / ``{field|default}`` tokens (or ``provider``: a filed template)."""
    signature: str
    """Sender signature, shown as ``【signature】`` before the body."""
    opt_out_text: str | None = None
    """Appended to marketing messages; defaults to ``拒收请回复R``; ``""`` to leave it out."""
    max_length: Annotated[int, msgspec.Meta(ge=10, le=5000)] = 500
    """Longest allowed message in billed characters, signature and opt-out text included."""
    provider: ProviderTemplateConfig | None = None
    """A template filed with the provider (for the ``aliyun`` and ``tencent`` gateways): its text
    replaces ``text``, and nothing is appended to it (the opt-out text must be in the filed text)."""
    variants: list[VariantConfig] = []
    """An A/B test: two or more texts, each to its share of the recipients (chosen per number,
    stable across resumes); ``text`` is then left out. The report counts each variant apart."""


class PolicyConfig(Base, kw_only=True, frozen=True):
    """``[policy]``: compliance settings of a campaign."""

    banned_terms: list[str] | None = None
    """Absolute terms to refuse in the template; unset = the built-in list (Advertising Law Art. 9
    and the terms of the same meaning platforms refuse)."""
    allowed_terms: list[str] = []
    """Lawful phrases containing a banned term (a registered trademark, 最佳赏味期…), added to the
    built-in carve-outs."""
    send_window: str | None = None
    """Allowed sending hours in the recipient's time zone, ``"08:00-21:00"``, or several ranges
    (``"11:30-13:00, 19:30-21:30"``); unset = that for marketing, none for transactional;
    ``""`` for none."""
    timezone: str = "Asia/Shanghai"
    """The time zone of Chinese numbers (and of the send window's hours)."""
    respect_optouts: bool | None = None
    """Suppress numbers that opted out; unset = yes for marketing, no for transactional
    (order and shipping notices are not advertising)."""
    require_consent: bool = False
    """Send only to numbers with a consent record (``pigeon consent import``); the others end
    ``suppressed`` with reason ``no_consent``."""
    max_rejected_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    """The share of rows that may be rejected (bad numbers, missing fields, undecodable…) before
    the segment is judged broken: checked on its first rows before anything is sent, and on the
    whole run at the end (exit 2, the campaign not marked finished). 1 turns the check off."""
    spend_cap: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """The most the campaign may cost, in the engine's ``currency`` (billed parts × the carrier's
    ``price_per_part``, counted once per recipient when first handed to a gateway, over every run
    of the campaign). Unset: no cap. See ``spend_cap_mode`` for a segment that would cost more."""
    spend_cap_mode: Literal["refuse", "partial"] = "refuse"
    """``refuse``: a campaign whose planned cost (every sendable row of the segment, as
    ``pigeon preview`` counts it) is over ``spend_cap`` is refused before anything is sent;
    ``partial``: it is sent until the next request would cross the cap, and the rest stay
    ``pending`` (reason ``spend_cap``) for a resume with a higher cap."""
    daily_limit: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The most recipients handed to gateways per calendar day in ``timezone``, over every run
    of the campaign: a bigger blast is spread over days — it pauses when the day's number is out
    and goes on at the send window's first opening of the next day. Unset: no limit."""


class ReviewConfig(Base, kw_only=True, frozen=True):
    """``[review]``: what must happen before a campaign may start (docs/configuration.md)."""

    seeds: list[str] = []
    """The team's own numbers: ``pigeon send --test`` (``"test": true`` in the API) sends each
    variant's first message, rendered from a real row, to each of them through the campaign's
    gateway — outside the campaign's ledger, caps and dedupe. At most 20."""
    require_test: bool | None = None
    """Refuse the real send until a test of the campaign's current content (template, variants,
    segment, links) was accepted by the gateway for every seed; unset = yes when seeds are listed."""
    require_approval: bool = False
    """Refuse the real send until someone approves the current content: through the service a
    second API key with the ``approve`` scope (never the one that submitted it); from the command
    line ``pigeon send --approved-by NAME``, recorded in the store."""

    @property
    def needs_test(self) -> bool:
        """Whether a test send of the current content must come before the real send."""
        return self.require_test if self.require_test is not None else bool(self.seeds)


class OutcomesConfig(Base, kw_only=True, frozen=True):
    """``[outcomes]``: how the campaign's effect is measured (docs/outcomes.md)."""

    holdout: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.0
    """Share of the recipients kept back, unsent (state ``suppressed``, reason ``held_out``), chosen
    by a fixed hash of (campaign, number): buyers among them against buyers among those sent is the
    campaign's lift. 0: none; 0.05 is usual; at most 0.5."""
    window: str = "7d"
    """Attribution window: an order paid within this long after a recipient's delivery (after the
    hand-over when no receipt came) counts for the campaign, unless a later campaign touched the
    recipient before it (last touch)."""
    group_field: str = "group"
    """The segment column naming each recipient's group (``pigeon segment rfm`` writes ``group``);
    a segment without it is one group, ``all``."""


class LinksConfig(Base, kw_only=True, frozen=True):
    """``[links]``: the campaign's tracked link, written where the template says ``{link}``."""

    mode: Literal["group", "recipient", "provider"]
    """``group``: one filed link per group (``{domain}/{code}``, clicks per group); ``recipient``:
    one code per recipient on the merchant's own filed short domain (clicks per person; not where
    the provider forbids links in variables); ``provider``: per-phone links the gateway's provider
    makes (Aliyun smart short URLs) — needs a gateway with that capability."""
    target: str
    """Where a click goes: the landing page (``https://…``)."""
    domain: str = ""
    """The short link base served by ``pigeon serve``'s redirector (``https://s.shop.cn/l``):
    a link is ``{domain}/{code}``. Required for ``group`` and ``recipient``."""
    code_length: Annotated[int, msgspec.Meta(ge=5, le=12)] = 7
    """Characters of a code (base62; 7 give 3.5·10¹² codes). Every character is billed."""
    field: str = "link"
    """The template field the link fills."""


class CampaignConfig(Base, kw_only=True, frozen=True):
    """A campaign file: who to send to, what to send, and how."""

    id: Identifier | None = None
    """Stable campaign id (defaults to the file name without extension)."""
    name: str = ""
    kind: Literal["marketing", "transactional"] = "marketing"
    engine: str | None = None
    """Path of the engine file, relative to this file (``--engine`` and ``$PIGEON_ENGINE`` win)."""
    segment: dict[str, Any]
    template: TemplateConfig
    policy: PolicyConfig = PolicyConfig()
    delivery: Literal["at-most-once", "at-least-once"] | None = None
    """What a crash may cost (docs/ledger.md): ``at-most-once`` (marketing default) never sends a
    message twice; ``at-least-once`` (transactional default) never skips one."""
    outcomes: OutcomesConfig = OutcomesConfig()
    """Holdout and attribution (``pigeon report ID --outcomes``)."""
    links: LinksConfig | None = None
    """A tracked link (docs/outcomes.md); none by default."""
    review: ReviewConfig = ReviewConfig()
    """Seed numbers, a required test send and approval (``[review]``); none by default."""

    @property
    def send_window(self) -> SendWindow | None:
        """The campaign's send window, with the default for its kind."""
        spec = self.policy.send_window
        if spec is None:
            spec = DEFAULT_MARKETING_WINDOW if self.kind == "marketing" else ""
        return SendWindow.parse(spec, self.policy.timezone) if spec else None

    @property
    def opt_out_text(self) -> str:
        """The opt-out text to append: the configured one, the default for marketing, or none."""
        if self.template.opt_out_text is not None:
            return self.template.opt_out_text
        return DEFAULT_OPT_OUT if self.kind == "marketing" else ""


DEFAULT_MARKETING_WINDOW = "08:00-21:00"
"""Marketing in China: providers allow 8–22 (Tencent, Huawei) down to 8–20 (Qiniu); 8–21 by default."""

_AT = re.compile(r" - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`")


def _type_at(root: type[msgspec.Struct], path: str) -> Any:
    """The msgspec.inspect type found at ``path`` (msgspec's ``.a[...].b[1]`` form) below ``root``."""
    ins = msgspec.inspect
    t: Any = ins.type_info(root)
    for key in [k for k in re.split(r"[.\[\]]", path) if k]:
        if isinstance(t, ins.UnionType):
            t = next((x for x in t.types if not isinstance(x, ins.NoneType)), t)
        if isinstance(t, ins.StructType):
            field = next((f for f in t.fields if f.name == key), None)
            t = field.type if field is not None else None
        elif isinstance(t, ins.DictType):
            t = t.value_type
        elif isinstance(t, ins.ListType | ins.VarTupleType):
            t = t.item_type
        else:
            return None
    if isinstance(t, ins.UnionType):
        t = next((x for x in t.types if not isinstance(x, ins.NoneType)), t)
    return t


def _explain(exc: msgspec.ValidationError, root: type[msgspec.Struct], prefix: str) -> tuple[str, str]:
    """Turn msgspec's message into (key path, problem) in the operator's terms."""
    msg = str(exc)
    m = _AT.search(msg)
    path = m.group("path") if m else ""
    problem = msg[: m.start()] if m else msg
    full = (prefix.rstrip(".") + path.replace("[...]", ".*")).strip(".")
    unknown = _UNKNOWN.match(problem)
    if unknown:
        key = unknown.group("key")
        t = _type_at(root, path)
        allowed = [f.name for f in t.fields] if isinstance(t, msgspec.inspect.StructType) else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        where = f"{full}.{key}" if full else key
        return where, f"unknown key{hint} Allowed keys here: {', '.join(allowed) or '(none)'}"
    missing = _MISSING.match(problem)
    if missing:
        key = missing.group("key")
        return (f"{full}.{key}" if full else key), "missing required key"
    if problem.startswith("Invalid enum value"):
        t = _type_at(root, path)
        if m and m.group("key") and isinstance(t, msgspec.inspect.DictType):
            t = t.key_type
            problem = problem.replace("Invalid enum value", "invalid key")
        if isinstance(t, msgspec.inspect.LiteralType):
            problem += f"; expected one of: {', '.join(map(str, t.values))}"
    problem = problem.replace("Expected", "expected")
    return full, problem


def convert_section(
    data: Any, tp: type[S], *, file: str, path: str, root: type[msgspec.Struct] | None = None
) -> S:
    """Convert a decoded TOML table into ``tp``; errors name ``file`` and the full key path."""
    try:
        return msgspec.convert(data, type=tp, strict=True)
    except msgspec.ValidationError as exc:
        where, problem = _explain(exc, tp, path + "." if path else "")
        raise ConfigError(file, where, problem) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "config files must be UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None


class LoadedEngine(msgspec.Struct, frozen=True):
    """An engine config with the directory its relative paths resolve against."""

    config: EngineConfig
    file: str
    base_dir: Path

    @property
    def store_path(self) -> Path:
        """The store file, resolved against the engine file's directory."""
        p = Path(self.config.store.path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


class LoadedCampaign(msgspec.Struct, frozen=True):
    """A campaign config, its id, its segment's engine-level keys and the source's own keys."""

    config: CampaignConfig
    file: str
    base_dir: Path
    id: str
    segment: SegmentConfig
    source_options: dict[str, Any]
    provider: ProviderTemplate | None = None
    """The filed provider template, compiled (``[template.provider]``), or None."""


def load_engine(path: str | Path) -> LoadedEngine:
    """Read and validate an engine file."""
    p = Path(path)
    raw = _read_toml(p)
    for table, tp in (("gateways", GatewayConfig), ("carriers", CarrierConfig)):
        sections = raw.get(table)
        if isinstance(sections, dict):
            for name, section in sections.items():
                convert_section(section, tp, file=str(p), path=f"{table}.{name}")
    cfg = convert_section(raw, EngineConfig, file=str(p), path="")
    if not cfg.gateways:
        raise ConfigError(str(p), "gateways", "configure at least one [gateways.<name>] section")
    for name, g in cfg.gateways.items():
        if g.send_window:
            try:
                SendWindow.parse(g.send_window, g.send_window_timezone)
            except (ValueError, ZoneInfoNotFoundError) as exc:
                raise ConfigError(str(p), f"gateways.{name}.send_window", str(exc)) from None
    for kind, caps in cfg.caps.items():
        try:
            ZoneInfo(caps.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                str(p), f"caps.{kind}.timezone", f"unknown time zone {caps.timezone!r}"
            ) from None
        for i, w in enumerate(caps.windows):
            try:
                parse_period(w.period)
            except ValueError as exc:
                raise ConfigError(str(p), f"caps.{kind}.windows[{i}].period", str(exc)) from None
        if caps.same_content is not None:
            try:
                seconds = parse_period(caps.same_content)
            except ValueError as exc:
                raise ConfigError(str(p), f"caps.{kind}.same_content", str(exc)) from None
            if seconds is None:
                raise ConfigError(str(p), f"caps.{kind}.same_content", "needs a rolling period such as 30s")
    for tid, t in cfg.service.templates.items():
        compile_filed(str(p), tid, t)  # text or a filed template, and the filed one's mapping
    return LoadedEngine(cfg, str(p), p.resolve().parent)


def load_campaign(path: str | Path) -> LoadedCampaign:
    """Read and validate a campaign file (the source's own keys are checked by its plugin)."""
    p = Path(path)
    raw = _read_toml(p)
    cfg = convert_section(raw, CampaignConfig, file=str(p), path="")
    seg_raw = dict(cfg.segment)
    common = {k: seg_raw.pop(k) for k in ("source", "phone_field") if k in seg_raw}
    segment = convert_section(common, SegmentConfig, file=str(p), path="segment")
    cid = cfg.id or re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem)[:64]
    try:
        if not parse_period(cfg.outcomes.window):
            raise ValueError("the attribution window is a rolling period such as 7d, not calendar_day")
    except ValueError as exc:
        raise ConfigError(str(p), "outcomes.window", str(exc)) from None
    if cfg.links is not None:
        _check_links(cfg, str(p))
    if cfg.policy.send_window:
        try:
            SendWindow.parse(cfg.policy.send_window, cfg.policy.timezone)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            raise ConfigError(str(p), "policy.send_window", str(exc)) from None
    if not cfg.template.signature.strip().strip("【】"):
        raise ConfigError(str(p), "template.signature", "the signature is empty; carriers require one")
    _check_variants(cfg, str(p))
    _check_review(cfg, str(p))
    cfg, provider = _provider_template(cfg, str(p))
    return LoadedCampaign(cfg, str(p), p.resolve().parent, cid, segment, seg_raw, provider)


def _check_variants(cfg: CampaignConfig, file: str) -> None:
    """An A/B test's texts replace ``template.text``; names are unique and the shares add up to 1."""
    variants = cfg.template.variants
    if not variants:
        return
    if len(variants) < 2:
        raise ConfigError(
            file, "template.variants", "an A/B test needs two variants or more (or use template.text)"
        )
    if len(variants) > 16:
        raise ConfigError(file, "template.variants", f"{len(variants)} variants; at most 16")
    if cfg.template.text.strip() or cfg.template.provider is not None:
        raise ConfigError(
            file,
            "template.text",
            "give either template.text (or [template.provider]) or [[template.variants]], each with its text",
        )
    names = [v.name for v in variants]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(
            file, "template.variants", f"variant names must differ: {', '.join(twice)} repeated"
        )
    for i, v in enumerate(variants):
        if not v.text.strip():
            raise ConfigError(file, f"template.variants[{i}].text", f"variant {v.name!r} has no text")
    total = sum(v.share for v in variants)
    if abs(total - 1.0) > 1e-6:
        shares = " + ".join(f"{v.share:g}" for v in variants)
        raise ConfigError(
            file, "template.variants", f"the shares add up to {total:g} ({shares}); make them add up to 1"
        )


MAX_SEEDS = 20
"""Most seed numbers a campaign lists (a test send goes to each, once per variant)."""


def _check_review(cfg: CampaignConfig, file: str) -> None:
    """Seeds are mobile numbers (each once, at most :data:`MAX_SEEDS`); a required test needs seeds."""
    review = cfg.review
    if len(review.seeds) > MAX_SEEDS:
        raise ConfigError(file, "review.seeds", f"{len(review.seeds)} seed numbers; at most {MAX_SEEDS}")
    seen: set[str] = set()
    for i, raw in enumerate(review.seeds):
        parsed = parse_phone(raw)
        if parsed.reason is not None:
            raise ConfigError(file, f"review.seeds[{i}]", f"{mask(raw)}: {parsed.detail}")
        number = parsed.national or parsed.e164
        if number in seen:
            raise ConfigError(file, f"review.seeds[{i}]", f"{mask(raw)} is listed twice")
        seen.add(number)
    if review.require_test and not review.seeds:
        raise ConfigError(file, "review.seeds", "require_test = true needs the seed numbers the test goes to")


def _check_links(cfg: CampaignConfig, file: str) -> None:
    links = cfg.links
    assert links is not None
    if cfg.template.provider is not None and links.mode != "provider":
        raise ConfigError(
            file,
            "links.mode",
            "a filed provider template carries its link in its filed text (Tencent and Huawei refuse "
            "links in variables): write the group's link into the filed template, or use "
            'mode = "provider" where the provider makes per-phone links',
        )
    if not re.match(r"^https?://[^\s/?#]+\S*$", links.target):
        raise ConfigError(file, "links.target", "the landing page's address: https://…")
    if links.mode != "provider" and not re.match(r"^https?://[^\s/?#]+[^\s?#]*$", links.domain):
        raise ConfigError(
            file,
            "links.domain",
            "the short link base served by `pigeon serve` (https://s.shop.cn/l, a filed domain), "
            "without a query",
        )
    if cfg.template.provider is None:
        texts = [(f"template.variants[{i}].text", v.text) for i, v in enumerate(cfg.template.variants)]
        for key, text in texts or [("template.text", cfg.template.text)]:
            if "{" + links.field not in text:
                raise ConfigError(file, key, f"[links] is set: put {{{links.field}}} where the link goes")


def _provider_template(cfg: CampaignConfig, file: str) -> tuple[CampaignConfig, ProviderTemplate | None]:
    """Compile ``[template.provider]``; the campaign's ``template.text`` becomes its text in Pigeon's
    syntax and nothing is appended to it (the provider sends the filed text as it is)."""
    t = cfg.template
    pt = t.provider
    if pt is None:
        if not t.text.strip() and not t.variants:
            raise ConfigError(file, "template.text", "missing required key (or give [template.provider])")
        return cfg, None
    if t.text.strip():
        raise ConfigError(
            file,
            "template.text",
            "give either template.text or [template.provider] (a filed template's text is its own)",
        )
    if t.opt_out_text:
        raise ConfigError(
            file,
            "template.opt_out_text",
            "a filed template is sent as filed: write the opt-out text into template.provider.text",
        )
    try:
        compiled = compile_provider_template(
            provider=pt.provider,
            code=pt.code,
            text=pt.text,
            params=pt.params,
            max_param_length=pt.max_param_length,
            param_lengths=pt.param_lengths,
            links_in_params=pt.links_in_params,
        )
    except TemplateError as exc:
        raise ConfigError(file, "template.provider", str(exc)) from None
    template = msgspec.structs.replace(t, text=compiled.body, opt_out_text="")
    return msgspec.structs.replace(cfg, template=template), compiled
