"""The HTTP API of ``pigeon serve``: a Starlette app over a :class:`~engine.service.core.Service`.

Every endpoint but ``/healthz``, ``/readyz`` and ``/openapi.json`` needs an API key
(``Authorization: Bearer <key>``); webhooks are verified by the gateway's signature instead.
Bodies are read up to ``service.max_body_bytes`` and decoded with msgspec Structs; every error is
answered as RFC 9457 problem details (``application/problem+json``) that say what to change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.core.config import _explain
from engine.sending.webhooks import WebhookError
from engine.service.campaigns import CampaignError, Campaigns
from engine.service.core import Service
from engine.service.openapi import document
from engine.service.wire import ApiError, FieldError, MessagesIn, Problem, StartCampaign

__all__ = ["PROBLEM", "create_app"]

log = logging.getLogger("pigeon.api")

PROBLEM = "application/problem+json"
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
        detail=detail,
        errors=errors or [],
    )
    return Response(_enc.encode(body), status_code=status, media_type=PROBLEM, headers=headers)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_enc.encode(obj), status_code=status, media_type=_JSON)


def _decode_error(exc: msgspec.DecodeError, root: type[msgspec.Struct]) -> ApiError:
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        where, what = _explain(exc, root, "")
        return ApiError(
            422, "Invalid request", f"{where or 'body'}: {what}; see /openapi.json for the schema"
        )
    return ApiError(400, "Malformed JSON", f"the body is not valid UTF-8 JSON: {text}")


def _campaigns(service: Service) -> Campaigns:
    if service.campaigns is None:
        raise ApiError(503, "Starting", "the service is starting: send again in a moment")
    return service.campaigns


def create_app(service: Service) -> Starlette:
    """The Starlette app serving ``service``."""
    limit = service.service.max_body_bytes
    messages_decoder = msgspec.json.Decoder(MessagesIn)
    campaign_decoder = msgspec.json.Decoder(StartCampaign)

    def auth(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            key = request.headers.get("x-api-key", "")
        elif scheme.lower() != "bearer":
            raise ApiError(401, "Unauthorized", "use Authorization: Bearer <API key>", kind="unauthorized")
        if not key:
            raise ApiError(
                401,
                "Unauthorized",
                "an API key is required: send Authorization: Bearer <key> (`pigeon keys create` makes one)",
            )
        name = service.keys.check(key.strip())
        if name is None:
            raise ApiError(401, "Unauthorized", "the API key is not valid (revoked, or mistyped)")
        return name

    async def body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
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
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
                elif size > 8 * limit:  # past the limit, a bounded rest is read and dropped, so the
                    break  # client is still reading when the 413 comes
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
                titles = {403: "Forbidden", 404: "Not found", 409: "Conflict", 422: "Invalid request"}
                return problem(exc.status, titles.get(exc.status, "Campaign error"), str(exc))
            except WebhookError as exc:
                return problem(400, "Invalid callback", str(exc))

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
        auth(request)
        data, ctype = await service.scrape()
        return Response(data, media_type=ctype)

    @wrap
    async def post_messages(request: Request) -> Response:
        key = auth(request)
        json_type(request)
        raw = await body(request)
        try:
            req = messages_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise _decode_error(exc, MessagesIn) from None
        idem = request.headers.get("idempotency-key")
        if idem is not None and not 1 <= len(idem) <= 255:
            raise ApiError(422, "Invalid request", "Idempotency-Key must be 1-255 characters")
        resp = await service.messages.submit(req, key=key, idempotency_key=idem, body=raw)
        return _json(resp, 202)

    @wrap
    async def get_message(request: Request) -> Response:
        auth(request)
        mid = request.path_params["id"]
        view = service.messages.message(mid)
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
        answer = getattr(parser, "answer", None)  # the acknowledgement a provider expects, if its own
        if what == "reports":
            reports = parser.reports(raw, gateway)
            matched = await service.inbound.apply_reports(reports)
            if answer is not None:  # (body, media type): a provider's own acknowledgement, status 200
                content, media = answer(what, len(reports), matched)
                return Response(content, media_type=media)
            return _json({"received": len(reports), "matched": matched})
        replies = parser.replies(raw, gateway)
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
        auth(request)
        json_type(request)
        raw = await body(request)
        try:
            req = campaign_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise _decode_error(exc, StartCampaign) from None
        try:
            run = await _campaigns(service).start(req.file, again=req.again)
        except CampaignError:
            raise
        except Exception as exc:  # the campaign's own config or preflight: say what to change
            from engine.core.errors import EngineError

            if isinstance(exc, EngineError):
                raise ApiError(422, "Campaign refused", str(exc)) from None
            raise
        return _json(run.view(), 202)

    @wrap
    async def get_campaign(request: Request) -> Response:
        auth(request)
        return _json(_campaigns(service).get(request.path_params["id"]).view())

    @wrap
    async def control_campaign(request: Request) -> Response:
        auth(request)
        action = request.path_params["action"]
        if action not in ("pause", "resume", "cancel"):
            raise ApiError(404, "Not found", f"no action {action[:32]!r}: use pause, resume or cancel")
        return _json(_campaigns(service).control(request.path_params["id"], action).view())

    @wrap
    async def openapi(request: Request) -> Response:
        return Response(document(), media_type=_JSON)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 405: "Method not allowed"}
        detail = {
            404: f"no endpoint {request.url.path[:200]!r}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.url.path[:200]!r}; see /openapi.json",
        }.get(exc.status_code, str(exc.detail))
        return problem(exc.status_code, titles.get(exc.status_code, "HTTP error"), detail)

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"event": "http.error", "path": request.url.path})
        return problem(500, "Internal error", "the service failed on this request; it is logged")

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/messages", post_messages, methods=["POST"]),
        Route("/v1/messages/{id}", get_message, methods=["GET"]),
        Route("/v1/webhooks/{gateway}/reports", webhook_reports, methods=["POST"]),
        Route("/v1/webhooks/{gateway}/replies", webhook_replies, methods=["POST"]),
        Route("/v1/campaigns", post_campaign, methods=["POST"]),
        Route("/v1/campaigns/{id}", get_campaign, methods=["GET"]),
        Route("/v1/campaigns/{id}/{action}", control_campaign, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})
