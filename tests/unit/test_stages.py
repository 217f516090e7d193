"""The stage runner and each built-in stage: what they fill in, what they reject and why."""

from __future__ import annotations

import pytest

from engine.core.carriers import default_prefix_table
from engine.core.messages import MessageBatch, Reject, RejectReason
from engine.core.template import compile_template
from engine.pipeline.runner import Batch, StageRunner, positions
from engine.pipeline.stages import CountParts, Dedupe, Normalize, Render, Route, standard_stages

pytestmark = pytest.mark.usefixtures("kernels")  # on the compiled kernels and the pure twins

ALL = {"cm", "cu", "ct", "cbn", "intl"}


def batch(*phones: str, extra: tuple[str, ...] = ()) -> Batch:
    rows = [(p, *extra) for p in phones]
    return Batch(list(range(2, 2 + len(rows))), rows, 0)


def test_positions_finds_every_occurrence() -> None:
    assert positions([None, 1, None, None, 2], None) == [0, 2, 3]
    assert positions([1, 2], None) == []
    assert positions([], 0) == []


@pytest.mark.parametrize("many", [False, True])
def test_drop_removes_exactly_the_given_items_from_every_filled_column(many: bool) -> None:
    n = 40
    b = Batch(list(range(n)), [(str(i),) for i in range(n)], 0)
    b.numbers = [f"n{i}" for i in range(n)]
    b.carriers = [f"c{i}" for i in range(n)]
    gone = list(range(0, n, 2)) if many else [3, 17]
    b.drop(gone, "why", [f"d{i}" for i in gone])
    keep = [i for i in range(n) if i not in gone]
    assert b.nums == keep
    assert b.numbers == [f"n{i}" for i in keep]
    assert b.carriers == [f"c{i}" for i in keep]
    assert [r.row for r in b.rejects] == gone
    assert [r.detail for r in b.rejects] == [f"d{i}" for i in gone]
    assert [r.phone for r in b.rejects] == [str(i) for i in gone]


def test_normalize_fast_tier_and_parser_agree() -> None:
    b = batch(
        "13800138000",
        "+86 139-0013-9000",
        "008613700137000",
        "8613600136000",
        "１３５００１３５０００",
        "138.0013.8000",
        "+44 7911 123456",
        "12345",
        "",
    )
    Normalize().process(b)
    assert b.numbers == [
        "13800138000",
        "13900139000",
        "13700137000",
        "13600136000",
        "13500135000",
        "13800138000",
        "+447911123456",
    ]
    assert [(r.row, r.reason) for r in b.rejects] == [
        (9, RejectReason.INVALID_NUMBER),
        (10, RejectReason.MISSING_PHONE),
    ]


def test_route_assigns_carriers_rejects_unsendable_and_unserved() -> None:
    table = default_prefix_table()
    b = batch()
    b.nums = [2, 3, 4, 5, 6, 7]
    b.rows = [(x,) for x in "abcdef"]
    b.numbers = ["13800138000", "17100000000", "13490000000", "15400000000", "+447911123456", "19200000000"]
    Route(table, {"cm", "cu", "ct", "intl"}).process(b)
    assert b.carriers == ["cm", "cu", "intl"]
    assert b.numbers == ["13800138000", "17100000000", "+447911123456"]
    assert [(r.row, r.reason) for r in b.rejects] == [
        (4, RejectReason.SATELLITE_NUMBER),
        (5, RejectReason.UNALLOCATED_PREFIX),
        (7, RejectReason.NO_GATEWAY),  # cbn: no gateway serves it
    ]
    assert "cbn" in b.rejects[-1].detail


def test_carrier_resolvers_override_the_prefix_per_batch() -> None:
    calls: list[int] = []

    class Ported:
        def resolve(self, numbers: list[str], carriers: list[str]) -> None:
            calls.append(len(numbers))
            for i, n in enumerate(numbers):
                if n == "13800138000":
                    carriers[i] = "cu"

    b = batch()
    b.nums, b.rows = [2, 3], [("a",), ("b",)]
    b.numbers = ["13800138000", "13900139000"]
    Route(default_prefix_table(), ALL, [Ported()]).process(b)
    assert b.carriers == ["cu", "cm"]
    assert calls == [2]  # once per batch, not per number


def test_render_rejects_rows_missing_a_required_field_and_fills_defaults() -> None:
    t = compile_template("{name|亲}，{coupon}元", signature="S").bind(["phone", "name", "coupon"])
    b = Batch([2, 3, 4], [("1", "", "5"), ("2", "张", ""), ("3", "王", "9")], 0)
    Render(t).process(b)
    assert b.texts == ["【S】亲，5元", "【S】王，9元"]
    assert [(r.row, r.reason) for r in b.rejects] == [(3, RejectReason.MISSING_FIELD)]
    assert "'coupon' is empty" in b.rejects[0].detail


def test_count_parts_uses_the_exact_rules_and_rejects_over_length() -> None:
    t = compile_template("{x}", signature="S", max_length=80)
    b = Batch([2, 3, 4, 5], [("",)] * 4, 0)
    b.texts = ["【S】" + "中" * 67, "【S】" + "中" * 68, "【S】" + "中" * 66 + "😀", "【S】" + "中" * 80]
    CountParts(t).process(b)
    assert b.parts == [1, 2, 2]  # 70 units is one part; 71 (or 70 + an emoji's second unit) two
    assert [(r.row, r.reason) for r in b.rejects] == [(5, RejectReason.TOO_LONG)]
    assert "over the maximum of 80" in b.rejects[0].detail


def test_count_parts_for_a_gsm_template_handles_mixed_batches() -> None:
    t = compile_template("Hi {name}, 20% off", signature="Shop")
    assert t.literal_encoding == "ucs2"  # 【】 are not GSM-7
    t2 = compile_template("Hi {name}, 20% off")
    assert t2.literal_encoding == "gsm7"
    b = Batch([2, 3, 4], [("",)] * 3, 0)
    b.texts = ["Hi Ann, 20% off", "Hi 张, 20% off" + "x" * 60, "Hi {x}" + "a" * 154]
    CountParts(t2).process(b)
    assert b.parts == [1, 2, 2]  # GSM-7 15; UCS-2 73 units; GSM-7 162 septets ({ } count two)


def test_runner_tallies_every_row_once() -> None:
    t = compile_template("{name}", signature="S").bind(["phone", "name"])
    runner = StageRunner(standard_stages(t, default_prefix_table(), ALL))
    b = Batch(
        [2, 3, 4, 5], [("13800138000", "A"), ("bad", "B"), ("13900139000", ""), ("13490000000", "C")], 0
    )
    out = runner.run(b)
    assert out.nums == [2]
    assert sorted(r.row for r in out.rejects) == [3, 4, 5]
    stats = runner.tally.stages
    assert stats["normalize"].items_in == 4 and stats["normalize"].items_out == 3
    assert stats["route"].dropped == {"satellite_number": 1}
    assert stats["render"].dropped == {"missing_field": 1}
    assert runner.tally.rejected_total == 3


def test_the_rejects_of_a_batch_are_in_row_order_whichever_stage_made_them() -> None:
    t = compile_template("{name}", signature="S").bind(["phone", "name"])
    runner = StageRunner(standard_stages(t, default_prefix_table(), ALL))
    rows = [
        ("13490000000", "A"),  # 2: route (satellite)
        ("13800138000", ""),  # 3: render (missing field)
        ("bad", "B"),  # 4: normalize
        ("13900139000", "C"),  # 5: sent
        ("13900139000", "D"),  # 6: dedupe
        ("12345", "E"),  # 7: normalize
    ]
    source_reject = Reject(1, RejectReason.MALFORMED_ROW, "wrong column count")  # from the source
    out = runner.run(Batch([2, 3, 4, 5, 6, 7], rows, 0, [Reject(8, RejectReason.UNDECODABLE), source_reject]))
    assert [r.row for r in out.rejects] == [1, 2, 3, 4, 6, 7, 8]
    assert out.nums == [5]


def test_messages_group_by_carrier_in_row_order() -> None:
    b = Batch([5, 6, 7, 8], [("",)] * 4, 0)
    b.numbers = ["13800138000", "13000130000", "13900139000", "+447911123456"]
    b.carriers = ["cm", "cu", "cm", "intl"]
    b.texts = ["a", "b", "c", "d"]
    b.parts = [1, 2, 1, 3]
    groups = b.messages("camp-")
    assert sorted(groups) == ["cm", "cu", "intl"]
    cm = groups["cm"]
    assert isinstance(cm, MessageBatch)
    assert list(cm.ids) == ["camp-5", "camp-7"]
    assert list(cm.tos) == ["+8613800138000", "+8613900139000"]
    assert [m.text for m in cm] == ["a", "c"]
    assert groups["intl"][0].to == "+447911123456"
    assert cm.total_parts() == 2
    assert len(cm[1:]) == 1 and cm[1:][0].id == "camp-7"


def test_dedupe_suppresses_later_rows_of_the_same_number_however_written() -> None:
    b = batch(
        "13800138000",
        "+86 138-0013-8000",
        "13900139000",
        "008613800138000",
        "+447911123456",
        "+44 7911 123456",
    )
    Normalize().process(b)
    d = Dedupe()
    d.process(b)
    assert b.nums == [2, 4, 6]
    assert [(r.row, r.state, r.reason) for r in b.rejects] == [
        (3, "suppressed", "duplicate"),
        (5, "suppressed", "duplicate"),
        (7, "suppressed", "duplicate"),
    ]
    later = batch("13900139000", "13700137000")
    later.numbers = [r[0] for r in later.rows]
    d.process(later)  # across batches of the same run
    assert later.nums == [3]


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("13490000000", RejectReason.SATELLITE_NUMBER),
        ("+86 134-9000-0000", RejectReason.SATELLITE_NUMBER),
        ("15400000000", RejectReason.UNALLOCATED_PREFIX),
        ("19200000000", RejectReason.NO_GATEWAY),  # Broadnet, and no gateway serves it here
        ("12345", RejectReason.INVALID_NUMBER),
    ],
)
def test_a_repeated_unsendable_number_is_rejected_with_its_reason_on_every_row(
    phone: str, reason: RejectReason
) -> None:
    t = compile_template("{name}", signature="S").bind(["phone", "name"])
    runner = StageRunner(standard_stages(t, default_prefix_table(), {"cm", "cu", "ct", "intl"}))
    out = runner.run(Batch([2, 3, 4], [(phone, "A"), (phone, "B"), ("13800138000", "C")], 0))
    assert out.nums == [4]
    assert sorted((r.row, r.state, r.reason) for r in out.rejects) == [
        (2, "rejected", reason),
        (3, "rejected", reason),
    ]


def test_a_number_whose_first_row_cannot_be_sent_is_sent_from_its_next_row() -> None:
    """Dedupe keeps the first row of a number that passed every check, not the first row: a row
    refused for its own data (an empty field, a text over the maximum) does not use the number up."""
    t = compile_template("{name}，您好", signature="S", max_length=20).bind(["phone", "name"])
    runner = StageRunner(standard_stages(t, default_prefix_table(), ALL))
    rows = [
        ("13800138000", ""),  # missing_field
        ("13800138000", "张" * 30),  # too_long
        ("+86 138 0013 8000", "张伟"),  # the one to send
        ("13800138000", "王芳"),  # a true duplicate
        ("13900139000", ""),  # missing_field, and nothing else for this number
        ("13900139000", ""),  # … on both rows
    ]
    out = runner.run(Batch([2, 3, 4, 5, 6, 7], rows, 0))
    assert out.nums == [4]
    assert out.texts == ["【S】张伟，您好"]
    assert sorted((r.row, r.reason) for r in out.rejects) == [
        (2, RejectReason.MISSING_FIELD),
        (3, RejectReason.TOO_LONG),
        (5, "duplicate"),
        (6, RejectReason.MISSING_FIELD),
        (7, RejectReason.MISSING_FIELD),
    ]


def test_dedupe_keys_never_confuse_countries() -> None:
    b = batch()
    b.nums, b.rows = [2, 3], [("a",), ("b",)]
    b.numbers = ["12025550143", "+12025550143"]  # a (bad) Chinese 11-digit value and a US number
    Dedupe().process(b)
    assert b.nums == [2, 3]


def test_links_in_fields_are_rejected_only_where_a_gateway_refuses_them() -> None:
    t = compile_template("{name}，戳 {link}", signature="S").bind(["phone", "name", "link"])
    rows = [("1", "张伟", "A款"), ("2", "王芳", "https://x.cn/q"), ("3", "www.taobao.com", "B款")]
    b = Batch([2, 3, 4], list(rows), 0)
    Render(t, forbid_urls=True).process(b)
    assert b.nums == [2]
    assert [(r.row, r.reason) for r in b.rejects] == [(3, "url_in_field"), (4, "url_in_field")]
    b = Batch([2, 3, 4], list(rows), 0)
    Render(t).process(b)
    assert b.nums == [2, 3, 4]
