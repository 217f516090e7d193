"""Opt-outs: reply keywords, the in-memory set, the SQLite store and its snapshot, the stage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.core.messages import number_key
from engine.pipeline.runner import Batch
from engine.pipeline.stages import SuppressOptouts
from engine.state.optout import OptOutSet, is_opt_out_reply
from engine.state.store import OptOutRecord
from engine.state.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    "reply",
    [
        "R",
        "r",
        "ｒ",
        " TD。",
        "td",
        "【退订】",
        "退订",
        "T",
        "N",
        "0000",
        "STOP",
        "stop!",
        "Unsubscribe",
        "😀R😀",
        "\tＴＤ\n",
    ],
)
def test_opt_out_replies(reply: str) -> None:
    assert is_opt_out_reply(reply)


@pytest.mark.parametrize("reply", ["", "R U open?", "好的", "TDD", "不要退订", "000", "谢谢"])
def test_other_replies_are_not_opt_outs(reply: str) -> None:
    assert not is_opt_out_reply(reply)


def test_keyword_set_is_configurable() -> None:
    assert is_opt_out_reply("取消", keywords={"取消"})
    assert not is_opt_out_reply("R", keywords={"取消"})


def test_set_answers_for_a_whole_batch_including_numbers_added_later() -> None:
    s = OptOutSet.from_numbers(["13800138000", "13900139000", "+447911123456"])
    keys = [number_key(n) for n in ["13800138000", "13700137000", "+447911123456", "12025550143"]]
    assert s.contains(keys) == [0, 2]
    s.add(["13700137000"])
    assert s.contains(keys) == [0, 1, 2]
    assert len(s) == 4
    assert OptOutSet().contains(keys) == []


def test_unsorted_input_is_sorted() -> None:
    s = OptOutSet(np.array([30, 10, 20], dtype=np.int64))
    assert s.contains([10, 20, 25, 30]) == [0, 1, 3]


def test_store_round_trip_and_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    store = SqliteStore(db)
    assert (
        store.add_optouts(
            [OptOutRecord("+8613800138000", "import"), OptOutRecord("+447911123456", "mo", "R")]
        )
        == 2
    )
    assert store.add_optouts([OptOutRecord("+8613800138000", "manual")]) == 0  # first record kept
    assert store.optout_records(["+8613800138000"])["+8613800138000"].source == "import"
    first = store.load_optouts()  # builds the snapshot
    assert first.contains([number_key("13800138000"), number_key("+447911123456")]) == [0, 1]
    store.close()

    store = SqliteStore(db)
    assert len(store.load_optouts()) == 2  # from the snapshot
    assert store.remove_optouts(["+8613800138000", "+8613900139000"]) == 1
    fresh = store.load_optouts()  # stale snapshot: rebuilt
    assert fresh.contains([number_key("13800138000"), number_key("+447911123456")]) == [1]
    assert [r.number for r in store.iter_optouts()] == ["+447911123456"]
    store.close()
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_stage_suppresses_opted_out_numbers_with_a_reason() -> None:
    stage = SuppressOptouts(OptOutSet.from_numbers(["13900139000"]))
    b = Batch([2, 3], [("13800138000",), ("13900139000",)], 0)
    b.numbers = ["13800138000", "13900139000"]
    stage.process(b)
    assert b.nums == [2]
    assert [(r.row, r.state, r.reason) for r in b.rejects] == [(3, "suppressed", "opted_out")]


def test_consents_are_kept_with_proof_and_for_five_months(tmp_path: Path) -> None:
    from engine.state.store import ConsentRecord

    store = SqliteStore(tmp_path / "p.db")
    now = 1_800_000_000.0
    store.add_consents(
        [
            ConsentRecord("+8613800138000", "checkout", "order 8812", now - 200 * 86400),
            ConsentRecord("+8613900139000", "member_signup", "form 17", now - 10 * 86400),
        ]
    )
    got = store.consent_records(["+8613800138000", "+8613700137000"])
    assert list(got) == ["+8613800138000"] and got["+8613800138000"].proof == "order 8812"
    with pytest.raises(ValueError, match="at least 5 months"):
        store.prune_consents(before=now - 30 * 86400, now=now)
    assert store.prune_consents(before=now - 180 * 86400, now=now) == 1
    assert list(store.consent_records(["+8613800138000", "+8613900139000"])) == ["+8613900139000"]
    store.close()


def test_each_added_opt_out_takes_a_larger_sequence_number(tmp_path: Path) -> None:
    """What a shared copy lacks is every row above its mark: rows added later have larger ones."""
    store = SqliteStore(tmp_path / "p.db")
    assert store.optouts_seq() == 0
    store.add_optouts([OptOutRecord(f"+86138001380{i:02d}", "import") for i in range(10)])
    first = store.optouts_seq()
    assert first >= 10
    assert store.add_optouts([OptOutRecord("+8613800138003", "manual")]) == 0
    assert store.optouts_seq() == first, "nothing new: the mark stays"
    store.add_optouts([OptOutRecord("+8613900139000", "mo"), OptOutRecord("+8613800138003", "mo")])
    assert store.optouts_seq() > first
    assert store.optout_keys_between(first, store.optouts_seq()).tolist() == [number_key("13900139000")]
    assert len(store.optout_keys_between(0, first)) == 10
    other = SqliteStore(tmp_path / "q.db")
    assert other.store_id() != store.store_id() > 0
    store.close()
    other.close()


def test_an_older_store_file_gets_its_sequence_column_once(tmp_path: Path) -> None:
    """A store made before ``seq``: its rows take their key as their sequence, later ones count on."""
    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    raw.executescript(
        """
        CREATE TABLE optouts (key INTEGER PRIMARY KEY, number TEXT NOT NULL, source TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('optouts_generation', 3);
        INSERT INTO optouts VALUES (13800138001, '+8613800138001', 'import', '', 1.0);
        INSERT INTO optouts VALUES (13800138000, '+8613800138000', 'import', '', 1.0);
        """
    )
    raw.close()
    store = SqliteStore(db)
    assert store.optouts_seq() == 13800138001
    assert sorted(store.optout_keys_between(0, store.optouts_seq()).tolist()) == [13800138000, 13800138001]
    assert store.optout_keys_between(13800138000, store.optouts_seq()).tolist() == [13800138001]
    store.add_optouts([OptOutRecord("+8613700137000", "mo")])
    assert store.optouts_seq() == 13800138002, "a later row above every migrated one, whatever its key"
    assert store.optout_keys_between(13800138001, store.optouts_seq()).tolist() == [13700137000]
    store.close()
    again = SqliteStore(db)  # opened again: migrated once, nothing rewritten
    assert again.optouts_seq() == 13800138002
    plan = again._db.execute("EXPLAIN QUERY PLAN SELECT key FROM optouts WHERE seq > 5").fetchall()
    assert "optouts_by_seq" in str(plan), "the upload reads by the index"
    again.close()
