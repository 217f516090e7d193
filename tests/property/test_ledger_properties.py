"""The ledger's state machine against a plain model: any sequence of batches, hand-overs, answers,
requests given back, lanes going idle, crashes and delivery reports leaves every row in the state
the model says, in a real SQLite store — written as the runtime writes (``group_commit``: answers
committed with the next hand-over), crashed as SIGKILL crashes (the uncommitted buffer lost)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings, strategies as st

from engine.core.messages import DeliveryReport, DeliveryStatus, MessageBatch, Outcome, Reject, SubmitResult
from engine.state.ledger.encoding import INTERRUPTED, _pack_parts, _pack_rows, _unpack_parts, _unpack_rows
from engine.state.ledger.records import Fingerprint, LedgerStalled, LedgerState, Semantics
from engine.state.ledger.store import Ledger

FP = Fingerprint(segment="seg.csv", size=1, sha256="00", template="t")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=300), st.booleans())
def test_rows_pack_and_unpack_to_themselves(rows: list[int], ascending: bool) -> None:
    if ascending:
        rows = sorted(rows)
    assert _unpack_rows(_pack_rows(rows)).tolist() == rows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 70_000), min_size=1, max_size=200))
def test_parts_pack_and_unpack_to_themselves(parts: list[int]) -> None:
    assert _unpack_parts(_pack_parts(parts), len(parts)).tolist() == parts


def _batch(rows: list[int]) -> MessageBatch:
    return MessageBatch(
        "cm",
        rows=rows,
        numbers=[f"138{r:08d}" for r in rows],
        texts=["t"] * len(rows),
        parts=[1 + r % 2 for r in rows],
        id_prefix="p-",
    )


_op = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(["rejected", "suppressed", "deferred"])),
    st.tuples(
        st.just("send"), st.sampled_from(["accepted", "mixed", "failed", "unknown", "none", "released"])
    ),
    st.tuples(st.just("idle"), st.just("")),
    st.tuples(st.just("crash"), st.just("")),
    st.tuples(st.just("report"), st.sampled_from(["delivered", "failed", "unknown"])),
)


@settings(max_examples=80, deadline=None)
@given(
    ops=st.lists(st.tuples(_op, st.integers(1, 12)), min_size=1, max_size=25),
    semantics=st.sampled_from(list(Semantics)),
    echo=st.booleans(),
)
def test_every_row_ends_where_the_model_says(
    ops: list[tuple[tuple[str, str], int]], semantics: Semantics, echo: bool
) -> None:
    """``echo``: the reports carry Pigeon's message id and find their row by it; else the provider
    id alone, through the provider-id index that the first such report brings up to date."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "s.db")
        try:
            accepted = _run(ledger, Path(tmp) / "s.db", ops, semantics, echo)
            indexed = ledger.db.execute("SELECT count(*) FROM ledger_providers").fetchone()[0]
            assert indexed <= accepted  # written lazily (only when a report needs it), never twice
            assert ledger.index_providers() == accepted - indexed
            assert ledger.db.execute("SELECT count(*) FROM ledger_providers").fetchone()[0] == accepted
            assert ledger.index_providers() == 0
        finally:
            ledger.close()


def _run(
    ledger: Ledger, path: Path, ops: list[tuple[tuple[str, str], int]], semantics: Semantics, echo: bool
) -> int:
    """Play ``ops`` as a run does — answers and drops committed with the next hand-over or when a
    lane goes idle (``group_commit``), a crash losing whatever was not committed — checking the
    ledger against the model; returns how many messages were accepted (and stayed recorded)."""
    writer = Ledger(path)  # the run's own connection: a crash throws it away with its buffer
    run = writer.open_campaign("p", kind="marketing", fingerprint=FP, semantics=semantics)
    run.reconcile()
    run.group_commit = True
    durable: dict[int, tuple[str, str]] = {}  # row → (state, reason) as committed
    buffered: dict[int, tuple[str, str]] = {}  # … as recorded but not committed yet
    counted: set[int] = set()  # rows with a cap count (``sends``) in the store
    provider: dict[str, int] = {}
    next_row = 2

    def commit() -> None:
        durable.update(buffered)
        buffered.clear()

    for (op, arg), n in ops:
        rows = list(range(next_row, next_row + n))
        if op == "drop":
            next_row += n
            run.dropped([Reject(r, f"why_{arg}", state=arg) for r in rows])
            buffered.update((r, (arg, f"why_{arg}")) for r in rows)
        elif op == "send":
            next_row += n
            batch = _batch(rows)
            try:
                run.handover(batch, now=100.0 + next_row, keys=batch.keys())  # commits the buffer, then this
            except LedgerStalled:  # 5 requests in a row got no answer: the run halts, these stay pending
                next_row -= n
                continue
            commit()
            durable.update((r, ("submitting", "")) for r in rows)
            counted.update(rows)
            if arg == "accepted":
                run.results("gw", batch, [SubmitResult(Outcome.ACCEPTED, provider_id=f"x{r}") for r in rows])
                buffered.update((r, ("submitted", "")) for r in rows)
            elif arg == "mixed":
                results = [
                    SubmitResult(Outcome.ACCEPTED, provider_id=f"x{r}")
                    if r % 3
                    else SubmitResult(Outcome.REJECTED, code="E9")
                    if r % 2
                    else SubmitResult(Outcome.UNKNOWN, code="ambiguous:T1")
                    for r in rows
                ]
                run.results("gw", batch, results)
                for r in rows:
                    buffered[r] = (
                        ("submitted", "")
                        if r % 3
                        else ("failed", "rejected:E9")
                        if r % 2
                        else ("unknown", "ambiguous:T1")  # the provider could not say
                    )
            elif arg == "failed":  # committed at once
                run.failed("gw", batch, "gateway_error:GatewayUnavailable")
                durable.update((r, ("failed", "gateway_error:GatewayUnavailable")) for r in rows)
            elif arg == "unknown":
                run.unknown("gw", batch, "ambiguous:GatewayTimeout")
                durable.update((r, ("unknown", "ambiguous:GatewayTimeout")) for r in rows)
            elif arg == "released":  # never left (or answered "again"): pending, committed at once
                run.released("gw", batch, "waiting:GatewayUnreachable")
                commit()
                durable.update((r, ("pending", "waiting:GatewayUnreachable")) for r in rows)
        elif op == "idle":  # a lane's worker is about to wait: nothing stays buffered
            run.flush()
            commit()
        elif op == "crash":  # SIGKILL: what was buffered is gone
            buffered.clear()
            writer.close()
            writer = Ledger(path)
            run = writer.open_campaign("p", kind="marketing", fingerprint=FP, semantics=semantics)
            left = run.reconcile()
            run.group_commit = True
            assert left == sum(1 for s, _ in durable.values() if s == "submitting")
            for r, (s, _) in list(durable.items()):
                if s == "submitting" and semantics is Semantics.AT_MOST_ONCE:
                    durable[r] = ("unknown", INTERRUPTED)
                if (s == "submitting" and semantics is Semantics.AT_LEAST_ONCE) or (
                    s == "pending" and r in counted
                ):
                    counted.discard(r)  # sent again on resume, counted again then
            skip = run.skip if run.skip is not None else np.zeros(0, dtype=bool)
            for r, (s, _) in durable.items():
                final = s not in ("deferred", "submitting", "pending")
                assert (r < skip.size and bool(skip[r])) == final, (r, s)
            sends = writer.db.execute("SELECT count(*) FROM sends").fetchone()[0]
            assert sends == len(counted)  # every message handed over counts once against the caps
        elif op == "report":
            sent = [r for r, (s, _) in durable.items() if s in ("submitted", "delivered")]
            if not sent:
                continue
            r = sent[n % len(sent)]
            status = DeliveryStatus(arg)
            report = DeliveryReport(
                provider_id=f"x{r}", message_id=f"p-{r}" if echo else "", status=status, code="C"
            )
            assert ledger.apply_reports([report]) == 1
            if status is DeliveryStatus.DELIVERED:
                durable[r] = ("delivered", "")
            elif status is DeliveryStatus.FAILED:
                durable[r] = ("failed", "dlr:C")
    run.flush()
    commit()
    writer.close()
    model = durable
    provider = {f"x{r}": r for r, (s, _) in model.items() if s in ("submitted", "delivered")}
    provider.update({f"x{r}": r for r, (s, why) in model.items() if why == "dlr:C"})
    for state in LedgerState:
        got = set(ledger.rows_in("p", state).tolist()) - {0, 1}
        if state is LedgerState.PENDING:
            got &= set(model)  # rows never written are pending too
        assert got == {r for r, (s, _) in model.items() if s == state.value}, state
    counts = ledger.counts("p")
    assert counts.total == len(model)
    for r, (s, why) in model.items():
        rec = ledger.message(f"p-{r}")
        assert rec is not None and rec.state.value == s and rec.reason == why, (r, rec)
    assert ledger.apply_reports([DeliveryReport(provider_id="nobody", status=DeliveryStatus.DELIVERED)]) == 0
    return len(provider)


def test_rows_for_an_api_stream_are_never_handed_out_twice(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "s.db")
    try:
        run = ledger.open_campaign("api-transactional", kind="transactional", fingerprint=Fingerprint())
        first, second = run.reserve_rows(3), run.reserve_rows(2)
        again = ledger.open_campaign("api-transactional", kind="transactional", fingerprint=Fingerprint())
        third = again.reserve_rows(4)
        rows = [*first, *second, *third]
        assert len(set(rows)) == len(rows) == 9 and min(rows) >= 1
        assert again.semantics is Semantics.AT_LEAST_ONCE
        batch = MessageBatch(
            "cm",
            rows=list(third),
            numbers=["13800138000"] * 4,
            texts=["码"] * 4,
            parts=[1] * 4,
            id_prefix="api-transactional-",
        )
        again.handover(batch, now=1.0)
        again.results("gw", batch, [SubmitResult(Outcome.ACCEPTED, provider_id=f"q{r}") for r in third])
        rec = ledger.message(f"api-transactional-{third[0]}")
        assert rec is not None and rec.state is LedgerState.SUBMITTED and rec.provider_id == f"q{third[0]}"
        assert ledger.counts("api-transactional").states == {"submitted": 4}
    finally:
        ledger.close()
