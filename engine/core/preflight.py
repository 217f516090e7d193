"""Checks that run before the first send and refuse a campaign that would break the rules.

Facts: ``reference/protocols-carriers-compliance.md`` §3 — a signature of 2–12 characters with no
symbols or spaces; marketing messages must carry an opt-out (``拒收请回复R``); the Advertising Law
(Art. 9(3)) forbids absolute terms such as 国家级、最高级、最佳 and SAMR's 2023 guide extends that to
terms of the same meaning, with carve-outs (an allow-list here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from engine.core.template import Template

__all__ = [
    "DEFAULT_ALLOWED_TERMS",
    "DEFAULT_BANNED_TERMS",
    "OPT_OUT_MARKERS",
    "Finding",
    "banned_terms_in",
    "check_campaign",
    "errors",
]

DEFAULT_BANNED_TERMS: Final = (
    # Statutory examples of the Advertising Law, Art. 9(3)
    "国家级", "最高级", "最佳",
    # Terms of the same meaning commonly refused by platform review (configurable)
    "顶级", "极品", "第一品牌", "绝无仅有", "顶尖", "万能", "第一", "最低", "销量冠军", "抄底", "最具",
    "最高", "全国首家", "极端", "首选", "空前绝后", "绝对", "最大", "世界领先", "唯一", "巅峰", "顶峰",
    "最新发明", "最先进",
)  # fmt: skip
DEFAULT_ALLOWED_TERMS: Final = ("最佳时间", "最佳保质期", "最佳赏味期", "最佳食用期")
"""Carve-outs of SAMR's 2023 guide: consumer tips such as the best time or best-before period."""

OPT_OUT_MARKERS: Final = (
    "拒收请回复R",
    "回T退订",
    "退订回T",
    "回TD退订",
    "退订回TD",
    "回复TD退订",
    "回复T退订",
)
_SIGNATURE_OK: Final = re.compile(r"^[0-9A-Za-z\u4e00-\u9fff]+$")


@dataclass(frozen=True, slots=True)
class Finding:
    """One preflight result: an error refuses the send; a warning is shown and the send goes on."""

    level: Literal["error", "warning"]
    key: str
    """The config key to change (``template.signature``…)."""
    message: str


def _term_hits(text: str, banned: Iterable[str], allowed: Sequence[str]) -> list[str]:
    """Banned terms found in ``text`` outside the allowed phrases."""
    masked = text
    for phrase in sorted(allowed, key=len, reverse=True):
        masked = masked.replace(phrase, "\x00" * len(phrase))
    return [t for t in banned if t and t in masked]


def banned_terms_in(
    text: str,
    banned: Iterable[str] = DEFAULT_BANNED_TERMS,
    allowed: Sequence[str] = DEFAULT_ALLOWED_TERMS,
) -> list[str]:
    """The banned terms in ``text`` (a whole message, as sent) outside the allowed phrases."""
    return _term_hits(text, banned, allowed)


def check_campaign(
    template: Template,
    *,
    kind: str,
    banned_terms: Iterable[str] = DEFAULT_BANNED_TERMS,
    allowed_terms: Sequence[str] = DEFAULT_ALLOWED_TERMS,
) -> list[Finding]:
    """Every finding for a compiled campaign template (length, signature, opt-out, absolute terms)."""
    findings: list[Finding] = []
    sig = template.signature
    if template.length_error is not None:
        findings.append(Finding("error", "template.text", template.length_error))
    if not 2 <= len(sig) <= 12:
        findings.append(
            Finding(
                "error",
                "template.signature",
                f"the signature 【{sig}】 has {len(sig)} characters; carriers accept 2 to 12",
            )
        )
    if sig and not _SIGNATURE_OK.match(sig):
        findings.append(
            Finding(
                "error",
                "template.signature",
                f"the signature 【{sig}】 may hold only Chinese characters, letters and digits "
                "(no spaces or symbols)",
            )
        )
    full = template.body + template.suffix
    if kind == "marketing" and not any(m in full for m in OPT_OUT_MARKERS):
        findings.append(
            Finding(
                "error",
                "template.opt_out_text",
                'a marketing message must tell people how to opt out: remove opt_out_text = "" '
                "(the default appends 拒收请回复R) or end the text with it",
            )
        )
    literal = "".join(p for p in template.pieces if isinstance(p, str)) + template.signature
    hits = _term_hits(literal, banned_terms, allowed_terms)
    if hits:
        findings.append(
            Finding(
                "error",
                "template.text",
                f"absolute terms the Advertising Law (Art. 9) forbids in ads: {', '.join(hits)}; "
                "reword them, or list a lawful phrase in policy.allowed_terms",
            )
        )
    if template.literal_encoding == "ucs2" and "�" in literal:
        findings.append(
            Finding("warning", "template.text", "the text holds U+FFFD: was it saved in another encoding?")
        )
    return findings


def errors(findings: Iterable[Finding]) -> list[Finding]:
    """Only the findings that refuse the send."""
    return [f for f in findings if f.level == "error"]
