"""The store's dedupe claims (engine/state/dedupe_claims.py), as two shard processes use them: each
number owned by one row, a resume's own row keeps it, a fresh run clears them."""

from __future__ import annotations

from pathlib import Path

from engine.state.dedupe_claims import DedupeClaims


def test_each_number_is_owned_by_one_row_across_connections(tmp_path: Path) -> None:
    store = tmp_path / "pigeon.db"
    a, b = DedupeClaims(store, "c"), DedupeClaims(store, "c")
    try:
        assert a([1, 2, 3], [10, 11, 12]) == []
        assert b([3, 4, 2], [500, 501, 502]) == [0, 2], "numbers 3 and 2 belong to rows 12 and 11"
        assert a([2, 3], [11, 12]) == [], "the same rows again (a resume): still theirs"
        assert DedupeClaims(store, "other")([1], [99]) == [], "claims are per campaign"
        big = list(range(100, 12_100))
        assert b(big, big) == [] and a(big, [k + 1 for k in big]) == list(range(len(big)))
        assert DedupeClaims.exists(store, "c")
        DedupeClaims.clear(store, "c")
        assert not DedupeClaims.exists(store, "c") and DedupeClaims.exists(store, "other")
    finally:
        a.close()
        b.close()
