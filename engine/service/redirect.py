"""``GET /l/{code}``: the short link redirector — 302 to the campaign's page, the click recorded once.

A click is recorded (committed before the redirect is answered) against the code's campaign,
group and recipient: a recipient's own code is one row however often it is tapped (its ``hits``
count the taps); a group's link is one row per visitor (a hash of address and user agent). What
is not a person is redirected but not recorded: ``HEAD`` requests, link previews and prefetches
(``Purpose``/``Sec-Purpose: prefetch``, ``X-Purpose: preview``) and user agents of crawlers,
chat apps' preview fetchers, monitors and HTTP libraries (:data:`BOTS`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from engine.observability.metrics import NO_METRICS, Metrics
from engine.state.links import LinkStore, links_path

__all__ = ["BOTS", "Redirector", "is_bot"]

BOTS: Final = re.compile(
    r"(?i)bot\b|bot/|crawl|spider|slurp|preview|facebookexternalhit|whatsapp|telegram|slack|discord|"
    r"skype|twitter|curl/|wget/|python-|httpx|aiohttp|go-http|java/|okhttp|headless|lighthouse|"
    r"pingdom|uptime|monitor|scanner|zgrab|masscan|bingpreview"
)
"""User agents that are not a person tapping a link."""
_CODE: Final = re.compile(r"^[0-9A-Za-z]{5,12}$")


def is_bot(request: Request) -> bool:
    """Whether the request is a prefetch, a preview or a robot (see :data:`BOTS`)."""
    h = request.headers
    purpose = (h.get("purpose", "") + h.get("sec-purpose", "") + h.get("x-purpose", "")).lower()
    if "prefetch" in purpose or "preview" in purpose or h.get("x-moz", "").lower() == "prefetch":
        return True
    ua = h.get("user-agent", "")
    return not ua or BOTS.search(ua) is not None


class Redirector:
    """The redirector's state: the links file of the store, opened on the first request."""

    def __init__(self, store_path: Path, metrics: Metrics = NO_METRICS) -> None:
        self.path = links_path(store_path)
        self.metrics = metrics
        self._store: LinkStore | None = None

    def store(self) -> LinkStore | None:
        """The links file (None while no campaign has made one)."""
        if self._store is None and self.path.exists():
            self._store = LinkStore(self.path)
        return self._store

    async def handle(self, request: Request) -> Response:
        """Answer one short link request."""
        short = request.path_params["code"]
        store = self.store() if _CODE.match(short) else None
        found = store.resolve(short) if store is not None else None
        if store is None or found is None:
            self.metrics.link_click("unknown")
            return PlainTextResponse("unknown link", status_code=404, headers={"cache-control": "no-store"})
        if request.method == "GET" and not is_bot(request):
            visitor = ""
            if not found[2]:  # a group's link: one row per visitor
                client = request.client.host if request.client else ""
                seen = f"{client}\x1f{request.headers.get('user-agent', '')}".encode()
                visitor = hashlib.sha256(seen).hexdigest()[:16]
            store.click(short, visitor, found)
            self.metrics.link_click("counted")
        else:
            self.metrics.link_click("robot")
        return RedirectResponse(
            found[3], status_code=302, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"}
        )

    def close(self) -> None:
        """Close the links file."""
        if self._store is not None:
            self._store.close()
            self._store = None
