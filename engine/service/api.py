"""The HTTP API of ``pigeon serve``: a Starlette app over a :class:`~engine.service.core.Service`.

Every endpoint but ``/healthz``, ``/readyz`` and ``/openapi.json`` needs an API key
(``Authorization: Bearer <key>``); webhooks are verified by the gateway's signature instead.
Bodies are read up to ``service.max_body_bytes`` and decoded with msgspec Structs; every error is
answered as RFC 9457 problem details (``application/problem+json``) that say what to change.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, TypeVar, cast

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope as AsgiScope, Send

from engine.core.config import _explain
from engine.core.messages import DeliveryReport
from engine.core.phone import parse_phone
from engine.core.timestamps import iso_utc
from engine.flows.events import EventsIn
from engine.observability.redact import redact
from engine.sending.webhooks import MoReply, WebhookError
from engine.service.apikeys import ApiKey, Scope
from engine.service.callbacks import dead_letters
from engine.service.campaigns import LIST_STATES, CampaignError, CampaignPage, Campaigns
from engine.service.core import Service
from engine.service.flows import ServiceFlows
from engine.service.openapi import document
from engine.service.outcomes import outcomes_body
from engine.service.redirect import Redirector
from engine.service.stored import numbers_of
from engine.service.wire import (
    API_CAMPAIGNS,
    MAX_PAGE,
    MESSAGE_STATES,
    ApiError,
    CampaignTest,
    DeadLetter,
    DeadLetterPage,
    FieldError,
    MessagePage,
    MessagesIn,
    Problem,
    StartCampaign,
    TestMessage,
)
from engine.state.gates import TestRecord

__all__ = ["PROBLEM", "create_app"]

log = logging.getLogger("pigeon.api")
access = logging.getLogger("pigeon.access")

KEY_ID = "pigeon.key"
"""Where the request's ASGI scope keeps the name of its API key, for the access log."""

T = TypeVar("T")

PROBLEM = "application/problem+json"
MAX_DETAIL = 2000
"""Characters of a problem's ``detail`` (msgspec quotes an unknown key or enum value as sent)."""
MAX_KEY = 256
"""An API key longer than this is not one (Pigeon's are 47 characters)."""
_JSON = "application/json"
_enc = msgspec.json.Encoder()


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    kind: str = "",
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem-details response."""
    body = Problem(
        type=f"https://pigeon.dev/problems/{kind or title.lower().replace(' ', '-')}",
        title=title,
        status=status,
        detail=detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "…",
        errors=errors or [],
    )
    return Response(_enc.encode(body), status_code=status, media_type=PROBLEM, headers=headers)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_enc.encode(obj), status_code=status, media_type=_JSON)


_PLAIN: dict[str, str] = {"to": "expected a phone number as a string (1-32 characters)"}
"""What to say about a key, whatever msgspec said (the schema's words are in /openapi.json)."""


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes, root: type[msgspec.Struct]) -> T:
    """``raw`` decoded, or the :class:`ApiError` that says what to change (400 or 422)."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        where, what = _explain(exc, root, "")
        what = _PLAIN.get(where.rpartition(".")[2], what) if not what.startswith("unknown key") else what
        raise ApiError(
            422, "Invalid request", f"{where or 'body'}: {what}; see /openapi.json for the schema"
        ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "Malformed JSON", f"the body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # (a typed body never gets here; kept for an unknown key's value)
        raise ApiError(422, "Invalid request", "the JSON is nested too deeply") from None


def _campaigns(service: Service) -> Campaigns:
    if service.campaigns is None:
        raise ApiError(503, "Starting", "the service is starting: send again in a moment")
    return service.campaigns


def create_app(service: Service) -> Starlette:
    """The Starlette app serving ``service``."""
    limit = service.service.max_body_bytes
    messages_decoder = msgspec.json.Decoder(MessagesIn)
    events_decoder = msgspec.json.Decoder(EventsIn)
    campaign_decoder = msgspec.json.Decoder(StartCampaign)

    def auth(request: Request, scope: Scope) -> ApiKey:
        """The request's API key; 401 without a valid one, 403 without ``scope``."""
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            key = request.headers.get("x-api-key", "")
        elif scheme.lower() != "bearer":
            raise ApiError(401, "Unauthorized", "use Authorization: Bearer <API key>", kind="unauthorized")
        if len(key) > MAX_KEY:
            raise ApiError(401, "Unauthorized", "the API key is not valid (revoked, or mistyped)")
        if not key:
            raise ApiError(
                401,
                "Unauthorized",
                "an API key is required: send Authorization: Bearer <key> (`pigeon keys create` makes one)",
            )
        key = key.strip()
        found = service.keys.find(key)
        if found is None and service.reload_keys(only_if_changed=True):  # made a moment ago?
            found = service.keys.find(key)
        if found is None:
            raise ApiError(401, "Unauthorized", "the API key is not valid (revoked, or mistyped)")
        request.scope[KEY_ID] = found.id
        now = time.time()
        if found.expired(now):
            raise ApiError(
                401,
                "Unauthorized",
                f"the API key {found.id!r} expired at {iso_utc(found.expires_at or 0)}: ask for a new one",
            )
        service.key_usage.used(found.id, now)
        if not found.allows(scope):
            raise ApiError(
                403,
                "Forbidden",
                f"the API key {found.id!r} may not do this: it needs the `{scope}` scope "
                f"(it has: {', '.join(found.scopes or [])})",
            )
        return found

    async def body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (0 < len(declared) <= 18 and declared.isascii() and declared.isdigit()):
                raise ApiError(400, "Bad request", "Content-Length is not a number")
            if int(declared) > limit:
                raise ApiError(
                    413,
                    "Payload too large",
                    f"the body is {int(declared):,} bytes; at most {limit:,} "
                    "(service.max_body_bytes): send fewer messages per request",
                )
        chunks: list[bytes] = []
        size = 0
        try:
            async with aclosing(request.stream()) as stream:
                async for chunk in stream:
                    size += len(chunk)
                    if size <= limit:
                        chunks.append(chunk)
                    elif size > 8 * limit:  # past the limit, a bounded rest is read and dropped, so
                        break  # the client is still reading when the 413 comes
        except ClientDisconnect:
            raise ApiError(400, "Client disconnected", "the body ended early") from None
        if size > limit:
            raise ApiError(
                413,
                "Payload too large",
                f"the body is over {limit:,} bytes (service.max_body_bytes): send fewer messages",
            )
        data = b"".join(chunks)
        if not data:
            raise ApiError(400, "Empty body", "the request needs a JSON body")
        return data

    def json_type(request: Request) -> None:
        ctype = request.headers.get("content-type", "")
        if ctype and ctype.split(";")[0].strip().lower() not in (
            "application/json",
            "application/problem+json",
        ):
            raise ApiError(
                415, "Unsupported media type", f"send the body as application/json, not {ctype[:80]}"
            )

    def wrap(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except ApiError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return problem(
                    exc.status, exc.title, exc.detail, errors=exc.errors, kind=exc.kind, headers=headers
                )
            except CampaignError as exc:
                titles = {
                    403: "Forbidden",
                    404: "Not found",
                    409: "Conflict",
                    422: "Invalid request",
                    503: "Shutting down",
                }
                title = exc.title or titles.get(exc.status, "Campaign error")
                return problem(exc.status, title, str(exc))
            except WebhookError as exc:
                return problem(422, "Invalid callback", str(exc))
            except Exception as exc:  # a bug: logged without user data, answered without details
                return crashed(request, exc)

        endpoint.__name__ = fn.__name__
        return endpoint

    @wrap
    async def healthz(request: Request) -> Response:
        return _json({"status": "ok", "uptime_seconds": round(time.time() - service.started_at, 1)})

    @wrap
    async def readyz(request: Request) -> Response:
        checks = service.readiness()
        return _json(checks, 200 if checks["ready"] else 503)

    @wrap
    async def metrics(request: Request) -> Response:
        auth(request, "metrics")
        data, ctype = await service.scrape()
        return Response(data, media_type=ctype)

    @wrap
    async def post_messages(request: Request) -> Response:
        key = auth(request, "send")
        json_type(request)
        raw = await body(request)
        req = _decode(messages_decoder, raw, MessagesIn)
        idem = request.headers.get("idempotency-key")
        if idem is not None and not (1 <= len(idem) <= 255 and idem.isprintable()):
            raise ApiError(422, "Invalid request", "Idempotency-Key must be 1-255 printable characters")
        resp = await service.messages.submit(req, key=key.id, idempotency_key=idem, body=raw, api_key=key)
        return _json(resp, 202)

    @wrap
    async def list_messages(request: Request) -> Response:
        key = auth(request, "read")
        q = _query(request, {"to": 32, "campaign": 64, "state": 32, "limit": 5, "cursor": 400})
        to = None
        if "to" in q:
            parsed = parse_phone(q["to"])
            if parsed.reason is not None or not parsed.e164:
                raise ApiError(422, "Invalid request", "to: not a phone number (13800138000, +86…, E.164)")
            to = parsed.e164
        campaign = q.get("campaign")
        if campaign is not None and campaign not in API_CAMPAIGNS:
            raise ApiError(
                422,
                "Invalid request",
                f"campaign: the API's messages are in {' or '.join(API_CAMPAIGNS)}; a blast's are "
                "counted by GET /v1/campaigns/{id} (and `pigeon report`), not listed",
            )
        state = q.get("state")
        if state is not None and state not in MESSAGE_STATES:
            raise ApiError(422, "Invalid request", f"state: one of {', '.join(MESSAGE_STATES)}")
        after = _cursor(q["cursor"])[0] if "cursor" in q else None
        views, last = service.records.search(
            to=to, campaign=campaign, state=state, after=after, limit=_limit(q)
        )
        if key.allows("numbers") and service.ledger is not None and views:  # unmasked for this key
            full = numbers_of(service.ledger.db, [v.id for v in views])
            views = [msgspec.structs.replace(v, to=full[v.id]) if v.id in full else v for v in views]
        return _json(MessagePage(messages=views, next_cursor=_cursor_for([last]) if last else None))

    @wrap
    async def list_campaigns(request: Request) -> Response:
        auth(request, "campaigns")
        q = _query(request, {"state": 32, "kind": 32, "limit": 5, "cursor": 400})
        state = q.get("state")
        if state is not None and state not in LIST_STATES:
            raise ApiError(422, "Invalid request", f"state: one of {', '.join(LIST_STATES)}")
        after: tuple[float, str] | None = None
        if "cursor" in q:
            got = _cursor(q["cursor"])
            if len(got) != 2:
                raise ApiError(422, "Invalid request", "cursor: not one this service gave")
            try:
                after = (float(got[0]), got[1])
            except ValueError:
                raise ApiError(422, "Invalid request", "cursor: not one this service gave") from None
        found, last = _campaigns(service).listing(
            state=state, kind=q.get("kind"), after=after, limit=_limit(q)
        )
        nxt = _cursor_for([repr(last[0]), last[1]]) if last else None
        return _json(CampaignPage(campaigns=found, next_cursor=nxt))

    async def messages_root(request: Request) -> Response:
        return await (post_messages if request.method == "POST" else list_messages)(request)

    async def campaigns_root(request: Request) -> Response:
        return await (post_campaign if request.method == "POST" else list_campaigns)(request)

    @wrap
    async def get_message(request: Request) -> Response:
        key = auth(request, "read")
        mid = request.path_params["id"]
        view = service.messages.message(mid, show_numbers=key.allows("numbers"))
        if view is None:
            raise ApiError(404, "Not found", f"no message {mid[:80]!r} is recorded")
        return _json(view)

    async def _webhook(request: Request, what: str) -> Response:
        gateway = request.path_params["gateway"]
        parser = service.inbound.parser(gateway)
        raw = await body(request)
        try:
            if getattr(parser, "uses_query", False):  # providers that cannot sign: a token in the URL
                parser.verify(raw, request.headers, time.time(), query=request.query_params)  # type: ignore[call-arg]
            else:
                parser.verify(raw, request.headers, time.time())
        except WebhookError as exc:
            raise ApiError(401, "Bad signature", str(exc), kind="bad-signature") from None
        except Exception as exc:  # a plugin's parser that fails on what it was sent: not verified
            _parser_failed(gateway, "verify", exc)
            raise ApiError(
                401, "Bad signature", "the signature could not be verified", kind="bad-signature"
            ) from None
        answer = getattr(parser, "answer", None)  # the acknowledgement a provider expects, if its own
        try:
            items = parser.reports(raw, gateway) if what == "reports" else parser.replies(raw, gateway)
        except WebhookError:
            raise
        except Exception as exc:  # a plugin's parser that fails on what it was sent: unreadable
            _parser_failed(gateway, what, exc)
            raise WebhookError(f"the {what} cannot be read by the gateway's parser") from None
        if what == "reports":
            reports = cast("list[DeliveryReport]", items)
            matched = await service.inbound.apply_reports(reports)
            if answer is not None:  # (body, media type): a provider's own acknowledgement, status 200
                content, media = answer(what, len(reports), matched)
                return Response(content, media_type=media)
            return _json({"received": len(reports), "matched": matched})
        replies = cast("list[MoReply]", items)
        optouts = service.inbound.apply_replies(replies)
        if answer is not None:
            content, media = answer(what, len(replies), optouts)
            return Response(content, media_type=media)
        return _json({"received": len(replies), "optouts": optouts})

    @wrap
    async def webhook_reports(request: Request) -> Response:
        return await _webhook(request, "reports")

    @wrap
    async def webhook_replies(request: Request) -> Response:
        return await _webhook(request, "replies")

    @wrap
    async def post_campaign(request: Request) -> Response:
        key = auth(request, "campaigns")
        json_type(request)
        raw = await body(request)
        req = _decode(campaign_decoder, raw, StartCampaign)
        callback = None
        if req.callback_url is not None:
            service.messages.check_callback(req.callback_url, key)
            callback = (req.callback_url, key.allows("numbers"), key.id)
        if req.test:
            record = await _campaigns(service).test(req.file, key.id)
            return _json(_test_view(record))
        run = await _campaigns(service).start(
            req.file, again=req.again, callback=callback, send_at=req.send_at, key=key.id
        )
        return _json(run.view(), 202)

    @wrap
    async def get_campaign(request: Request) -> Response:
        auth(request, "campaigns")
        return _json(_campaigns(service).get(request.path_params["id"]).view())

    @wrap
    async def get_outcomes(request: Request) -> Response:
        auth(request, "read")
        q = _query(request, {"format": 8})
        engine = service.engine
        prices = {str(c): v.price_per_part for c, v in engine.config.carriers.items()}
        content, media = await outcomes_body(
            str(engine.store_path),
            request.path_params["id"],
            q.get("format", "json"),
            prices=prices,
            currency=engine.config.currency,
            host=service.host,
        )
        return Response(content, media_type=media)

    @wrap
    async def control_campaign(request: Request) -> Response:
        action = request.path_params["action"]
        if action == "approve":
            key = auth(request, "approve")
            return _json((await _campaigns(service).approve(request.path_params["id"], key.id)).view())
        auth(request, "campaigns")
        if action not in ("pause", "resume", "cancel"):
            raise ApiError(
                404,
                "Not found",
                f"no action {action[:32]!r}: use pause, resume or cancel (or approve one awaiting approval)",
            )
        return _json(_campaigns(service).control(request.path_params["id"], action).view())

    def flows() -> ServiceFlows:
        if service.flows is None:
            raise ApiError(503, "Starting", "the service is starting; try again in a moment")
        return service.flows

    @wrap
    async def post_events(request: Request) -> Response:
        auth(request, "events")
        json_type(request)
        raw = await body(request)
        req = _decode(events_decoder, raw, EventsIn)
        return _json(await flows().ingest(req.events), 200)

    @wrap
    async def list_flows(request: Request) -> Response:
        auth(request, "flows")
        return _json(await flows().listing())

    @wrap
    async def control_flow(request: Request) -> Response:
        auth(request, "flows")
        return _json(await flows().control(request.path_params["name"], request.path_params["action"]))

    @wrap
    async def customer_flows(request: Request) -> Response:
        auth(request, "flows")
        phone = request.path_params["phone"]
        if len(phone) > 32:
            raise ApiError(422, "Invalid request", "phone: not a phone number (13800138000, +86…, E.164)")
        return _json(await flows().customer(phone))

    @wrap
    async def dead_callbacks(request: Request) -> Response:
        auth(request, "read")
        q = _query(request, {"limit": 5, "cursor": 400})
        after = None
        if "cursor" in q:
            got = _cursor(q["cursor"])
            if len(got) != 1 or not (got[0].isascii() and got[0].isdigit() and len(got[0]) <= 18):
                raise ApiError(422, "Invalid request", "cursor: not one this service gave")
            after = int(got[0])
        if service.ledger is None:
            raise ApiError(503, "Starting", "the service is starting: send again in a moment")
        rows, nxt = dead_letters(service.ledger.db, after=after, limit=_limit(q))
        page = DeadLetterPage(
            dead=[
                DeadLetter(
                    url=url,
                    event=msgspec.json.decode(event),
                    created_at=created,
                    attempts=attempts,
                    last_error=error,
                    dead_at=dead_at,
                )
                for _, url, event, created, attempts, error, dead_at in rows
            ],
            next_cursor=_cursor_for([str(nxt)]) if nxt is not None else None,
        )
        return _json(page)

    @wrap
    async def openapi(request: Request) -> Response:
        return Response(document(), media_type=_JSON)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 405: "Method not allowed"}
        detail = {
            404: f"no endpoint {request.url.path[:200]!r}; see /openapi.json",
            405: f"{request.method[:16]} is not allowed on {request.url.path[:200]!r}; see /openapi.json",
        }.get(exc.status_code, str(exc.detail))
        allow = (exc.headers or {}).get("Allow")
        return problem(
            exc.status_code,
            titles.get(exc.status_code, "HTTP error"),
            detail,
            headers={"Allow": allow} if allow else None,
        )

    async def crash(request: Request, exc: Exception) -> Response:
        return crashed(request, exc)

    redirector = Redirector(service.engine.store_path, service.ctx.metrics)
    routes = [
        Route("/l/{code}", redirector.handle, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/messages", messages_root, methods=["GET", "POST"]),
        Route("/v1/messages/{id}", get_message, methods=["GET"]),
        Route("/v1/webhooks/{gateway}/reports", webhook_reports, methods=["POST"]),
        Route("/v1/webhooks/{gateway}/replies", webhook_replies, methods=["POST"]),
        Route("/v1/callbacks/dead", dead_callbacks, methods=["GET"]),
        Route("/v1/campaigns", campaigns_root, methods=["GET", "POST"]),
        Route("/v1/campaigns/{id}", get_campaign, methods=["GET"]),
        Route("/v1/campaigns/{id}/outcomes", get_outcomes, methods=["GET"]),
        Route("/v1/campaigns/{id}/{action}", control_campaign, methods=["POST"]),
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/flows", list_flows, methods=["GET"]),
        Route("/v1/flows/{name}/{action}", control_flow, methods=["POST"]),
        Route("/v1/customers/{phone}/flows", customer_flows, methods=["GET"]),
    ]
    return _App(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})


def _test_view(record: TestRecord) -> CampaignTest:
    """A test send's record as the API answers it."""
    return CampaignTest(
        id=record.campaign,
        content=record.content,
        at=record.at,
        by=record.by,
        sent=record.sent,
        accepted=record.accepted,
        passed=record.passed,
        messages=[msgspec.convert(m, TestMessage) for m in record.messages],
    )


def _query(request: Request, allowed: dict[str, int]) -> dict[str, str]:
    """The request's query parameters, each known, given once and within its length; else 422."""
    params = request.query_params
    out: dict[str, str] = {}
    for name in params:
        if name not in allowed:
            raise ApiError(
                422,
                "Invalid request",
                f"unknown query parameter {name[:32]!r}; allowed: {', '.join(allowed)}",
            )
        values = params.getlist(name)
        if len(values) > 1:
            raise ApiError(422, "Invalid request", f"{name}: give it once")
        if not 1 <= len(values[0]) <= allowed[name]:
            raise ApiError(422, "Invalid request", f"{name}: 1 to {allowed[name]} characters")
        out[name] = values[0]
    return out


def _limit(q: dict[str, str]) -> int:
    raw = q.get("limit", "100")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
        raise ApiError(422, "Invalid request", f"limit: a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _cursor_for(parts: list[str]) -> str:
    """An opaque cursor holding ``parts``."""
    return base64.urlsafe_b64encode(_enc.encode(parts)).decode().rstrip("=")


def _cursor(text: str) -> list[str]:
    """What :func:`_cursor_for` put in ``text``; 422 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return msgspec.json.decode(raw, type=list[Annotated[str, msgspec.Meta(max_length=256)]])
    except (ValueError, msgspec.DecodeError):  # (binascii.Error is a ValueError)
        raise ApiError(422, "Invalid request", "cursor: not one this service gave") from None


def crashed(request: Request, exc: Exception) -> Response:
    """The 500 of an unexpected exception: logged with its traceback (numbers masked, messages
    cut: :func:`~engine.observability.redact.format_exception`), answered without details."""
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={
            "event": "http.error",
            "method": request.method[:16],
            "path": redact(request.url.path, 200),
            "error": type(exc).__name__,
        },
    )
    return problem(500, "Internal error", "the service failed on this request; it is logged")


def _parser_failed(gateway: str, step: str, exc: Exception) -> None:
    log.warning(
        "webhook parser failed",
        exc_info=exc,
        extra={"event": "webhook.parser_error", "gateway": gateway[:64], "step": step},
    )


class _App(Starlette):
    """Starlette, without the re-raise after a 500 (an unexpected error is answered and logged
    once, by :func:`crashed`, not handed on to the server to log again with its traceback), and
    with a log line per request: method, path (numbers masked), status, milliseconds and the API
    key's name (``key``; never the key)."""

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Serve one connection's request (or the lifespan)."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, sending)
        except Exception:  # answered 500 by the Exception handler, and logged there
            status[0] = status[0] or 500
        access.info(
            "request",
            extra={
                "event": "http.request",
                "method": str(scope.get("method", ""))[:16],
                "path": redact(str(scope.get("path", "")), 200),
                "status": status[0],
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "key": scope.get(KEY_ID, ""),
            },
        )
