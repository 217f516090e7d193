"""File sources: encodings, gzip, line ends, quoting, bad rows with their row numbers, flat memory."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from engine.core.errors import SourceError
from engine.core.messages import Reject, RejectReason
from engine.pipeline.source import SourceContext
from plugins.source_file import _io
from plugins.source_file.config import CsvConfig, JsonlConfig
from plugins.source_file.csv_source import CsvSource
from plugins.source_file.jsonl_source import JsonlSource

pytestmark = pytest.mark.usefixtures("kernels")  # on the compiled kernels and the pure twins

Write = Callable[[str, str | bytes], Path]


def read_csv(
    path: Path, fields: Sequence[str] = (), size: int = 4096, **cfg: str
) -> tuple[list[str], list[tuple[int, tuple[str, ...]]], list[Reject]]:
    src = CsvSource(CsvConfig(path=str(path), **cfg), SourceContext(base_dir=path.parent))  # type: ignore[arg-type]
    reader = src.open(fields)
    rows: list[tuple[int, tuple[str, ...]]] = []
    rejects: list[Reject] = []
    try:
        for b in reader.batches(size):
            assert len(b.nums) == len(b.rows)
            rows.extend(zip(b.nums, (tuple(r) for r in b.rows), strict=True))
            rejects.extend(b.rejects)
    finally:
        reader.close()
    return list(reader.columns), rows, rejects


def read_jsonl(path: Path, fields: Sequence[str]) -> tuple[list[tuple[int, tuple[str, ...]]], list[Reject]]:
    reader = JsonlSource(JsonlConfig(path=str(path)), SourceContext(base_dir=path.parent)).open(fields)
    rows: list[tuple[int, tuple[str, ...]]] = []
    rejects: list[Reject] = []
    for b in reader.batches(4096):
        rows.extend(zip(b.nums, (tuple(r) for r in b.rows), strict=True))
        rejects.extend(b.rejects)
    reader.close()
    return rows, rejects


SIMPLE = "phone,name,coupon\n13800138000,张伟,20\n13900139000,王芳,50\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030", "utf-16"])
def test_encodings(write: Write, encoding: str) -> None:
    f = write("s.csv", SIMPLE.encode(encoding))
    cfg_enc = "utf-8" if encoding == "utf-8-sig" else encoding
    cols, rows, rejects = read_csv(f, encoding=cfg_enc)
    assert cols == ["phone", "name", "coupon"]
    assert rows == [(2, ("13800138000", "张伟", "20")), (3, ("13900139000", "王芳", "50"))]
    assert rejects == []


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("compress", [False, True])
def test_line_ends_and_gzip(write: Write, newline: str, compress: bool) -> None:
    data = SIMPLE.replace("\n", newline).encode()
    f = write("s.csv.gz" if compress else "s.csv", gzip.compress(data) if compress else data)
    _, rows, rejects = read_csv(f)
    assert [r[1] for r in rows] == [("13800138000", "张伟", "20"), ("13900139000", "王芳", "50")]
    assert rejects == []


def test_projection_keeps_only_requested_fields_in_request_order(write: Write) -> None:
    f = write("s.csv", "a,phone,b,name\n1,13800138000,2,张伟\n")
    cols, rows, _ = read_csv(f, fields=["phone", "name", "phone"])
    assert cols == ["phone", "name"]
    assert rows == [(2, ("13800138000", "张伟"))]
    cols, rows, _ = read_csv(f, fields=["phone", "nope"])  # unknown field: expose the header
    assert cols == ["a", "phone", "b", "name"]


def test_quoted_fields_with_commas_quotes_and_newlines_count_as_one_row(write: Write) -> None:
    f = write(
        "s.csv",
        'phone,name,note\r\n13800138000,"张,伟","say ""hi""\r\nsecond line"\r\n13900139000,王芳,x\r\n',
    )
    _, rows, rejects = read_csv(f, fields=["phone", "name", "note"])
    assert rows == [
        (2, ("13800138000", "张,伟", 'say "hi"\nsecond line')),
        (3, ("13900139000", "王芳", "x")),
    ]
    assert rejects == []


def test_bad_rows_are_rejected_with_their_row_number_and_the_rest_goes_on(write: Write) -> None:
    content = (
        b"phone,name,coupon\r\n"
        b"13800138000,A,1\r\n"
        b"13800138001,B\r\n"  # row 3: one column short
        b"13800138002,C,3,extra\r\n"  # row 4: one too many
        b"13800138003,D,4,,\r\n"  # row 5: trailing empty cells (spreadsheet): fine
        b"\r\n"  # row 6: blank: nobody on it
        b"13800138004,\xff\xfe,5\r\n"  # row 7: not UTF-8
        b"13800138005,F,6\r\n"
    )
    f = write("s.csv", content)
    _, rows, rejects = read_csv(f, fields=["phone", "name", "coupon"])
    assert [n for n, _ in rows] == [2, 5, 8]
    assert rows[1] == (5, ("13800138003", "D", "4"))
    assert [(r.row, r.reason) for r in rejects] == [
        (3, RejectReason.MALFORMED_ROW),
        (4, RejectReason.MALFORMED_ROW),
        (7, RejectReason.UNDECODABLE),
    ]
    assert "expected 3 columns, found 2" in rejects[0].detail
    assert "segment.encoding" in rejects[2].detail


def test_a_gbk_file_read_as_utf8_rejects_rows_but_a_gbk_header_says_what_to_set(write: Write) -> None:
    f = write("s.csv", "手机,姓名\n13800138000,张伟\n".encode("gbk"))
    with pytest.raises(SourceError, match=re.escape('segment.encoding (e.g. "gbk"')):
        read_csv(f)
    g = write("t.csv", b"phone,name\n" + "13800138000,张伟\n".encode("gbk") + b"13900139000,ok\n")
    _, rows, rejects = read_csv(g)
    assert rows == [(3, ("13900139000", "ok"))]
    assert [(r.row, r.reason) for r in rejects] == [(2, RejectReason.UNDECODABLE)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"phone,name,phone\n1,2,3\n", "twice: phone"),
        (b",,\n1,2,3\n", "header row is empty"),
    ],
)
def test_unusable_headers_fail_before_any_row(write: Write, content: bytes, message: str) -> None:
    f = write("s.csv", content)
    with pytest.raises(SourceError, match=message):
        read_csv(f)


def test_missing_file_and_unknown_encoding(tmp_path: Path, write: Write) -> None:
    with pytest.raises(SourceError, match="not found"):
        CsvSource(CsvConfig(path="nope.csv"), SourceContext(base_dir=tmp_path))
    f = write("s.csv", SIMPLE)
    with pytest.raises(SourceError, match="unknown encoding 'klingon'"):
        read_csv(f, encoding="klingon")


def test_truncated_gzip_is_a_clear_error(write: Write) -> None:
    data = gzip.compress((SIMPLE * 1000).encode())
    f = write("s.csv.gz", data[: len(data) // 2])
    with pytest.raises(SourceError, match="cannot read the segment file"):
        read_csv(f)


def test_blocks_boundaries_never_split_rows_or_characters(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny blocks: rows, multi-byte characters and quoted newlines all straddle block boundaries."""
    monkeypatch.setattr(_io, "BLOCK_BYTES", 7)
    lines = ["phone,name,note"]
    expected = []
    for i in range(300):
        note = f'"多行\n备注{i}"' if i % 7 == 0 else f"备注{i}"
        lines.append(f"138{i:08d},名字{i},{note}")
        expected.append((i + 2, (f"138{i:08d}", f"名字{i}", note.strip('"'))))
    for encoding in ("utf-8", "gbk", "utf-16"):
        f = write(f"s-{encoding}.csv", ("\r\n".join(lines) + "\r\n").encode(encoding))
        _, rows, rejects = read_csv(f, fields=["phone", "name", "note"], size=16, encoding=encoding)
        assert rejects == []
        assert rows == expected, encoding


def test_batches_respect_the_size(write: Write) -> None:
    f = write("s.csv", "phone\n" + "".join(f"138{i:08d}\n" for i in range(1000)))
    src = CsvSource(CsvConfig(path=str(f)), SourceContext(base_dir=f.parent))
    reader = src.open(["phone"])
    sizes = [len(b.nums) for b in reader.batches(128)]
    reader.close()
    assert sum(sizes) == 1000
    assert max(sizes) <= 128


def test_memory_stays_flat_in_the_file_size(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io, "BLOCK_BYTES", 1 << 16)  # many blocks even in a small file

    def peak(rows: int) -> int:
        f = write(f"m{rows}.csv", "phone,name,coupon\n" + "13800138000,张伟伟,20\n" * rows)
        tracemalloc.start()
        try:
            src = CsvSource(CsvConfig(path=str(f)), SourceContext(base_dir=f.parent))
            reader = src.open(["phone", "name", "coupon"])
            n = sum(len(b.nums) for b in reader.batches(4096))
            reader.close()
            assert n == rows
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(20_000), peak(200_000)  # 0.5 MB vs 5 MB of CSV
    assert large < small * 1.3, (small, large)
    assert large < 8_000_000, large


def test_jsonl_projects_fields_and_writes_values_as_text(write: Write) -> None:
    lines = [
        {"phone": 13800138000, "name": "张伟", "coupon": 20, "vip": True},
        {"phone": "13900139000", "coupon": 5.5, "name": None},
        {"phone": "13700137000", "name": {"first": "A"}, "coupon": [1, 2]},
    ]
    f = write("s.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    rows, rejects = read_jsonl(f, ["phone", "name", "coupon", "vip"])
    assert rejects == []
    assert rows == [
        (1, ("13800138000", "张伟", "20", "true")),
        (2, ("13900139000", "", "5.5", "")),
        (3, ("13700137000", '{"first":"A"}', "[1,2]", "")),
    ]


def test_jsonl_bad_lines_are_rejected_with_their_line_number(write: Write) -> None:
    content = (
        b'{"phone": "13800138000"}\n'
        b"{not json\n"
        b"\n"  # blank: nobody on it
        b'["a", "list"]\n'
        b'{"phone": "\xff"}\r\n'
        b'{"phone": "13900139000"}\r\n'
    )
    f = write("s.jsonl.gz", gzip.compress(content))
    rows, rejects = read_jsonl(f, ["phone"])
    assert rows == [(1, ("13800138000",)), (6, ("13900139000",))]
    assert [(r.row, r.reason) for r in rejects] == [
        (2, RejectReason.MALFORMED_ROW),
        (4, RejectReason.MALFORMED_ROW),
        (5, RejectReason.UNDECODABLE),
    ]
