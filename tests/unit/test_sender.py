"""Packing messages into full gateway requests, and joining message batches."""

from __future__ import annotations

import pytest

from engine.core.messages import Message, MessageBatch
from engine.sending.sender import Accumulator


def mb(rows: range, carrier: str = "cm", prefix: str = "c-") -> MessageBatch:
    return MessageBatch(
        carrier,
        rows=list(rows),
        numbers=[f"138{r:08d}" for r in rows],
        texts=[f"t{r}" for r in rows],
        parts=[1] * len(rows),
        id_prefix=prefix,
    )


def test_small_groups_are_joined_into_full_requests_in_order() -> None:
    acc = Accumulator(10)
    out: list[MessageBatch] = []
    for chunk in (range(3), range(3, 4), range(4, 8), range(8, 12), range(12, 36)):
        out += acc.add(mb(chunk))
    out += acc.flush()
    assert acc.flush() == []
    assert [len(b) for b in out] == [10, 10, 10, 6]
    assert [r for b in out for r in b.rows] == list(range(36))
    assert list(out[1].ids) == [f"c-{i}" for i in range(10, 20)]


def test_half_full_groups_go_as_they_are() -> None:
    acc = Accumulator(10)
    group = mb(range(6))
    assert acc.add(group) == [group]  # no copy
    assert acc.add(mb(range(3))) == []  # small: waits
    out = acc.add(mb(range(3, 12)))  # fills a request, keeps the remainder
    assert [list(b.rows) for b in out] == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert [list(b.rows) for b in acc.flush()] == [[10, 11]]


def test_accumulator_flushes_the_remainder() -> None:
    acc = Accumulator(100)
    assert acc.add(mb(range(5))) == []
    rest = acc.flush()
    assert [len(b) for b in rest] == [5]


def test_concat_keeps_explicit_ids_and_refuses_mixed_carriers() -> None:
    a = MessageBatch.of([Message("x", "+8613800138000", "hi", "cm", 1)])
    b = mb(range(2))
    joined = MessageBatch.concat([a, b])
    assert list(joined.ids) == ["x", "c-0", "c-1"]
    assert joined.tos[0] == "+8613800138000"
    assert joined.total_parts() == 3
    with pytest.raises(ValueError, match="one carrier"):
        MessageBatch.concat([mb(range(1)), mb(range(1), carrier="cu")])
