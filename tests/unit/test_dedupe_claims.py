"""The dedupe claims of byte-range shards (engine/state/dedupe_claims.py): two processes' claims in
one shared table, each number owned by one row; the numbers won logged in the store, from which a
resume fills a fresh table; a fresh run clears them; during a resume the ledger's final rows are
left out of dedupe."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from engine.core.shared_keys import LocalKeys, SharedKeys
from engine.pipeline.stages.dedupe import Dedupe
from engine.state.dedupe_claims import DedupeClaims


def test_each_number_is_owned_by_one_row_and_the_winners_are_logged(tmp_path: Path) -> None:
    store = tmp_path / "pigeon.db"
    table = SharedKeys(20_000)
    a, b = DedupeClaims(table, "c", store), DedupeClaims(table, "c", store)
    try:
        assert a([1, 2, 3], [10, 11, 12]) == []
        assert b([3, 4, 2], [500, 501, 502]) == [0, 2], "numbers 3 and 2 belong to rows 12 and 11"
        assert a([2, 3], [11, 12]) == [], "the same rows again (a resume): still theirs"
        big = list(range(100, 12_100))
        assert b(big, big) == [] and a(big, [k + 1 for k in big]) == list(range(len(big)))
        keys, rows = DedupeClaims.logged(store, "c")
        owner = dict(zip(keys, rows, strict=True))
        assert owner[1] == 10 and owner[3] == 12 and owner[4] == 501 and owner[100] == 100
        assert len(owner) == 4 + len(big), "only the numbers won are logged"
        # A resume: a fresh table filled from the log gives every number to the same row.
        again = LocalKeys()
        assert DedupeClaims.fill(again, store, "c") == len(keys)
        assert again.claim([3, 2, 4, 1], [12, 11, 999, 10]) == [2]
        assert DedupeClaims.exists(store, "c") and not DedupeClaims.exists(store, "other")
        DedupeClaims.clear(store, "c")
        assert not DedupeClaims.exists(store, "c") and DedupeClaims.logged(store, "c") == ([], [])
    finally:
        a.close()
        b.close()
        table.close()


def test_without_a_store_nothing_is_logged(tmp_path: Path) -> None:
    claims = DedupeClaims(LocalKeys(), "c")
    assert claims([1, 1], [2, 3]) == [1]
    assert not (tmp_path / "pigeon.db").exists()


def test_a_resume_reads_the_claims_an_earlier_version_kept_row_by_row(tmp_path: Path) -> None:
    store = tmp_path / "pigeon.db"
    db = sqlite3.connect(store)
    db.execute(
        "CREATE TABLE dedupe_claims (campaign TEXT NOT NULL, key INTEGER NOT NULL, row INTEGER NOT NULL, "
        "PRIMARY KEY (campaign, key)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO dedupe_claims VALUES ('c', 7, 70)")
    db.commit()
    db.close()
    assert DedupeClaims.exists(store, "c")
    table = LocalKeys()
    DedupeClaims.fill(table, store, "c")
    assert table.claim([7], [71]) == [0]
    DedupeClaims.clear(store, "c")
    assert not DedupeClaims.exists(store, "c")


class _Batch:
    """What ``Dedupe`` uses of a stage batch."""

    def __init__(self, keys: list[int], rows: list[int]) -> None:
        self.keys, self.nums = keys, rows
        self.dropped: list[int] = []

    def number_keys(self) -> list[int]:
        return self.keys

    def drop(self, indices: list[int], *_: object, **__: object) -> None:
        self.dropped = list(indices)


def test_a_resume_leaves_the_ledgers_final_rows_out_of_dedupe() -> None:
    """Row 3 was recorded ``duplicate`` because row 9 claimed the number first, and row 9's shard
    died before its claim was logged: on a resume (any split: here one process) row 3 must neither
    claim the number nor make row 9 a local repeat — row 9 takes it and is sent."""
    claims = DedupeClaims(LocalKeys(), "c")
    claims.skip = np.zeros(20, dtype=bool)
    claims.skip[3] = True
    stage = Dedupe(claims)
    batch = _Batch([555, 556, 555, 555], [3, 4, 9, 12])
    stage.process(batch)  # type: ignore[arg-type]
    assert batch.dropped == [3], "row 12 repeats row 9's number; row 3 is left alone (skipped later)"
    assert claims.table.claim([555], [9]) == [], "row 9 holds the number"
