"""API messages in: checked, run through the stages, recorded and queued; idempotency keys; look-ups."""

from __future__ import annotations

import difflib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.core.messages import MessageBatch, Reject, State, SuppressReason
from engine.core.phone import mask, parse_phone
from engine.core.service_templates import field_problem, gateway_problem, opt_out_problem
from engine.core.template import Template, compile_template
from engine.pipeline.runner import Batch
from engine.service.apikeys import ApiKey
from engine.service.callbacks import INSERT_EVENT, Pending, create_tables, drop_state, event_row
from engine.service.compliance import MarketingPolicy
from engine.service.context import ServiceContext
from engine.service.lanes import TEXT_TEMPLATE, ApiLanes
from engine.service.stored import API_MESSAGES_SCHEMA, INSERT_MESSAGE, load, new_id
from engine.service.wire import (
    ApiError,
    Delivery,
    FieldError,
    MessagesIn,
    MessageState,
    MessageView,
    Priority,
    SubmitResponse,
)
from engine.state.ledger.records import LedgerWriteError, MessageRecord
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.tx import transaction

__all__ = ["IDEMPOTENCY_SCHEMA", "Submissions"]

log = logging.getLogger("pigeon.service")

IDEMPOTENCY_SCHEMA = """CREATE TABLE IF NOT EXISTS api_idempotency (
    api_key     TEXT NOT NULL,       -- the API key's name
    idem_key    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,       -- SHA-256 of the request body
    response    BLOB NOT NULL,       -- the 202 answer, JSON
    at          REAL NOT NULL,
    PRIMARY KEY (api_key, idem_key)
)"""

_response_enc = msgspec.json.Encoder()
_response_dec = msgspec.json.Decoder(SubmitResponse)


@dataclass
class _Idem:
    fingerprint: str
    response: SubmitResponse
    at: float


class Submissions:
    """``POST /v1/messages`` and ``GET /v1/messages/{id}`` behind the API."""

    def __init__(self, ctx: ServiceContext, lanes: ApiLanes) -> None:
        self.ctx = ctx
        self.lanes = lanes
        self.api_templates = lanes.templates
        self.templates = lanes.templates.templates
        self.filed = lanes.templates.filed
        self._idem: dict[tuple[str, str], _Idem] = {}
        self._fields_of: dict[str, Template] = {}
        """Template id → its compiled template (for the field checks)."""
        self.policy = MarketingPolicy(ctx, lanes)

    def open(self) -> None:
        """Create the idempotency, message and outbox tables; forget keys past
        ``service.idempotency_ttl``."""
        assert self.ctx.ledger is not None
        db = self.ctx.ledger.db
        create_tables(db)
        with transaction(db):  # idempotency keys: written with their messages' hand-over
            for sql in API_MESSAGES_SCHEMA:
                db.execute(sql)
            db.execute(IDEMPOTENCY_SCHEMA)
            db.execute(
                "DELETE FROM api_idempotency WHERE at < ?", (time.time() - self.ctx.service.idempotency_ttl,)
            )

    def _validate(self, req: MessagesIn) -> list[tuple[str, list[str]]]:
        """Per message: (template id, row values in the template's field order); raises 422."""
        if not req.messages:
            raise ApiError(422, "Invalid request", "messages is empty: send at least one message")
        if len(req.messages) > self.ctx.service.max_messages:
            raise ApiError(
                413,
                "Too many messages",
                f"{len(req.messages)} messages in one request; at most {self.ctx.service.max_messages} "
                "(service.max_messages): split the request",
            )
        errors: list[FieldError] = []
        out: list[tuple[str, list[str]]] = []
        for i, m in enumerate(req.messages):
            if not isinstance(m.to, str) or not 1 <= len(m.to) <= 32:
                errors.append(FieldError(index=i, field="to", detail="expected a phone number as a string"))
                continue
            if (m.template is None) == (m.text is None):
                errors.append(
                    FieldError(index=i, field="template", detail="give either template (with fields) or text")
                )
                continue
            if m.text is not None:
                if m.fields:
                    errors.append(FieldError(index=i, field="fields", detail="fields go with a template"))
                elif not m.text.strip():
                    errors.append(FieldError(index=i, field="text", detail="the text is empty"))
                elif len(m.text) > 1000:
                    errors.append(FieldError(index=i, field="text", detail="longer than 1000 characters"))
                else:
                    out.append((TEXT_TEMPLATE, [m.to, m.text]))
                continue
            tid = m.template or ""
            t = self.templates.get(tid)
            if t is None:
                close = difflib.get_close_matches(tid, list(self.templates), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(sorted(self.templates)) or "(none configured)"
                errors.append(
                    FieldError(
                        index=i,
                        field="template",
                        detail=f"unknown template {tid[:64]!r}{hint} Known: {known}",
                    )
                )
                continue
            template = self._fields_of.get(tid)
            if template is None:
                template = self._fields_of[tid] = compile_template(
                    self.api_templates.body(tid), signature="x", max_length=t.max_length
                )
            filed = self.filed.get(tid)
            if filed is not None:
                problem = field_problem(filed, m.fields)
                if problem is None and req.priority == "marketing":
                    why = opt_out_problem(filed)
                    problem = ("template", why) if why else None
                if problem is not None:
                    errors.append(FieldError(index=i, field=problem[0], detail=problem[1]))
                    continue
            unknown = [f for f in m.fields if f not in template.fields]
            missing = [f for f in template.required if not m.fields.get(f, "").strip()]
            if unknown:
                errors.append(
                    FieldError(
                        index=i,
                        field=f"fields.{unknown[0][:64]}",
                        detail=f"template {tid!r} has no field {unknown[0][:64]!r}; its fields: "
                        + (", ".join(template.fields) or "(none)"),
                    )
                )
            elif missing:
                errors.append(
                    FieldError(
                        index=i, field=f"fields.{missing[0]}", detail=f"template {tid!r} needs this field"
                    )
                )
            elif any(len(v) > 500 for v in m.fields.values()):
                errors.append(
                    FieldError(index=i, field="fields", detail="a field value is over 500 characters")
                )
            else:
                out.append((tid, [m.to, *(m.fields.get(f, "") for f in template.fields)]))
        if errors:
            raise ApiError(
                422,
                "Invalid messages",
                f"{len(errors)} of {len(req.messages)} message(s) cannot be sent; nothing was sent: "
                + errors[0].detail,
                errors=errors,
            )
        return out

    def _misrouted(
        self,
        out_batches: dict[str, list[MessageBatch]],
        values: Sequence[tuple[str, list[str]]],
        index_of: dict[int, int],
    ) -> list[FieldError]:
        """Messages whose gateway cannot send their template: a filed template to another
        provider's gateway, or free text to a gateway that sends only filed templates."""
        errors: list[FieldError] = []
        gateways = self.lanes.gateways
        for carrier, mbs in out_batches.items():
            gateway = gateways.routes[carrier]
            sends = str(getattr(gateways.gateways.get(gateway), "template_provider", "") or "")
            for mb in mbs:
                for row in mb.rows:
                    i = index_of[row]
                    why = gateway_problem(self.filed.get(values[i][0]), gateway, sends)
                    if why is not None:
                        errors.append(FieldError(index=i, field="template", detail=why))
        return sorted(errors, key=lambda e: e.index)

    async def submit(
        self,
        req: MessagesIn,
        *,
        key: str,
        idempotency_key: str | None,
        body: bytes,
        api_key: ApiKey | None = None,
    ) -> SubmitResponse:
        """Check, run the stages, record and queue one request's messages; raises :class:`ApiError`.

        ``key``: the API key's name; ``api_key``: its record (callback allow-list, scopes)."""
        if self.ctx.draining:
            raise ApiError(503, "Shutting down", "the service is draining; send again to another instance")
        if req.callback_url is not None:
            self.check_callback(req.callback_url, api_key)
        fp = hashlib.sha256(body).hexdigest()
        if idempotency_key is not None:
            seen = self._idem.get((key, idempotency_key)) or self._stored_idem(key, idempotency_key)
            if seen is not None and self.ctx.clock.time() - seen.at < self.ctx.service.idempotency_ttl:
                if seen.fingerprint != fp:
                    raise ApiError(
                        422,
                        "Idempotency key reused",
                        "this Idempotency-Key came with a different body; use a new key for a new request",
                    )
                return seen.response
        values = self._validate(req)
        if req.priority == "marketing":  # the campaigns' preflight (signature, opt-out, banned terms)
            broken = self.policy.check(values)
            if broken:
                raise ApiError(
                    422,
                    "Invalid messages",
                    f"{len(broken)} of {len(values)} marketing message(s) break the preflight rules; "
                    "nothing was sent: " + broken[0].detail,
                    errors=broken,
                )
        stream = self.lanes.streams[req.priority]
        rows = stream.rows.take(len(values))
        index_of = {row: i for i, row in enumerate(rows)}
        groups: dict[str, list[int]] = {}
        for i, (tid, _) in enumerate(values):
            groups.setdefault(tid, []).append(i)
        out_batches: dict[str, list[MessageBatch]] = {}
        dropped: list[Reject] = []
        prefix = f"{stream.campaign}-"
        consent = req.priority == "marketing" and (
            self.ctx.service.require_consent or (api_key is not None and api_key.require_consent)
        )
        for tid, idx in groups.items():
            _, runner = self.lanes.runner(stream, tid, consent=consent)
            batch = runner.run(Batch([rows[i] for i in idx], [values[i][1] for i in idx], 0))
            dropped += batch.rejects
            for carrier, mb in (batch.messages(prefix) if batch.nums else {}).items():
                out_batches.setdefault(carrier, []).append(mb)
        misrouted = self._misrouted(out_batches, values, index_of)
        if misrouted:
            raise ApiError(
                422,
                "Invalid messages",
                f"{len(misrouted)} of {len(values)} message(s) cannot be sent; nothing was sent: "
                + misrouted[0].detail,
                errors=misrouted,
            )
        refused = [r for r in dropped if r.state == State.REJECTED]
        if refused:
            errors = [
                FieldError(
                    index=index_of[r.row],
                    field="to"
                    if "number" in r.reason
                    or "prefix" in r.reason
                    or r.reason
                    in ("iot_number", "not_mobile", "special_number", "satellite_number", "missing_phone")
                    else r.reason,
                    detail=f"{r.reason}: {r.detail}",
                )
                for r in sorted(refused, key=lambda r: r.row)
            ]
            raise ApiError(
                422,
                "Invalid messages",
                f"{len(errors)} of {len(values)} message(s) cannot be sent; nothing was sent: "
                + errors[0].detail,
                errors=errors,
            )
        now = self.ctx.clock.time()
        id_of = {row: new_id() for row in rows}  # opaque, random: see engine.service.stored
        out_batches = {
            carrier: [mb.with_ids([id_of[r] for r in mb.rows]) for mb in mbs]
            for carrier, mbs in out_batches.items()
        }
        url = req.callback_url
        show = api_key is not None and api_key.allows("numbers")
        stored: list[tuple[Any, ...]] = []
        events: list[tuple[str, bytes, float]] = []
        pending = self.ctx.pending_callbacks
        states: dict[int, MessageState] = {}
        views: list[MessageView] = []
        numbers: list[str] = []  # (E.164, beside each view: for GET /v1/messages?to=)
        for carrier, mbs in out_batches.items():
            for mb in mbs:
                for mid, row, to, parts in zip(mb.ids, mb.rows, mb.tos, mb.parts, strict=True):
                    states[row] = MessageState(index=index_of[row], id=mid, state="queued", parts=parts)
                    numbers.append(to)
                    stored.append(
                        (
                            mid,
                            stream.campaign,
                            row,
                            req.priority,
                            to,
                            carrier,
                            parts,
                            now,
                            key,
                            url,
                            int(show),
                        )
                    )
                    if url is not None:
                        pending[mid] = Pending(url, to, show, stream.campaign)
                        events.append(
                            event_row(
                                url,
                                message_id=mid,
                                campaign=stream.campaign,
                                state="accepted",
                                reason="",
                                at=now,
                                to_e164=to,
                                show_numbers=show,
                            )
                        )
                    views.append(
                        MessageView(
                            id=mid,
                            state="queued",
                            campaign=stream.campaign,
                            to=mask(to),
                            priority=req.priority,
                            carrier=carrier,
                            parts=parts,
                            accepted_at=now,
                        )
                    )
        for r in dropped:
            mid = id_of[r.row]
            states[r.row] = MessageState(index=index_of[r.row], id=mid, state=r.state, reason=r.reason)
            e164 = parse_phone(r.phone).e164 or r.phone
            numbers.append(e164)
            stored.append((mid, stream.campaign, r.row, req.priority, e164, "", 0, now, key, url, int(show)))
            if url is not None:
                events.append(
                    event_row(
                        url,
                        message_id=mid,
                        campaign=stream.campaign,
                        state=drop_state(r),
                        reason=r.reason,
                        at=now,
                        to_e164=e164,
                        show_numbers=show,
                    )
                )
            views.append(
                MessageView(
                    id=mid,
                    state=r.state,
                    campaign=stream.campaign,
                    to=mask(r.phone),
                    priority=req.priority,
                    reason=r.reason,
                    accepted_at=now,
                )
            )
        # (in the request's order, as the answer lists them: the list endpoint's "newest first")
        order = {id_of[row]: index_of[row] for row in rows}
        pairs = sorted(zip(views, numbers, strict=True), key=lambda p: order.get(p[0].id, 0))
        self.ctx.records.add([v for v, _ in pairs], [n for _, n in pairs])
        if dropped:
            stream.recorder.dropped(dropped)
        # The messages at rest (their ids, numbers, carriers…) and their first events, committed
        # with their drops before the answer: a later process finds them, and the receiver hears.
        self._record(stream.ledger, stored, events)
        response = SubmitResponse(
            priority=req.priority,
            messages=[states[row] for row in rows],
            accepted=sum(1 for s in states.values() if s.state == "queued"),
        )
        if idempotency_key is not None:
            self._idem[(key, idempotency_key)] = _Idem(fp, response, now)
            if len(self._idem) > 100_000:
                self._expire_idem(now)
            if stream.ledger is not None:  # durable with the hand-over of its messages
                stream.ledger.defer(
                    "INSERT OR REPLACE INTO api_idempotency VALUES (?, ?, ?, ?, ?)",
                    (key, idempotency_key, fp, _response_enc.encode(response), now),
                )
        self.ctx.counters["messages_accepted"] += response.accepted
        log.info(
            "messages accepted",
            extra={
                "event": "messages.accepted",
                "priority": req.priority,
                "messages": [
                    {"id": v.id, "to": v.to, "state": v.state, **({"reason": v.reason} if v.reason else {})}
                    for v in views[:20]
                ],
                "count": len(views),
            },
        )
        stream.recorder.queued(len(views) - len(dropped))
        if req.priority == "transactional":
            self.lanes.urgent_pending += response.accepted
        await self.lanes.send(stream, out_batches)
        return response

    def check_callback(self, url: str, api_key: ApiKey | None) -> None:
        """422 unless callbacks are on and ``url`` is on the key's allow-list (messages and campaigns)."""
        if not self.ctx.callbacks_on:
            raise ApiError(
                422,
                "Invalid request",
                "callback_url: this service sends no status callbacks (service.callbacks.secret_env "
                "is not set); leave callback_url out, or ask the operator to set it up",
            )
        if api_key is None or not api_key.callback_allowed(url):
            allowed = ", ".join(api_key.callback_urls or []) if api_key is not None else ""
            raise ApiError(
                422,
                "Callback URL not allowed",
                f"callback_url: {url[:200]!r} is not under a URL the API key "
                f"{api_key.id if api_key else ''!r} may call back ("
                + (f"allowed: {allowed}" if allowed else "it has none")
                + "); the operator adds one with `pigeon keys create NAME --callback-url URL`",
            )

    def _record(
        self,
        ledger: CampaignLedger | None,
        stored: list[tuple[Any, ...]],
        events: list[tuple[str, bytes, float]],
    ) -> None:
        """Commit ``stored`` (api_messages rows) and ``events`` (outbox rows) in one transaction,
        with what the stream's ledger holds (the request's drops)."""
        if ledger is not None:
            try:  # (the idempotency keys deferred to their hand-over are left for it)
                ledger.commit_with(
                    [(INSERT_MESSAGE, row) for row in stored] + [(INSERT_EVENT, ev) for ev in events]
                )
            except LedgerWriteError:
                raise ApiError(
                    503, "Store unavailable", "the store refused the write; send again in a moment"
                ) from None
            return
        if self.ctx.ledger is not None:
            db = self.ctx.ledger.db
            with transaction(db):
                db.executemany(INSERT_MESSAGE, stored)
                db.executemany(INSERT_EVENT, events)

    async def send_rows(
        self, priority: Priority, values: Sequence[tuple[str, list[str]]], rows: Sequence[int]
    ) -> list[tuple[str, str]]:
        """Send messages the service makes itself (flow steps) under the given ``rows`` of the
        ``priority`` stream: the same stages, records and lanes as ``POST /v1/messages``, but a
        message that cannot be sent ends ``rejected`` (with its reason) instead of failing the
        whole request. ``values``: (template id, [phone, *fields in the template's order]).
        Per message: (state, reason) — ``queued``, ``suppressed``, ``deferred``, ``rejected``.
        A marketing step over its frequency cap is ``deferred`` with reason ``capped`` (recorded
        so, not ``suppressed``): the flow tries it again when the cap allows, it is not dropped."""
        stream = self.lanes.streams[priority]
        index_of = {row: i for i, row in enumerate(rows)}
        out: list[tuple[str, str]] = [("queued", "")] * len(values)
        if priority == "marketing":
            for e in self.policy.check(values):
                out[e.index] = ("rejected", f"preflight:{e.detail[:200]}")
        groups: dict[str, list[int]] = {}
        for i, (tid, _) in enumerate(values):
            if out[i][0] == "queued":
                groups.setdefault(tid, []).append(i)
        out_batches: dict[str, list[MessageBatch]] = {}
        dropped: list[Reject] = []
        prefix = f"{stream.campaign}-"
        for tid, idx in groups.items():
            _, runner = self.lanes.runner(stream, tid)
            batch = runner.run(Batch([rows[i] for i in idx], [values[i][1] for i in idx], 0))
            held = [_held_if_capped(r) for r in batch.rejects] if priority == "marketing" else batch.rejects
            dropped += held
            for carrier, mb in (batch.messages(prefix) if batch.nums else {}).items():
                out_batches.setdefault(carrier, []).append(mb)
        for e in self._misrouted(out_batches, values, index_of):
            out[e.index] = ("rejected", e.detail[:200])
        if any(s != "queued" for s, _ in out):  # a misrouted message stays out of its batch
            keep = {rows[i] for i, (s, _) in enumerate(out) if s == "queued"}
            for carrier, mbs in list(out_batches.items()):
                kept = [mb.take([j for j, r in enumerate(mb.rows) if r in keep]) for mb in mbs]
                out_batches[carrier] = [mb for mb in kept if len(mb)]
                if not out_batches[carrier]:
                    del out_batches[carrier]
        for r in dropped:
            out[index_of[r.row]] = (str(r.state), r.reason)
        now = self.ctx.clock.time()
        views: list[MessageView] = []
        numbers: list[str] = []
        for carrier, mbs in out_batches.items():
            for mb in mbs:
                for mid, to, parts in zip(mb.ids, mb.tos, mb.parts, strict=True):
                    numbers.append(to)
                    views.append(
                        MessageView(
                            id=mid,
                            state="queued",
                            campaign=stream.campaign,
                            to=mask(to),
                            priority=priority,
                            carrier=carrier,
                            parts=parts,
                            accepted_at=now,
                        )
                    )
        for r in dropped:
            numbers.append(parse_phone(r.phone).e164 or r.phone)
            views.append(
                MessageView(
                    id=f"{prefix}{r.row}",
                    state=r.state,
                    campaign=stream.campaign,
                    to=mask(r.phone),
                    priority=priority,
                    reason=r.reason,
                    accepted_at=now,
                )
            )
        self.ctx.records.add(views, numbers)
        if dropped:
            stream.recorder.dropped(dropped)
        queued = sum(len(mb) for mbs in out_batches.values() for mb in mbs)
        stream.recorder.queued(queued)
        if priority == "transactional":
            self.lanes.urgent_pending += queued
        await self.lanes.send(stream, out_batches)
        return out

    def _stored_idem(self, key: str, idempotency_key: str) -> _Idem | None:
        """An idempotency key recorded before this process started (it survives a restart)."""
        if self.ctx.ledger is None:
            return None
        row = self.ctx.ledger.db.execute(
            "SELECT fingerprint, response, at FROM api_idempotency WHERE api_key = ? AND idem_key = ?",
            (key, idempotency_key),
        ).fetchone()
        if row is None:
            return None
        found = _Idem(row[0], _response_dec.decode(row[1]), float(row[2]))
        self._idem[(key, idempotency_key)] = found
        return found

    def _expire_idem(self, now: float) -> None:
        ttl = self.ctx.service.idempotency_ttl
        self._idem = {k: v for k, v in self._idem.items() if now - v.at < ttl}

    def message(self, message_id: str, *, show_numbers: bool = False) -> MessageView | None:
        """What is recorded about a message: in memory for recent API messages, else the store
        (``api_messages``) and the ledger. The recipient is masked unless ``show_numbers``."""
        v = self.ctx.records.by_id.get(message_id)
        if v is not None and not show_numbers:
            return v
        if self.ctx.ledger is None or len(message_id) > 200:
            return v
        db = self.ctx.ledger.db
        found = load(db, [message_id]).get(message_id)
        if v is not None:
            return msgspec.structs.replace(v, to=found.to_e164) if found is not None else v
        rec = self.ctx.ledger.message(found.ledger_id if found is not None else message_id)
        if found is not None:  # accepted by this service, maybe by an earlier process
            view = MessageView(
                id=message_id,
                state=found_state(rec) if rec is not None else "queued",
                campaign=found.campaign,
                to=found.to_e164 if show_numbers else mask(found.to_e164),
                priority=found.priority,
                carrier=found.carrier,
                parts=found.parts,
                accepted_at=found.accepted_at,
            )
            if rec is None:
                return view
            return msgspec.structs.replace(
                view,
                carrier=rec.carrier or found.carrier,
                parts=rec.parts or found.parts,
                reason=rec.reason,
                gateway=rec.gateway,
                provider_id=rec.provider_id,
                submitted_at=rec.submitted_at,
                answered_at=rec.answered_at,
                delivery=Delivery(
                    status=rec.delivery_status, code=rec.delivery_code, done_at=rec.delivered_at
                )
                if rec.delivery_status
                else None,
            )
        if rec is None:
            return None
        return MessageView(
            id=rec.message_id,
            state=found_state(rec),
            campaign=rec.campaign,
            carrier=rec.carrier,
            parts=rec.parts,
            reason=rec.reason,
            gateway=rec.gateway,
            provider_id=rec.provider_id,
            submitted_at=rec.submitted_at,
            answered_at=rec.answered_at,
            delivery=Delivery(status=rec.delivery_status, code=rec.delivery_code, done_at=rec.delivered_at)
            if rec.delivery_status
            else None,
        )


def found_state(rec: MessageRecord) -> str:
    """A ledger record's state as the API says it (``delivered`` once reported)."""
    return rec.delivery_status if rec.delivery_status == "delivered" else rec.state.value


def _held_if_capped(r: Reject) -> Reject:
    """A flow's marketing step over its cap: held (``deferred: capped``) for a later try, not suppressed."""
    if r.reason == SuppressReason.CAPPED:
        return msgspec.structs.replace(r, state=State.DEFERRED)
    return r
