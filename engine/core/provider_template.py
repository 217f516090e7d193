"""Templates filed with a cloud SMS provider: their placeholders, Pigeon's text for them, and the checks.

Aliyun and Tencent send only templates filed and approved in the console: a request names the
template (Aliyun ``TemplateCode``, Tencent ``TemplateId``) and gives its parameters (Aliyun
``${name}`` placeholders as a JSON object, Tencent ``{1}``, ``{2}`` … as a list in order). A
campaign keeps the approved text and which segment field fills each placeholder::

    [template]
    signature = "小鹅优选"
    [template.provider]
    provider = "aliyun"
    code = "SMS_460695000"
    text = "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R"
    params = { name = "name|顾客", coupon = "coupon" }

From it Pigeon derives an ordinary template (``亲爱的{name|顾客}，您的{coupon}元券已到账，拒收请
回复R``), so preview, billed parts, cost, preflight and the ledger see exactly the text the
provider will send. Before any send it checks that every placeholder is mapped (and nothing
else), and — per row, in the ``render`` stage — that each parameter is within the provider's
length limit and holds no link (both providers refuse links in variables: Aliyun
``isv.PARAM_NOT_SUPPORT_URL``, Tencent FAQ 382/13301). The rendered rows carry their parameter
values to the gateway in :attr:`engine.core.messages.MessageBatch.params`.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec

from engine.core.errors import TemplateError

__all__ = [
    "DEFAULT_MAX_PARAM_LENGTH",
    "LINK",
    "Provider",
    "ProviderParams",
    "ProviderTemplate",
    "ProviderTemplateConfig",
    "compile_provider_template",
    "param_problem",
    "placeholders",
]

Provider = Literal["aliyun", "tencent"]

DEFAULT_MAX_PARAM_LENGTH: Final[dict[str, int]] = {"aliyun": 35, "tencent": 6}
"""Characters per parameter value when the template sets no limit. Tencent: "非验证码短信：每个变量
取值最多支持6个字符" (FAQ 382/13301; accounts with longer filed variables set ``max_param_length``).
Aliyun: 35 for its "other" variable type [U: the console's per-type rules vary]."""

LINK: Final = re.compile(
    r"(?i)\b(?:https?://|www\.)|\b[a-z0-9-]+\.(?:com|cn|net|top|xyz|cc|me|io|shop|link|ly)(?:/|\b)"
)
"""What counts as a link inside a parameter value."""

_ALIYUN = re.compile(r"\$\{([^{}]*)\}")
_TENCENT = re.compile(r"\{([0-9]+)\}")
_ALIYUN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,24}")


class ProviderTemplateConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[template.provider]`` (and ``[service.templates.<id>.provider]``): a template filed with
    Aliyun or Tencent, as the config gives it."""

    provider: Literal["aliyun", "tencent"]
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """Aliyun ``TemplateCode`` (``SMS_…``) / Tencent ``TemplateId``, as the console shows it."""
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    """The approved text with ``${name}`` (Aliyun) / ``{1}`` (Tencent) placeholders, without the
    signature: what the provider will send, character for character."""
    params: dict[str, str] = {}
    """Placeholder → segment field (``"field"`` or ``"field|default"``); every placeholder needs one."""
    max_param_length: Annotated[int, msgspec.Meta(ge=1, le=500)] | None = None
    """Most characters per parameter value (default: Tencent 6, Aliyun 35)."""
    param_lengths: dict[str, Annotated[int, msgspec.Meta(ge=1, le=500)]] = {}
    """Per-placeholder limits over ``max_param_length`` (a variable filed longer)."""
    links_in_params: bool = False
    """Whether parameter values may hold links (both providers refuse them: keep links in the filed text)."""


class ProviderTemplate(msgspec.Struct, frozen=True, gc=False):
    """A filed template, compiled: what the gateway names and in what order it gives parameters."""

    provider: str
    """``aliyun`` or ``tencent``."""
    code: str
    """Aliyun ``TemplateCode`` / Tencent ``TemplateId``."""
    text: str
    """The approved text, placeholders included."""
    names: tuple[str, ...]
    """Placeholder names in the order the provider takes them (Aliyun: first use; Tencent: 1…n)."""
    fields: tuple[str, ...]
    """The segment field filling each name (aligned with ``names``)."""
    defaults: tuple[str | None, ...]
    """The value used when the field is empty (aligned with ``names``; None: the row is rejected)."""
    limits: tuple[int, ...]
    """Most characters of each parameter value (aligned with ``names``)."""
    links_allowed: bool
    body: str
    """The same text in Pigeon's template syntax (``{field}`` / ``{field|default}``)."""


ProviderParams = tuple[ProviderTemplate, tuple[str, ...]]
"""One message's template and its parameter values (aligned with ``template.names``)."""


def param_problem(
    template: ProviderTemplate, k: int, value: str, *, links: bool = False
) -> tuple[str, str] | None:
    """What is wrong with ``value`` as the template's ``k``-th parameter — (reason, what to change):
    ``param_too_long`` over its limit, ``url_in_field`` a link the provider refuses (unless
    ``links``: the provider's own per-phone link) — or None."""
    limit = template.limits[k]
    name, field = template.names[k], template.fields[k]
    if len(value) > limit:
        return (
            "param_too_long",
            f"parameter {name} ({field}) has {len(value)} characters; the filed template allows {limit}",
        )
    if not template.links_allowed and not links and LINK.search(value):
        return (
            "url_in_field",
            f"parameter {name} ({field}) holds a link; {template.provider} refuses links in variables: "
            "put the link in the filed text",
        )
    return None


def placeholders(text: str, provider: str) -> list[str | tuple[str]]:
    """``text`` split into literal strings and ``(name,)`` placeholders; raises :class:`TemplateError`."""
    pattern = _ALIYUN if provider == "aliyun" else _TENCENT
    out: list[str | tuple[str]] = []
    pos = 0
    for m in pattern.finditer(text):
        name = m.group(1).strip()
        if provider == "aliyun" and not _ALIYUN_NAME.fullmatch(name):
            raise TemplateError(
                f"placeholder ${{{m.group(1)}}} at character {m.start() + 1}: Aliyun names start with a "
                "letter and hold letters, digits and '_' (at most 25)"
            )
        if provider == "tencent" and not (name.isdigit() and name.isascii() and int(name) >= 1):
            raise TemplateError(
                f"placeholder {{{m.group(1)}}} at character {m.start() + 1}: Tencent placeholders "
                "are numbers {1}, {2} …"
            )
        if m.start() > pos:
            out.append(text[pos : m.start()])
        out.append((str(int(name)) if provider == "tencent" else name,))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    for i in range(1, len(out)):
        if isinstance(out[i], tuple) and isinstance(out[i - 1], tuple):
            raise TemplateError(
                f"placeholders {_show(out[i - 1][0], provider)} and {_show(out[i][0], provider)} "
                "follow each other with no text between: providers refuse such templates"
            )
    return out


def _show(name: str, provider: str) -> str:
    return f"${{{name}}}" if provider == "aliyun" else f"{{{name}}}"


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def compile_provider_template(
    *,
    provider: str,
    code: str,
    text: str,
    params: dict[str, str],
    max_param_length: int | None = None,
    param_lengths: dict[str, int] | None = None,
    links_in_params: bool = False,
) -> ProviderTemplate:
    """Check a filed template against its parameter mapping and compile it.

    ``params`` maps each placeholder name (Tencent: ``"1"``, ``"2"`` …) to a segment field, or to
    ``"field|default"``. Raises :class:`TemplateError` saying what to change.
    """
    if provider not in DEFAULT_MAX_PARAM_LENGTH:
        raise TemplateError(f"unknown provider {provider!r}: expected aliyun or tencent")
    if not code.strip():
        raise TemplateError("the template code is empty: give the code the console shows (SMS_… / 1234567)")
    if "【" in text or "】" in text:
        raise TemplateError(
            "the filed text holds 【】: the signature is added by the provider; set template.signature"
        )
    pieces = placeholders(text, provider)
    order: list[str] = []
    for p in pieces:
        if isinstance(p, tuple) and p[0] not in order:
            order.append(p[0])
    if provider == "tencent":
        order.sort(key=int)
        want = [str(i) for i in range(1, len(order) + 1)]
        if order != want:
            raise TemplateError(
                f"Tencent placeholders must be {{1}} … {{{len(order)}}} without gaps; the text has "
                + ", ".join(f"{{{n}}}" for n in order)
            )
    mapping = {str(k).strip().removeprefix("${").removesuffix("}").strip("{}"): v for k, v in params.items()}
    unmapped = [n for n in order if n not in mapping]
    if unmapped:
        raise TemplateError(
            "placeholder(s) "
            + ", ".join(_show(n, provider) for n in unmapped)
            + " have no segment field: add them to template.provider.params"
        )
    extra = [k for k in mapping if k not in order]
    if extra:
        raise TemplateError(
            "template.provider.params names placeholder(s) the filed text does not have: "
            + ", ".join(_show(n, provider) for n in extra)
            + (f"; its placeholders: {', '.join(_show(n, provider) for n in order)}" if order else "")
        )
    lengths = param_lengths or {}
    unknown = [k for k in lengths if k not in order]
    if unknown:
        raise TemplateError(f"template.provider.param_lengths names unknown placeholder(s): {unknown}")
    cap = max_param_length or DEFAULT_MAX_PARAM_LENGTH[provider]
    fields: list[str] = []
    defaults: list[str | None] = []
    for n in order:
        field, sep, default = mapping[n].partition("|")
        field = field.strip()
        if not field or any(c in field for c in "{}"):
            raise TemplateError(f"template.provider.params.{n} = {mapping[n]!r}: name a segment field")
        if sep and any(c in default for c in "{}"):
            raise TemplateError(f"template.provider.params.{n}: a default cannot hold braces")
        fields.append(field)
        defaults.append(default if sep else None)
    body_parts: list[str] = []
    for p in pieces:
        if isinstance(p, tuple):
            i = order.index(p[0])
            d = defaults[i]
            body_parts.append("{" + fields[i] + (f"|{d}" if d is not None else "") + "}")
        else:
            body_parts.append(_escape(p))
    for n, d in zip(order, defaults, strict=True):
        limit = lengths.get(n, cap)
        if d is not None and len(d) > limit:
            raise TemplateError(f"the default of {_show(n, provider)} is over its {limit}-character limit")
    return ProviderTemplate(
        provider=provider,
        code=code.strip(),
        text=text,
        names=tuple(order),
        fields=tuple(fields),
        defaults=tuple(defaults),
        limits=tuple(lengths.get(n, cap) for n in order),
        links_allowed=links_in_params,
        body="".join(body_parts),
    )
