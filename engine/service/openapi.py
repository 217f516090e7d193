"""The OpenAPI 3.1 document of the service, built from the same msgspec Structs the API decodes."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

__all__ = ["build", "document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_MALFORMED: dict[str, Any] = {
    "description": "A malformed HTTP request (a bad Content-Length or Transfer-Encoding, a header "
    "line the protocol refuses), answered by the HTTP server itself with an empty body"
}


def _problem(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _ok(name: str, desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": _ref(name)}}}


def build() -> dict[str, Any]:
    """The document as a dict."""
    from engine.flows.events import EventsIn, EventsResponse
    from engine.outcomes.attribution import OutcomeReport
    from engine.service.campaigns import LIST_STATES, CampaignPage, CampaignView
    from engine.service.flows import CustomerSteps, FlowPage, FlowView
    from engine.service.wire import (
        API_CAMPAIGNS,
        MAX_PAGE,
        MESSAGE_STATES,
        CampaignTest,
        DeadLetterPage,
        MessagePage,
        MessagesIn,
        MessageView,
        Problem,
        StartCampaign,
        SubmitResponse,
    )

    _, components = msgspec.json.schema_components(
        [
            MessagesIn,
            SubmitResponse,
            MessageView,
            MessagePage,
            DeadLetterPage,
            CampaignView,
            CampaignPage,
            StartCampaign,
            CampaignTest,
            Problem,
            OutcomeReport,
            EventsIn,
            EventsResponse,
            FlowPage,
            FlowView,
            CustomerSteps,
        ],
        ref_template="#/components/schemas/{name}",
    )
    seconds = {
        "type": "number",
        "description": "Unix time in seconds (milliseconds, microseconds and nanoseconds are detected and "
        "converted); 0 or absent: unknown. Earlier than 2000-01-01 or more than a day ahead: 422.",
    }
    components["Reports"] = {
        "type": "object",
        "required": ["reports"],
        "properties": {
            "reports": {
                "type": "array",
                "maxItems": 10_000,
                "items": {
                    "type": "object",
                    "description": "Needs a provider_id or an id (422 otherwise); other keys are ignored.",
                    "properties": {
                        "provider_id": {"type": "string", "maxLength": 256},
                        "id": {"type": "string", "maxLength": 256, "description": "Pigeon's message id"},
                        "to": {"type": "string", "maxLength": 64},
                        "status": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "delivered, failed, expired, rejected or unknown; any other "
                            "value is counted as unknown (and kept as the code when there is none)",
                        },
                        "code": {"type": "string", "maxLength": 64},
                        "done_at": seconds,
                    },
                },
            }
        },
    }
    components["Replies"] = {
        "type": "object",
        "required": ["replies"],
        "properties": {
            "replies": {
                "type": "array",
                "maxItems": 10_000,
                "items": {
                    "type": "object",
                    "required": ["from", "text"],
                    "properties": {
                        "from": {"type": "string", "maxLength": 64},
                        "to": {"type": "string", "maxLength": 64},
                        "text": {"type": "string", "maxLength": 2048},
                        "at": seconds,
                    },
                },
            }
        },
    }
    auth: list[dict[str, list[str]]] = [{"apiKey": []}]
    errors = {
        "401": _problem("No, bad, revoked or expired API key"),
        "403": _problem(
            "The API key lacks the scope this needs (send, campaigns, read, metrics, events, flows, approve)"
        ),
        "404": _problem("Not found"),
        "422": _problem("Invalid request: what to change"),
    }
    body_errors = {
        **errors,
        "400": _problem("Malformed JSON or bad UTF-8"),
        "413": _problem("Body over service.max_body_bytes, or too many messages"),
        "415": _problem("Not application/json"),
    }
    webhook_errors = {
        **{k: v for k, v in body_errors.items() if k != "403"},  # (no keys: a signature)
        "401": _problem("Missing or bad signature, or a replay"),
        "404": _problem("No such gateway receives callbacks here"),
        "422": _problem("A body that does not match the contract (a bad time, no id)"),
    }
    cid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    gw = {"name": "gateway", "in": "path", "required": True, "schema": {"type": "string"}}
    webhook = {
        "security": [],
        "parameters": [
            gw,
            {
                "name": "X-Pigeon-Signature",
                "in": "header",
                "schema": {"type": "string"},
                "description": "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.' + body)>",
            },
        ],
    }

    def q(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}

    paging = [
        q(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
            "Items per page",
        ),
        q("cursor", {"type": "string", "minLength": 1, "maxLength": 400}, "next_cursor of the page before"),
    ]
    list_errors = {"401": errors["401"], "403": errors["403"], "422": _problem("A bad query parameter")}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Store open, gateways up, not draining",
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition",
                "security": auth,
                "responses": {
                    "200": {"description": "text exposition format"},
                    "401": errors["401"],
                    "403": errors["403"],
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
        "/v1/messages": {
            "post": {
                "summary": "Send one or many messages (template + fields, or text)",
                "security": auth,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                        "description": "Same key and body: same answer, sent once",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("MessagesIn")}},
                },
                "responses": {
                    "202": _ok("SubmitResponse", "Accepted: message ids and states"),
                    **body_errors,
                    "503": _problem("Draining for shutdown"),
                },
            }
        },
        "/v1/messages#get": {
            "get": {
                "summary": "Recent API messages, newest first (numbers masked), filtered and paged",
                "security": auth,
                "parameters": [
                    q(
                        "to",
                        {"type": "string", "minLength": 1, "maxLength": 32},
                        "A recipient, in any form POST takes",
                    ),
                    q("campaign", {"enum": list(API_CAMPAIGNS)}, "The API's stream"),
                    q("state", {"enum": list(MESSAGE_STATES)}, "Its state now"),
                    *paging,
                ],
                "responses": {"200": _ok("MessagePage"), **list_errors},
            }
        },
        "/v1/messages/{id}": {
            "get": {
                "summary": "A message's recorded state and delivery report",
                "security": auth,
                "parameters": [cid],
                "responses": {"200": _ok("MessageView"), **errors},
            }
        },
        "/v1/callbacks/dead": {
            "get": {
                "summary": "Status-callback events their receiver never took (dead letters), newest first",
                "security": auth,
                "parameters": paging,
                "responses": {"200": _ok("DeadLetterPage"), **list_errors, "503": _problem("Starting")},
            }
        },
        "/v1/webhooks/{gateway}/reports": {
            "post": {
                "summary": "Delivery reports from a gateway",
                **webhook,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Reports")}},
                },
                "responses": {"200": {"description": "received"}, **webhook_errors},
            }
        },
        "/v1/webhooks/{gateway}/replies": {
            "post": {
                "summary": "MO replies from a gateway (opt-out keywords go to the opt-out list)",
                **webhook,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Replies")}},
                },
                "responses": {"200": {"description": "received"}, **webhook_errors},
            }
        },
        "/v1/campaigns": {
            "post": {
                "summary": "Start a campaign file under service.campaigns_dir (or test-send it to its seeds)",
                "security": auth,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("StartCampaign")}},
                },
                "responses": {
                    "200": _ok("CampaignTest", "With test: the test send's outcome (nothing started)"),
                    "202": _ok("CampaignView", "Started, scheduled or awaiting approval"),
                    **body_errors,
                    "403": _problem("Outside the campaigns directory, or the key lacks `campaigns`"),
                    "409": _problem(
                        "Already running (here, or — with a shared coordinator — by another service: "
                        "the detail names its holder), over and not started with again, or no passed "
                        "test send of its current content (review.seeds)"
                    ),
                    "503": _problem(
                        "Starting, draining for shutdown, or the shared coordinator does not answer"
                    ),
                },
            }
        },
        "/v1/campaigns#get": {
            "get": {
                "summary": "Campaigns in the ledger, newest first, filtered and paged",
                "security": auth,
                "parameters": [
                    q("state", {"enum": list(LIST_STATES)}, "As GET /v1/campaigns/{id} says it"),
                    q("kind", {"type": "string", "minLength": 1, "maxLength": 32}, "marketing, …"),
                    *paging,
                ],
                "responses": {"200": _ok("CampaignPage"), **list_errors},
            }
        },
        "/v1/campaigns/{id}": {
            "get": {
                "summary": "Progress, counts by state and reason, rate per carrier, ETA",
                "security": auth,
                "parameters": [cid],
                "responses": {"200": _ok("CampaignView"), **errors},
            }
        },
    }
    paths["/l/{code}"] = {
        "get": {
            "summary": "A campaign's short link: 302 to its page; the click recorded once per recipient "
            "(group links: per visitor); robots, previews and prefetches are redirected, not counted",
            "security": [],
            "parameters": [
                {
                    "name": "code",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{5,12}$"},
                }
            ],
            "responses": {
                "302": {"description": "To the campaign's landing page (Location)"},
                "404": {"description": "Unknown link"},
            },
        }
    }
    paths["/v1/campaigns/{id}/outcomes"] = {
        "get": {
            "summary": "Outcomes per group × variant × carrier: funnel, buyers, revenue, ROI, lift over "
            "holdout (docs/outcomes.md)",
            "security": auth,
            "parameters": [
                cid,
                q("format", {"enum": ["json", "csv", "html"]}, "json (default), csv, or the HTML page"),
            ],
            "responses": {
                "200": {
                    "description": "The report",
                    "content": {
                        "application/json": {"schema": _ref("OutcomeReport")},
                        "text/csv": {"schema": {"type": "string"}},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                **errors,
                "409": _problem("The campaign file is gone or no longer loads"),
                "422": _problem("Unknown query parameter or format"),
            },
        }
    }
    paths["/v1/events"] = {
        "post": {
            "summary": "Order and customer events (a batch): they start and cancel flows; idempotent by id",
            "security": auth,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EventsIn")}}},
            "responses": {
                "200": _ok("EventsResponse", "Taken: per event accepted, duplicate or rejected (with why)"),
                **body_errors,
                "413": _problem("Body over service.max_body_bytes, or over service.flows.max_events events"),
                "503": _problem(
                    'Starting, draining for shutdown, or (store = "redis") the timer store does not '
                    "answer: nothing was taken, send the events again"
                ),
            },
        }
    }
    paths["/v1/flows"] = {
        "get": {
            "summary": "Every flow: trigger, steps, paused, timers by state",
            "security": auth,
            "responses": {"200": _ok("FlowPage"), "401": errors["401"], "403": errors["403"]},
        }
    }
    fname = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    for action, what in (
        ("pause", "Pause a flow: its steps stay pending (triggers still schedule) until it resumes"),
        ("resume", "Resume a flow: its late steps are caught up in due order"),
    ):
        paths[f"/v1/flows/{{name}}/{action}"] = {
            "post": {
                "summary": what,
                "security": auth,
                "parameters": [fname],
                "responses": {"200": _ok("FlowView"), **errors},
            }
        }
    paths["/v1/customers/{phone}/flows"] = {
        "get": {
            "summary": "A customer's flow steps, the latest due first (the number masked)",
            "security": auth,
            "parameters": [{"name": "phone", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _ok("CustomerSteps"), **errors},
        }
    }
    for path in ("/v1/messages", "/v1/campaigns"):  # GET and POST on one path item
        paths[path].update(paths.pop(f"{path}#get"))
    for action in ("pause", "resume", "cancel"):
        paths[f"/v1/campaigns/{{id}}/{action}"] = {
            "post": {
                "summary": f"{action.capitalize()} a running campaign",
                "security": auth,
                "parameters": [cid],
                "responses": {"200": _ok("CampaignView"), **errors, "409": _problem("Already over")},
            }
        }
    paths["/v1/campaigns/{id}/approve"] = {
        "post": {
            "summary": "Approve a campaign awaiting approval (review.require_approval): it starts",
            "description": "Needs a key with the `approve` scope other than the one that posted it.",
            "security": auth,
            "parameters": [cid],
            "responses": {
                "200": _ok("CampaignView"),
                **errors,
                "403": _problem("The key lacks `approve`, or it is the key that submitted the campaign"),
                "409": _problem("Not awaiting approval, or its content changed since it was submitted"),
            },
        }
    }
    for item in paths.values():  # what the HTTP server answers before any operation sees the request
        for op in item.values():
            op["responses"].setdefault("400", _MALFORMED)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pigeon service",
            "version": "0.1.0",
            "description": "Transactional messages, campaigns, delivery reports and MO replies; order "
            "events into triggered flows. "
            "Errors are RFC 9457 problem details. See docs/service.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `pigeon keys create` (optionally limited to scopes: "
                    "send, campaigns, read, metrics, events, flows, numbers, approve; and to a time)",
                }
            },
        },
        "security": auth,
    }


@cache
def document() -> bytes:
    """The document as formatted JSON bytes (what ``/openapi.json`` serves and docs/openapi.json holds)."""
    return msgspec.json.format(msgspec.json.encode(build()), indent=2) + b"\n"


if __name__ == "__main__":  # python -m engine.service.openapi > docs/openapi.json
    import sys

    sys.stdout.buffer.write(document())
