"""The provider-id index: not written on the send path, brought up to date when a report needs it."""

from __future__ import annotations

from pathlib import Path

from engine.core.messages import DeliveryReport, DeliveryStatus, MessageBatch, Outcome, SubmitResult
from engine.state.ledger.encoding import _INDEX_CHUNK
from engine.state.ledger.records import Fingerprint
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.store import Ledger


def _send(run: CampaignLedger, rows: list[int], pid: str = "x") -> None:
    batch = MessageBatch(
        "cm",
        rows=rows,
        numbers=[f"138{r:08d}" for r in rows],
        texts=["t"] * len(rows),
        parts=[1] * len(rows),
        id_prefix="c-",
    )
    run.handover(batch, now=10.0)
    run.results("gw", batch, [SubmitResult(Outcome.ACCEPTED, provider_id=f"{pid}{r}") for r in rows])


def test_reports_with_only_a_provider_id_find_requests_answered_since_the_last_catch_up(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.db"
    writer, reader = Ledger(store), Ledger(store)  # a blast's process and the service's, say
    try:
        run = writer.open_campaign("c", kind="marketing", fingerprint=Fingerprint())
        requests = 3 * _INDEX_CHUNK + 7  # several of the index's transactions
        for i in range(requests):
            _send(run, list(range(2 + 10 * i, 12 + 10 * i)))
        count = "SELECT count(*) FROM ledger_providers"
        assert writer.db.execute(count).fetchone()[0] == 0  # the send path wrote no index

        first, last = "x2", f"x{11 + 10 * (requests - 1)}"
        reports = [
            DeliveryReport(provider_id=last, status=DeliveryStatus.FAILED, code="UNDELIV"),
            DeliveryReport(provider_id=first, status=DeliveryStatus.DELIVERED, code="DELIVRD"),
            DeliveryReport(provider_id="not-ours", status=DeliveryStatus.DELIVERED),
        ]
        assert reader.apply_reports(reports) == 2
        assert reader.db.execute(count).fetchone()[0] == 10 * requests
        assert reader.message("c-2").state.value == "delivered"  # type: ignore[union-attr]
        assert reader.message(f"c-{11 + 10 * (requests - 1)}").state.value == "failed"  # type: ignore[union-attr]

        _send(run, [100_000, 100_001], pid="y")  # answered after that catch-up
        assert (
            reader.apply_reports([DeliveryReport(provider_id="y100001", status=DeliveryStatus.DELIVERED)])
            == 1
        )
        assert reader.db.execute(count).fetchone()[0] == 10 * requests + 2  # only the new ones added
        assert reader.index_providers() == 0
        assert reader.report("c")["latency_seconds"]["p50"] >= 0  # submit → report, from the index
    finally:
        writer.close()
        reader.close()
