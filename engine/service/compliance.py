"""The campaigns' preflight for the API's marketing messages: signature, opt-out text, banned terms.

A ``priority: marketing`` message posted to ``POST /v1/messages`` is an ad as much as a blast's
row is, so it passes the same rules (:func:`engine.core.preflight.check_campaign` on its template,
as ``pigeon send`` runs it) and, since its text is known when it is posted, the banned terms are
looked for in the whole message as it would be sent (fields filled in), not only in the
template's fixed text. A message that breaks a rule is refused with the others of its request
(422, nothing sent).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.preflight import (
    DEFAULT_ALLOWED_TERMS,
    DEFAULT_BANNED_TERMS,
    banned_terms_in,
    check_campaign,
    errors,
)
from engine.core.template import Template
from engine.service.context import ServiceContext
from engine.service.lanes import TEXT_TEMPLATE, ApiLanes
from engine.service.wire import FieldError

__all__ = ["MarketingPolicy"]


class MarketingPolicy:
    """Checks the API's marketing messages against the preflight of campaigns."""

    def __init__(self, ctx: ServiceContext, lanes: ApiLanes) -> None:
        self.lanes = lanes
        svc = ctx.service
        self.banned = tuple(svc.banned_terms if svc.banned_terms is not None else DEFAULT_BANNED_TERMS)
        self.allowed = (*DEFAULT_ALLOWED_TERMS, *svc.allowed_terms)
        self._template_errors: dict[str, list[str]] = {}
        """Template id → what the campaign preflight refuses in it (checked once)."""

    def _template(self, tid: str) -> tuple[Template, list[str]]:
        template, _ = self.lanes.runner(self.lanes.streams["marketing"], tid)
        found = self._template_errors.get(tid)
        if found is None:
            findings = check_campaign(
                template, kind="marketing", banned_terms=self.banned, allowed_terms=self.allowed
            )
            found = self._template_errors[tid] = [f"{f.key}: {f.message}" for f in errors(findings)]
        return template, found

    def check(self, values: Sequence[tuple[str, list[str]]]) -> list[FieldError]:
        """What refuses each message (template id, [phone, *field values]); empty when all pass."""
        out: list[FieldError] = []
        for i, (tid, row) in enumerate(values):
            template, refused = self._template(tid)
            field = "text" if tid == TEXT_TEMPLATE else "template"
            if refused:
                out.append(FieldError(index=i, field=field, detail="; ".join(refused)))
                continue
            message = template.render_one(dict(zip(template.fields, row[1:], strict=True)))
            hits = banned_terms_in(message, self.banned, self.allowed)
            if hits:
                out.append(
                    FieldError(
                        index=i,
                        field="text" if tid == TEXT_TEMPLATE else "fields",
                        detail=f"absolute terms the Advertising Law (Art. 9) forbids in ads: "
                        f"{', '.join(hits)}; reword them (or list a lawful phrase in "
                        "service.allowed_terms)",
                    )
                )
        return out
