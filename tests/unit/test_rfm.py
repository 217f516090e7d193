"""The RFM builder's parts: reading order rows, totalling per customer, scoring and classing."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.core.errors import ConfigError
from engine.core.messages import Reject, number_key
from engine.outcomes.orders import DAY, OrderColumns, OrderParser
from engine.outcomes.rfm import CLASSES, Scoring, quantile_cuts, score_customers
from engine.outcomes.segments import group_customers
from engine.outcomes.totals import CustomerTotals, Totals
from engine.pipeline.source import SourceBatch

ZONE = ZoneInfo("Asia/Shanghai")
EPOCH = datetime(1970, 1, 1)


def _secs(text: str) -> int:
    return int((datetime.fromisoformat(text) - EPOCH).total_seconds())


def _parser(status: bool = False, as_of_day: int | None = None) -> OrderParser:
    cols = OrderColumns(status="status", paid=frozenset({"交易成功"})) if status else OrderColumns()
    return OrderParser.for_reader(cols.names(), cols, ZONE, as_of_day)


def _batch(rows: list[tuple[object, ...]], first: int = 2) -> SourceBatch:
    return SourceBatch(list(range(first, first + len(rows))), rows, [])  # type: ignore[arg-type]


# ---- reading rows ---------------------------------------------------------------------------------


def test_times_in_the_forms_exports_write_them() -> None:
    rows = [
        ("13800138000", "2025-11-11 10:23:45", "1"),
        ("13800138000", "2025-11-11T10:23:45", "1"),
        ("13800138000", "2025/11/11 10:23:45", "1"),
        ("13800138000", "2025-11-11 10:23", "1"),
        ("13800138000", "2025-1-2 3:04:05", "1"),
        ("13800138000", "2025年11月11日 10:23:45", "1"),
        ("13800138000", "2025-11-11", "1"),
        ("13800138000", "20251111", "1"),
        ("13800138000", "2025-11-11T02:23:45+00:00", "1"),  # an offset: read in the shop's zone
        ("13800138000", "2025-11-11T02:23:45Z", "1"),
        ("13800138000", "1762827825", "1"),  # Unix seconds: 2025-11-11 02:23:45 UTC
        ("13800138000", "1762827825000", "1"),  # milliseconds
    ]
    got = _parser().parse(_batch(rows))
    assert got.rejects == []
    expect = [
        "2025-11-11 10:23:45",
        "2025-11-11 10:23:45",
        "2025-11-11 10:23:45",
        "2025-11-11 10:23:00",
        "2025-01-02 03:04:05",
        "2025-11-11 10:23:45",
        "2025-11-11 00:00:00",
        "2025-11-11 00:00:00",
        "2025-11-11 10:23:45",
        "2025-11-11 10:23:45",
        "2025-11-11 10:23:45",
        "2025-11-11 10:23:45",
    ]
    assert got.seconds.tolist() == [_secs(t) for t in expect]


def test_database_values_are_read_as_the_driver_gives_them() -> None:
    utc = ZoneInfo("UTC")
    rows = [
        (13800138000, datetime(2025, 11, 11, 10, 0), Decimal("88.80")),
        ("13900139000", datetime(2025, 11, 11, 2, 0, tzinfo=utc), 12),
        ("13700137000", datetime(2025, 11, 12).date(), 1.5),
    ]
    got = _parser().parse(_batch(rows, first=1))
    assert got.rejects == []
    assert got.keys.tolist() == [13800138000, 13900139000, 13700137000]
    assert got.seconds.tolist() == [_secs("2025-11-11 10:00:00")] * 2 + [_secs("2025-11-12 00:00:00")]
    assert got.cents.tolist() == [8880, 1200, 150]


def test_database_nulls_are_rejected_and_the_rest_read_at_once() -> None:
    rows = [
        ("13800138000", datetime(2025, 11, 11, 10, 0), Decimal("1.00")),
        ("13800138001", None, Decimal("2.00")),
        ("13800138002", datetime(2025, 11, 12, 10, 0), None),
    ]
    got = _parser().parse(_batch(rows, first=1))
    assert [(r.row, r.reason) for r in got.rejects] == [(2, "bad_time"), (3, "bad_amount")]
    assert got.seconds.tolist() == [_secs("2025-11-11 10:00:00")] and got.cents.tolist() == [100]


def test_amounts_in_the_forms_exports_write_them() -> None:
    amounts = ["1,299.00", "¥88", "88元", "￥ 12.5", "０.５", "7", "3.005", "RMB 10"]
    rows = [("13800138000", "2025-11-11 10:00:00", a) for a in amounts]
    got = _parser().parse(_batch(rows))
    assert got.rejects == []
    assert got.cents.tolist() == [129900, 8800, 8800, 1250, 50, 700, 300, 1000]


def test_bad_rows_are_rejected_with_their_row_and_reason_and_the_rest_is_read() -> None:
    rows = [
        ("13800138000", "2025-11-11 10:00:00", "10"),
        ("", "2025-11-11 10:00:00", "10"),  # row 3
        ("021-6234-5678", "2025-11-11 10:00:00", "10"),  # row 4
        ("13800138001", "n/a", "10"),  # row 5
        ("13800138002", "", "10"),  # row 6
        ("13800138003", "2025-02-30 10:00:00", "10"),  # row 7: no such day
        ("13800138004", "2025-11-11 10:00:00", "abc"),  # row 8
        ("13800138005", "2025-11-11 10:00:00", "-5"),  # row 9
        ("13800138006", "2025-11-11 10:00:00", ""),  # row 10
        ("13800138007", "2025-11-11 10:00:00", "nan"),  # row 11
        ("+86 138-0013-8008", "2025-11-11 10:00:00", "20"),
    ]
    got = _parser().parse(_batch(rows))
    assert [(r.row, r.reason) for r in got.rejects] == [
        (3, "missing_phone"),
        (4, "not_mobile"),
        (5, "bad_time"),
        (6, "bad_time"),
        (7, "bad_time"),
        (8, "bad_amount"),
        (9, "bad_amount"),
        (10, "bad_amount"),
        (11, "bad_amount"),
    ]
    assert "negative" in got.rejects[6].detail and got.rejects[6].phone == "13800138005"
    assert got.keys.tolist() == [13800138000, 13800138008]
    assert got.cents.tolist() == [1000, 2000]


def test_a_few_bad_values_in_a_big_batch_cost_no_good_row() -> None:
    rng = random.Random(7)
    rows: list[tuple[object, ...]] = []
    bad_rows = set()
    for i in range(5000):
        t = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:00:00"
        a = f"{rng.randint(1, 999)}.50"
        if i % 997 == 3:
            t, bad_rows = "soon", bad_rows | {i + 2}
        if i % 1009 == 5:
            a, bad_rows = "free", bad_rows | {i + 2}
        rows.append((f"139{i:08d}", t, a))
    got = _parser().parse(_batch(rows))
    assert {r.row for r in got.rejects} == bad_rows
    assert len(got.keys) == 5000 - len(bad_rows)
    good = [r for i, r in enumerate(rows) if i + 2 not in bad_rows]
    assert got.cents.tolist() == [round(float(str(r[2])) * 100) for r in good]
    assert got.seconds.tolist() == [_secs(str(r[1])) for r in good]


def test_status_marks_paid_rows_and_as_of_rejects_later_orders() -> None:
    as_of = _secs("2025-11-11 00:00:00") // DAY
    rows = [
        ("13800138000", "2025-11-11 23:59:59", "10", "交易成功"),
        ("13800138001", "2025-11-12 00:00:00", "10", "交易成功"),  # row 3: the day after as-of
        ("13800138002", "2025-11-10 08:00:00", "10", "交易关闭"),
        ("13800138003", "2025-11-10 08:00:00", "10", " 交易成功 "),
    ]
    got = _parser(status=True, as_of_day=as_of).parse(_batch(rows))
    assert [(r.row, r.reason) for r in got.rejects] == [(3, "after_as_of")]
    assert got.paid.tolist() == [True, False, True]


def test_a_status_column_needs_its_paid_values() -> None:
    with pytest.raises(ConfigError, match="--paid"):
        OrderColumns(status="status")


def test_the_source_s_own_rejects_are_kept() -> None:
    batch = SourceBatch([2], [("13800138000", "2025-11-11 10:00:00", "1")], [Reject(3, "malformed_row", "x")])
    got = _parser().parse(batch)
    assert [(r.row, r.reason) for r in got.rejects] == [(3, "malformed_row")]


# ---- totals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_buffer", [1, 7, 1000])
def test_totals_in_chunks_equal_a_plain_sum(min_buffer: int) -> None:
    rng = random.Random(min_buffer)
    acc = CustomerTotals(min_buffer=min_buffer)
    ref: dict[int, list[int]] = {}
    acc_rows = 0
    for _ in range(40):
        n = rng.randint(0, 60)
        acc_rows += n
        keys = [rng.randint(1, 80) for _ in range(n)]
        secs = [rng.randint(0, 10**6) for _ in range(n)]
        cents = [rng.randint(0, 10**5) for _ in range(n)]
        paid = [rng.random() < 0.8 for _ in range(n)]
        acc.add(
            np.array(keys, dtype=np.int64),
            np.array(secs, dtype=np.int64),
            np.array(cents, dtype=np.int64),
            np.array(paid, dtype=np.bool_),
        )
        for k, s, c, p in zip(keys, secs, cents, paid, strict=True):
            r = ref.setdefault(k, [0, 0, 2**63 - 1, -(2**63), -(2**63)])
            r[4] = max(r[4], s)
            if p:
                r[0] += 1
                r[1] += c
                r[2] = min(r[2], s)
                r[3] = max(r[3], s)
    t = acc.result()
    assert t.keys.tolist() == sorted(ref)
    got = {
        k: [o, c, f, la, se]
        for k, o, c, f, la, se in zip(
            t.keys.tolist(),
            t.orders.tolist(),
            t.cents.tolist(),
            t.first.tolist(),
            t.last.tolist(),
            t.seen.tolist(),
            strict=True,
        )
    }
    assert got == ref
    # folded as it went when the buffer outgrew the table, never with fewer than min_buffer rows buffered
    assert acc.folds <= acc_rows // max(min_buffer, 1) + 1
    if min_buffer < len(ref):
        assert acc.folds > 5
    assert acc.peak_rows <= max(min_buffer, len(ref)) + 60 + len(ref)


# ---- scoring --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 10, 101, 1000])
def test_quantile_cuts_are_the_values_at_the_documented_positions(n: int) -> None:
    rng = random.Random(n)
    values = [rng.randint(0, 50) for _ in range(n)]
    ordered = sorted(values)
    assert quantile_cuts(np.array(values, dtype=np.int64), 5) == tuple(
        ordered[(k * (n - 1)) // 5] for k in range(1, 5)
    )


def _totals(rows: list[tuple[int, int, int, int]]) -> Totals:
    """(key, orders, cents, last day) per customer."""
    keys, orders, cents, last = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    secs = last * DAY + 3600
    never = np.iinfo(np.int64).min
    return Totals(
        keys, orders, cents, np.where(orders > 0, secs, 2**63 - 1), np.where(orders > 0, secs, never), secs
    )


def test_planted_classes_come_out_of_merchant_thresholds() -> None:
    """Known answer: with thresholds every customer scores 1 or 5 on each dimension, each class has
    as many customers, so every mean is 3 and each customer's class is the one planted."""
    today = 20_000
    planted = []
    rows = []
    key = 13800000000
    for c in CLASSES[:-1]:
        assert c.high is not None
        r_high, f_high, m_high = c.high
        for _ in range(25):
            key += 1
            days = 3 if r_high else 400
            orders = 12 if f_high else 1
            cents = 500_000 if m_high else 1_000
            rows.append((key, orders, cents, today - days))
            planted.append(c.slug)
    rows.append((key + 1, 0, 0, today - 10))  # only an unpaid order: potential
    planted.append("potential")
    scoring = Scoring(
        r_days=(30, 60, 90, 120), f_orders=(2, 4, 6, 10), m_cents=(10_000, 50_000, 100_000, 300_000)
    )
    table = score_customers(_totals(rows), scoring, as_of_day=today)
    assert [CLASSES[k].slug for k in table.klass.tolist()] == planted
    assert {d.mean for d in table.dims.values()} == {3.0}
    assert table.r_score.tolist()[:2] == [5, 5] and table.r_score.tolist()[-1] == 0
    # life stages: 3 days active, 400 lost; 1 order new, 12 fan; no paid order potential (10 days: active)
    stages = {(int(r), int(f)) for r, f in zip(table.r_stage, table.f_stage, strict=True)}
    assert stages == {(0, 3), (0, 1), (3, 3), (3, 1), (0, 0)}


def test_recency_counts_from_the_latest_order_by_default() -> None:
    table = score_customers(_totals([(1, 1, 100, 100), (2, 2, 100, 90), (3, 0, 0, 120)]), Scoring())
    assert table.as_of_day == 120
    assert table.recency.tolist() == [20, 30, 0]


def test_equal_values_always_score_the_same() -> None:
    # 70% of buyers with one order: they all score 1 on F, whatever their place in the sort
    rows = [(i, 1 if i < 70 else 2 + i % 5, 100 * i, 1000 - i) for i in range(100)]
    table = score_customers(_totals(rows), Scoring())
    f = table.f_score.tolist()
    assert {f[i] for i in range(70)} == {1}
    assert min(f[70:]) > 1


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"r_days": (90, 30)}, "--r-days"),
        ({"f_orders": (0, 2)}, "--f-orders"),
        ({"scores": 1}, "--scores"),
        ({"stages_f": (1, 5)}, "--stages-f"),
    ],
)
def test_bad_scoring_options_are_refused_naming_the_option(kwargs: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        Scoring(**kwargs)  # type: ignore[arg-type]


# ---- groups -----------------------------------------------------------------------------------------


def test_big_groups_split_into_alike_sub_groups_under_the_size() -> None:
    rows = [(13800000000 + i, 1 + i % 3, 1000 + i, 200 - i % 50) for i in range(1000)]
    table = score_customers(_totals(rows), Scoring())
    grouping = group_customers(table, "class", 120)
    for g, parts in grouping.parts.items():
        members = grouping.group == g
        n = int(members.sum())
        assert parts == -(-n // 120)
        sizes = np.bincount(grouping.part[members], minlength=parts)
        assert sizes.max() <= 120 and sizes.max() - sizes.min() <= 1
    again = group_customers(table, "class", 120)
    assert np.array_equal(again.part, grouping.part)  # the same export splits the same way
    assert np.array_equal(group_customers(table, "class", 0).part, np.zeros(1000, dtype=np.int64))


def test_stage_groups_are_named_f_stage_then_r_stage() -> None:
    table = score_customers(_totals([(1, 1, 100, 1000), (2, 6, 900, 500)]), Scoring())
    grouping = group_customers(table, "stage", 0)
    names = [grouping.names[g] for g in grouping.group.tolist()]
    assert names == ["new-active", "fan-lost"]


def test_number_keys_round_trip_into_segment_numbers() -> None:
    from engine.outcomes.segments import phone_of

    assert phone_of(np.array([number_key("13800138000"), number_key("+447700900123")], dtype=np.int64)) == [
        "13800138000",
        "+447700900123",
    ]


def test_day_arithmetic_is_by_calendar_day_in_the_shop_s_zone() -> None:
    # 23:59 and 00:01 the next day are one day apart; 00:01 and 23:59 the same day are not
    late, early = _secs("2025-11-10 23:59:00"), _secs("2025-11-11 00:01:00")
    assert early // DAY - late // DAY == 1
    assert (early + timedelta(hours=23, minutes=58).total_seconds()) // DAY == early // DAY
