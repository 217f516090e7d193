"""A run's verdict counts recipients another host or worker claimed first as sendable (sent there)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from engine.core.messages import Reject, State, SuppressReason
from engine.observability.report import RunRecorder
from engine.pipeline.verdict import NOTHING_SENDABLE, judge, sendable_rows
from engine.run.plan import Plan, _verdict


def _plan(max_rejected_share: float = 0.5) -> Plan:
    policy = SimpleNamespace(max_rejected_share=max_rejected_share)
    return cast(Plan, SimpleNamespace(campaign=SimpleNamespace(config=SimpleNamespace(policy=policy))))


def _recorder(rows: list[tuple[str, str]]) -> RunRecorder:
    rec = RunRecorder({})
    rec.dropped([Reject(i + 2, reason, "", f"138{i:08d}", state) for i, (state, reason) in enumerate(rows)])
    return rec


def test_every_recipient_claimed_elsewhere_is_no_failure() -> None:
    """A service blast (or worker) whose every recipient another host claimed first: not
    ``nothing_sendable`` — they were sendable and sent there."""
    rec = _recorder([(State.SUPPRESSED, SuppressReason.CLAIMED_ELSEWHERE)] * 50)
    assert sendable_rows(rec.rows, rec.states, rec.reasons) == 50
    assert _verdict(_plan(), rec, None) is None


def test_claimed_elsewhere_beside_other_suppressions_still_counts() -> None:
    rows: list[tuple[str, str]] = [(State.SUPPRESSED, SuppressReason.OPTED_OUT)] * 30
    rows += [(State.SUPPRESSED, SuppressReason.CLAIMED_ELSEWHERE)] * 5
    rec = _recorder(rows)
    assert sendable_rows(rec.rows, rec.states, rec.reasons) == 5
    assert _verdict(_plan(), rec, None) is None


def test_other_suppressions_alone_are_still_nothing_sendable() -> None:
    """The rule is for ``claimed_elsewhere`` only: every row opted out is still a refused segment."""
    rec = _recorder([(State.SUPPRESSED, SuppressReason.OPTED_OUT)] * 50)
    assert sendable_rows(rec.rows, rec.states, rec.reasons) == 0
    verdict = _verdict(_plan(), rec, None)
    assert verdict is not None and verdict.reason == NOTHING_SENDABLE


def test_judge_with_sendable_rows_and_handled() -> None:
    states: dict[str, int] = {State.SUPPRESSED: 10, State.REJECTED: 2}
    reasons: dict[str, Any] = {
        State.SUPPRESSED: {SuppressReason.CLAIMED_ELSEWHERE: 4, SuppressReason.DUPLICATE: 6},
        State.REJECTED: {"invalid_number": 2},
    }
    assert sendable_rows(12, states, reasons) == 4
    assert sendable_rows(12, states, reasons, handled=3) == 7
    no_elsewhere = {State.SUPPRESSED: {SuppressReason.DUPLICATE: 10}, State.REJECTED: {"invalid_number": 2}}
    assert sendable_rows(12, states, no_elsewhere) == 0
    assert judge(12, states, reasons, max_rejected_share=0.5, sendable=4) is None
