"""The table of claimed numbers that byte-range shards share (engine/core/shared_keys.py): processes
forked after it is made claim overlapping numbers at once, and each number is won by one row."""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter

import pytest

from engine.core import speedups
from engine.core.shared_keys import LocalKeys, SharedKeys, table_slots

PROCESSES = 4
KEYS = 20_000


def _claimer(table: SharedKeys, index: int, out: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    """Claim every key (row ``key * 10 + index``: this process's row of it) in a shuffled order,
    in batches of 500 as the dedupe stage does; send back the keys won."""
    order = list(range(1, KEYS + 1))
    random.Random(index).shuffle(order)
    won: list[int] = []
    for at in range(0, len(order), 500):
        keys = order[at : at + 500]
        lost = set(table.claim(keys, [k * 10 + index for k in keys]))
        won += [k for i, k in enumerate(keys) if i not in lost]
    out.put((index, won))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python-with-lock"])
def test_processes_claiming_the_same_numbers_at_once_win_each_once(compiled: bool) -> None:
    if compiled and not speedups.AVAILABLE:
        pytest.skip("engine.core._speedups is not built")
    was = speedups.ACCELERATED
    speedups.use(compiled)
    try:
        ctx = multiprocessing.get_context("fork")
        table = SharedKeys(KEYS)
        out: multiprocessing.SimpleQueue = ctx.SimpleQueue()  # type: ignore[type-arg]
        procs = [ctx.Process(target=_claimer, args=(table, k, out)) for k in range(PROCESSES)]
        for p in procs:
            p.start()
        wins = [won for _, won in sorted(out.get() for _ in procs)]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        counts = Counter(k for won in wins for k in won)
        assert set(counts) == set(range(1, KEYS + 1)), "every number won"
        assert set(counts.values()) == {1}, "…by one process only"
        assert len(table) == KEYS
        # The table agrees with what each process was told: the winner's row again keeps it, every
        # other row loses it.
        for index, won in enumerate(wins):
            assert table.claim(won, [k * 10 + index for k in won]) == []
            assert len(table.claim(won, [k * 10 + index + 5 for k in won])) == len(won)
        table.close()
    finally:
        speedups.use(was)


def test_a_table_holds_the_keys_it_was_sized_for() -> None:
    assert table_slots(0) == 1024 and table_slots(1_000_000) == 2**21
    table = SharedKeys(5000)
    keys = list(range(10**10, 10**10 + 5000))
    assert table.claim(keys, keys) == []
    assert table.claim(keys, [k + 1 for k in keys]) == list(range(5000))
    table.close()


def test_local_keys_answer_as_the_shared_table() -> None:
    local, shared = LocalKeys(), SharedKeys(100)
    for keys, rows in (([1, 2, 3], [10, 11, 12]), ([3, 4, 2, 4], [50, 51, 11, 52]), ([1], [10])):
        assert local.claim(keys, rows) == shared.claim(keys, rows)
    assert local.claim([4], [52]) == [0] and len(local) == len(shared) == 4
    shared.close()
