"""Properties of the core: no valid row is lost, every row ends rendered or rejected with a reason."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.core.carriers import default_prefix_table
from engine.core.messages import RejectReason
from engine.core.phone import parse_phone
from engine.core.sms import count_parts, split, units
from engine.core.template import compile_template
from engine.pipeline.runner import Batch, StageRunner
from engine.pipeline.source import SourceContext
from engine.pipeline.stages import Dedupe, Normalize, standard_stages
from plugins.source_file.config import CsvConfig
from plugins.source_file.csv_source import CsvSource

pytestmark = pytest.mark.usefixtures("kernels")  # on the compiled kernels and the pure twins

TABLE = default_prefix_table()
SENDABLE = sorted({k[:3] for k in TABLE.route})
ALL = {"cm", "cu", "ct", "cbn", "intl"}

digits = st.text("0123456789", min_size=8, max_size=8)
valid_national = st.builds(lambda p, d: p + d, st.sampled_from(SENDABLE), digits).filter(
    lambda n: n[:5] in TABLE.route
)


@st.composite
def written(draw: st.DrawFn, national: str) -> str:
    """A valid national number in one of the forms merchants write."""
    form = draw(st.integers(0, 6))
    n = national
    return [
        n,
        f"+86 {n[:3]}-{n[3:7]}-{n[7:]}",
        "0086" + n,
        "86" + n,
        n.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
        n + ".0",
        f" {n[:3]} {n[3:7]} {n[7:]} ",
    ][form]


garbage = st.one_of(
    st.just(""),
    st.text("0123456789", max_size=10),
    st.text("0123456789", min_size=12, max_size=16),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15),
    st.builds(lambda d: "1349" + d[:7], digits),  # satellite
    st.builds(lambda d: "154" + d, digits),  # unallocated
    st.builds(lambda d: "14400" + d, digits),  # 13-digit IoT
)

names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just(True), valid_national.flatmap(lambda n: st.tuples(st.just(n), written(n))), names
            ),
            st.tuples(st.just(False), st.tuples(st.just(""), garbage), names),
        ),
        max_size=60,
    ),
    st.integers(1, 17),
)
def test_no_valid_row_is_lost_and_every_row_ends_rendered_or_rejected(
    rows: list[tuple[bool, tuple[str, str], str]], batch_size: int
) -> None:
    """Each row ends in exactly one of rendered / rejected / suppressed, and a valid number's first
    row is always rendered (later rows with the same number are suppressed as duplicates)."""
    template = compile_template("{name|亲}，{coupon}元券", signature="小鹅", opt_out_text="拒收请回复R")
    bound = template.bind(["phone", "name", "coupon"])
    runner = StageRunner(standard_stages(bound, TABLE, ALL))
    rendered: dict[int, str] = {}
    dropped: dict[int, tuple[str, str]] = {}
    source_rows = [(w, name, "20") for _, (_, w), name in rows]
    for start in range(0, len(source_rows), batch_size):
        chunk = source_rows[start : start + batch_size]
        nums = list(range(start + 2, start + 2 + len(chunk)))
        b = runner.run(Batch(nums, list(chunk), 0))
        for r in b.rejects:
            assert r.row not in dropped and r.row not in rendered
            assert r.detail
            if r.state == "rejected":
                assert r.reason in set(RejectReason)
            else:
                assert (r.state, r.reason) == ("suppressed", "duplicate")
            dropped[r.row] = (r.state, r.reason)
        for n, to, text in zip(b.nums, b.numbers, b.texts, strict=True):
            assert n not in dropped and n not in rendered
            rendered[n] = to
            assert text.startswith("【小鹅】") and text.endswith("拒收请回复R")
    assert set(rendered) | set(dropped) == set(range(2, 2 + len(rows)))
    first_row: dict[str, int] = {}
    for i, (valid, (national, _), _) in enumerate(rows):
        if valid:
            first_row.setdefault(national, i + 2)
    for i, (valid, (national, w), _) in enumerate(rows):
        if not valid:
            continue
        if first_row[national] == i + 2:
            assert rendered.get(i + 2) == national, (w, dropped.get(i + 2))
        else:
            assert dropped[i + 2] == ("suppressed", "duplicate")
    assert len(set(rendered.values())) == len(rendered)  # nobody twice


@settings(max_examples=300, deadline=None)
@given(st.one_of(valid_national.flatmap(written), garbage, st.text(max_size=20)))
def test_the_fast_tiers_agree_with_the_full_parser(raw: str) -> None:
    b = Batch([2], [(raw,)], 0)
    Normalize().process(b)
    parsed = parse_phone(raw)
    if parsed.reason is None:
        assert b.numbers == [parsed.national or parsed.e164]
    else:
        assert b.numbers == [] and b.rejects[0].reason == parsed.reason


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_parts_equal_the_pieces_a_splitter_makes(text: str) -> None:
    pieces = split(text)
    assert "".join(pieces) == text
    assert count_parts(text) == len(pieces)
    if len(pieces) > 1:
        enc = "gsm7" if all(units(p, "gsm7") == units(p) for p in pieces) else None
        assert all(units(p, enc) <= (153 if enc == "gsm7" else 67) for p in pieces)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8).map(
                lambda s: s.replace("{", "{{").replace("}", "}}")
            ),
            st.sampled_from(["{a}", "{b|默认}", "{c|}"]),
        ),
        max_size=8,
    ),
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6), min_size=3, max_size=3
    ),
)
def test_compiled_templates_render_exactly_like_the_reference(pieces: list[str], values: list[str]) -> None:
    body = "".join(pieces).strip() or "x"
    t = compile_template(body, signature="S", opt_out_text="R", max_length=5000)
    b = t.bind(["a", "b", "c"])
    assert b.render_rows([tuple(values)]) == [t.render_one(dict(zip("abc", values, strict=True)))]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="ab1 /。券Ｚ-", max_size=5).map(lambda s: s.replace("{", "{{")),
            st.sampled_from(["{a}", "{b|X9}", "{c|码}"]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.text(alphabet="ab1 /。券Ｚ-", max_size=4), min_size=3, max_size=3),
)
def test_the_opt_out_text_is_kept_apart_from_a_body_ending_in_a_letter_or_digit(
    pieces: list[str], values: list[str]
) -> None:
    """Whatever ends the body — literal text, a value or a default — the opt-out text follows it
    directly, with one space between them exactly when the body ends in an ASCII letter or digit."""
    body = "".join(pieces).strip() or "x"
    row = dict(zip("abc", values, strict=True))
    plain = compile_template(body, signature="S", opt_out_text="", max_length=5000)
    with_opt_out = compile_template(body, signature="S", opt_out_text="拒收请回复R", max_length=5000)
    text = plain.render_one(row)
    if body.endswith("拒收请回复R"):
        return
    last = text[-1:]
    want = text + (" " if last.isascii() and last.isalnum() else "") + "拒收请回复R"
    assert with_opt_out.render_one(row) == want
    assert with_opt_out.bind(["a", "b", "c"]).render_rows([tuple(values)]) == [want]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
        ),
        max_size=40,
    )
)
def test_csv_reader_agrees_with_the_stdlib_parser(
    tmp_path_factory: object, rows: list[tuple[str, str]]
) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows([("a", "b"), *rows])
    path = Path(tmp_path_factory.mktemp("csv")) / "s.csv"  # type: ignore[attr-defined]
    path.write_bytes(buf.getvalue().encode("utf-8"))
    # Pigeon reads CRLF line ends inside quoted fields as LF (SMS text uses LF); otherwise the same.
    expected = [
        [f.replace("\r\n", "\n") for f in r] for r in csv.reader(io.StringIO(buf.getvalue(), newline=""))
    ][1:]
    reader = CsvSource(CsvConfig(path=str(path)), SourceContext(base_dir=path.parent)).open(["a", "b"])
    got: list[list[str]] = []
    for batch in reader.batches(7):
        assert not batch.rejects
        got.extend(list(r) for r in batch.rows)
    reader.close()
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["13800138000", "13900139000", "13000130000", "+447911123456", "+12025550143"]),
        max_size=40,
    ),
    st.integers(1, 9),
)
def test_dedupe_is_idempotent_and_keeps_first_occurrences(numbers: list[str], batch_size: int) -> None:
    def run(values: list[str]) -> list[str]:
        d = Dedupe()
        kept: list[str] = []
        for start in range(0, len(values), batch_size):
            chunk = values[start : start + batch_size]
            b = Batch(list(range(len(chunk))), [(v,) for v in chunk], 0)
            b.numbers = list(chunk)
            d.process(b)
            kept += b.numbers
        return kept

    once = run(numbers)
    assert once == list(dict.fromkeys(numbers))
    assert run(once) == once


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            valid_national.flatmap(written),
            garbage,
            st.sampled_from(["+12025550143", "+85251234567", "+447911123456"]),
        ),
        max_size=40,
    ),
    st.floats(0, 7 * 86400),
    st.integers(1, 9),
)
def test_deferral_never_loses_a_message(phones: list[str], offset: float, batch_size: int) -> None:
    """With quiet hours at any moment, every row ends in exactly one state, and every row that
    would be rendered by day is rendered or deferred (with when it can go) — never anything else."""
    from engine.core.clock import FakeClock
    from engine.core.sendwindow import SendWindow
    from engine.pipeline.stages import HoldQuietHours

    bound = compile_template("{name|亲}", signature="小鹅", opt_out_text="拒收请回复R").bind(
        ["phone", "name"]
    )

    def run(quiet: HoldQuietHours | None) -> dict[int, str]:
        stages = standard_stages(bound, TABLE, ALL, quiet_hours=quiet)
        runner = StageRunner(stages)
        states: dict[int, str] = {}
        for start in range(0, len(phones), batch_size):
            chunk = [(p, "") for p in phones[start : start + batch_size]]
            b = runner.run(Batch(list(range(start, start + len(chunk))), chunk, 0))
            for r in b.rejects:
                assert r.row not in states
                states[r.row] = r.state
                if r.state == "deferred":
                    assert "opens" in r.detail
            for n in b.nums:
                assert n not in states
                states[n] = "rendered"
        assert sorted(states) == list(range(len(phones)))
        return states

    day = run(None)
    night = run(HoldQuietHours(SendWindow.parse("08:00-21:00"), FakeClock(1_795_000_000.0 + offset)))
    for row, state in day.items():
        assert night[row] == state or (state == "rendered" and night[row] == "deferred")
