"""Segments cut into byte ranges: read range by range, they give exactly the rows, numbers and rejects
of one reader over the whole file — quoted newlines, blank lines, bad rows and a missing final
newline included — and each range reads only its own bytes."""

from __future__ import annotations

import gzip
import itertools
import random
from pathlib import Path

import pytest

from pigeon import RangedSource, SegmentRange, SourceContext, SourceError
from plugins.source_file.config import CsvConfig, JsonlConfig
from plugins.source_file.csv_source import CsvSource
from plugins.source_file.jsonl_source import JsonlSource


def _csv(path: Path, rows: int, seed: int, *, final_newline: bool = True) -> None:
    rng = random.Random(seed)
    lines = ["phone,name,note"]
    for i in range(rows):
        kind = rng.random()
        if kind < 0.05:
            lines.append("")  # a blank line
        elif kind < 0.1:
            lines.append(f'138{i:08d},"客,{i}","two\nlines ""quoted"""')  # quotes across a newline
        elif kind < 0.13:
            lines.append(f"138{i:08d},only-two")  # malformed: two columns
        else:
            lines.append(f"138{i:08d},客{i},x")
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_text(text, encoding="utf-8")


def _read_all(
    source: RangedSource, parts: list[SegmentRange] | None
) -> tuple[list[int], list[tuple[str, ...]], list[tuple[int, str]]]:
    nums: list[int] = []
    rows: list[tuple[str, ...]] = []
    rejects: list[tuple[int, str]] = []
    readers = (
        [source.open_range(["phone", "name"], p) for p in parts]
        if parts is not None
        else [source.open(["phone", "name"])]
    )  # type: ignore[attr-defined]
    for reader in readers:
        try:
            for b in reader.batches(64):
                nums += b.nums
                rows += [tuple(r) for r in b.rows]
                rejects += [(r.row, r.reason) for r in b.rejects]
            if parts is not None:
                assert reader.fraction_read() == 1.0
        finally:
            reader.close()
    return nums, rows, rejects


@pytest.mark.parametrize("target", [1, 97, 1000, 10**9])
@pytest.mark.parametrize("final_newline", [True, False])
def test_csv_ranges_read_as_the_whole_file(tmp_path: Path, target: int, final_newline: bool) -> None:
    path = tmp_path / "seg.csv"
    _csv(path, 600, seed=target, final_newline=final_newline)
    source = CsvSource(CsvConfig(path=str(path)), SourceContext(tmp_path))
    parts = source.ranges(target)
    assert [p.index for p in parts] == list(range(len(parts)))
    assert parts[0].first_row == 2 and parts[-1].end == path.stat().st_size
    for a, b in itertools.pairwise(parts):  # back to back, no row twice
        assert a.end == b.start and a.first_row + a.rows == b.first_row
    if target == 1:
        assert len(parts) > 500, "a tiny target cuts at every row that ends outside quotes"
    whole = _read_all(source, None)
    assert _read_all(source, parts) == whole
    assert whole[2], "the segment has malformed rows, numbered"
    assert sum(p.rows for p in parts) >= len(whole[0]) + len(whole[2])


def test_a_range_never_starts_inside_a_quoted_field(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text(
        'phone,name,note\n13800000001,a,"x\n13800000002,b,y\n"\n13800000003,c,z\n', encoding="utf-8"
    )
    parts = CsvSource(CsvConfig(path=str(path)), SourceContext(tmp_path)).ranges(1)
    assert [(p.first_row, p.rows) for p in parts] == [(2, 1), (3, 1)]  # the quoted row is one row


@pytest.mark.parametrize("target", [1, 300, 10**9])
def test_jsonl_ranges_read_as_the_whole_file(tmp_path: Path, target: int) -> None:
    path = tmp_path / "seg.jsonl"
    lines = [
        "" if i % 37 == 0 else "{not json" if i % 41 == 0 else f'{{"phone": "138{i:08d}", "name": "客{i}"}}'
        for i in range(500)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = JsonlSource(JsonlConfig(path=str(path)), SourceContext(tmp_path))
    parts = source.ranges(target)
    assert parts[0].first_row == 1
    assert _read_all(source, parts) == _read_all(source, None)


def test_a_compressed_segment_is_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("phone\n13800000001\n")
    with pytest.raises(SourceError, match="gzip"):
        CsvSource(CsvConfig(path=str(path)), SourceContext(tmp_path)).ranges(100)


def test_a_header_alone_has_no_ranges(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text("phone,name\n", encoding="utf-8")
    assert CsvSource(CsvConfig(path=str(path)), SourceContext(tmp_path)).ranges(100) == []


def _from(
    got: tuple[list[int], list[tuple[str, ...]], list[tuple[int, str]]], row: int
) -> tuple[object, ...]:
    nums, rows, rejects = got
    keep = [i for i, n in enumerate(nums) if n >= row]
    return [nums[i] for i in keep], [rows[i] for i in keep], [r for r in rejects if r[0] >= row]


@pytest.mark.parametrize("final_newline", [True, False])
def test_the_rest_of_a_range_from_any_row_reads_as_the_whole_range_from_there(
    tmp_path: Path, final_newline: bool
) -> None:
    """Where a reclaimed range resumes (issue 17): from every row of a range — quoted newlines, blank
    and malformed rows, no final newline — the rest starts on that row's first byte and reads the
    rows, numbers and rejects of the whole range from that row on."""
    path = tmp_path / "seg.csv"
    _csv(path, 200, seed=7, final_newline=final_newline)
    source = CsvSource(CsvConfig(path=str(path)), SourceContext(tmp_path))
    (part,) = source.ranges(10**9)
    whole = _read_all(source, [part])
    for row in range(part.first_row, part.first_row + part.rows + 1):
        rest = source.rest_of(part, row)
        assert (rest.index, rest.end, rest.first_row) == (part.index, part.end, row)
        assert rest.first_row + rest.rows == part.first_row + part.rows
        assert _read_all(source, [rest]) == _from(whole, row), row
    with pytest.raises(ValueError, match="not within"):
        source.rest_of(part, part.first_row + part.rows + 1)
    jpath = tmp_path / "seg.jsonl"
    jpath.write_text(
        "".join(f'{{"phone": "138{i:08d}", "name": "x"}}\n' if i % 9 else "\n" for i in range(90))
    )
    jsource = JsonlSource(JsonlConfig(path=str(jpath)), SourceContext(tmp_path))
    (jpart,) = jsource.ranges(10**9)
    jwhole = _read_all(jsource, [jpart])
    for row in (1, 2, 9, 10, 45, 90, 91):
        assert _read_all(jsource, [jsource.rest_of(jpart, row)]) == _from(jwhole, row)
