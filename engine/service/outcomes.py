"""``GET /v1/campaigns/{id}/outcomes``: a campaign's outcomes report (JSON, CSV or the HTML page)."""

from __future__ import annotations

import re
from typing import Final

import anyio.to_thread

from engine.core.errors import EngineError
from engine.core.plugin_host import PluginHost
from engine.outcomes.attribution import OutcomeReport, OutcomesError, campaign_outcomes
from engine.outcomes.html import to_html
from engine.outcomes.render import to_csv, to_json
from engine.service.wire import ApiError
from engine.state.ledger.store import Ledger

__all__ = ["FORMATS", "outcomes_body"]

FORMATS: Final = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
"""``?format=`` → the response's media type."""
_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,80}$")


def _report(
    store_path: str, campaign_id: str, prices: dict[str, float], currency: str, host: PluginHost
) -> OutcomeReport:
    ledger = Ledger(store_path)  # its own connection: the report runs in a worker thread
    try:
        return campaign_outcomes(ledger, campaign_id, prices=prices, currency=currency, host=host)
    finally:
        ledger.close()


async def outcomes_body(
    store_path: str,
    campaign_id: str,
    fmt: str,
    *,
    prices: dict[str, float],
    currency: str,
    host: PluginHost,
) -> tuple[bytes, str]:
    """The report of ``campaign_id`` as ``fmt`` (``json``, ``csv``, ``html``) and its media type.

    The report reads the campaign's segment again: it runs in a worker thread, so the event loop
    (transactional sends, webhooks) is never held up by it. 404 for a campaign the store does not
    know, 409 when its campaign file is gone or no longer loads.
    """
    if fmt not in FORMATS:
        raise ApiError(422, "Invalid request", f"format: one of {', '.join(FORMATS)}")
    if not _ID.match(campaign_id):
        raise ApiError(404, "Not found", "no such campaign")
    try:
        report = await anyio.to_thread.run_sync(_report, store_path, campaign_id, prices, currency, host)
    except OutcomesError as exc:
        if "no campaign" in str(exc):
            raise ApiError(404, "Not found", f"no campaign {campaign_id!r} in the ledger") from None
        raise ApiError(409, "Cannot report", str(exc)) from None
    except EngineError as exc:
        raise ApiError(409, "Cannot report", str(exc)) from None
    text = {"json": to_json, "csv": to_csv, "html": to_html}[fmt](report)
    return text.encode("utf-8"), FORMATS[fmt]
