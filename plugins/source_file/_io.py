"""Shared file plumbing for the file sources: open plain or gzip files and read decoded line blocks."""

from __future__ import annotations

import codecs
import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from pigeon import SourceError

__all__ = ["BLOCK_BYTES", "SURROGATE", "check_head", "fraction_read", "open_binary", "resolve", "text_blocks"]

BLOCK_BYTES: Final = 1 << 17
"""Bytes read and decoded at a time: 128 KiB, about 2,500 rows of a typical segment. Small enough
that a block's text, its rows and the batches cut from it stay in the CPU's cache while the stages
run over them (1 MiB blocks made a 1M-row blackhole send about 20% slower), large enough that the
per-block work is noise."""
SURROGATE: Final = re.compile("[\ud800-\udfff]")
"""Undecodable bytes show up as lone surrogates (``surrogateescape``); valid text never has them."""


def resolve(path: str, base_dir: Path) -> Path:
    """A source path relative to the campaign file, checked to exist."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise SourceError(f"segment file not found: {p}")
    return p


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading bytes, transparently un-gzipping when it starts with gzip's magic."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _ascii_compatible(encoding: str) -> bool:
    """Whether newline, comma and quote are single bytes that no multi-byte character contains.

    True for UTF-8, GBK, GB18030, Big5, Shift-JIS, Latin-1…; false for UTF-16/32.
    """
    try:
        return '\n,"\t;|'.encode(encoding) == b'\n,"\t;|' and codecs.lookup(encoding).name not in {
            "utf-16",
            "utf-32",
        }
    except (LookupError, UnicodeError):
        return False


def fraction_read(raw: BinaryIO, total: int) -> float | None:
    """How far into the file reading has got (0–1), from the position in the file on disk (for gzip:
    in the compressed file); None if unknown."""
    inner = getattr(raw, "fileobj", None) or raw
    try:
        return min(1.0, inner.tell() / total) if total else None
    except (OSError, ValueError):
        return None


def text_blocks(raw: BinaryIO, encoding: str) -> Iterator[tuple[str, bool]]:
    """Yield blocks of whole lines (without the final newline) and whether a block had bad bytes.

    Blocks are cut at ``\n``: with CRLF line ends (Excel, Windows) every line keeps its ``\r``.

    Bad bytes never stop the file: the block is decoded again with ``surrogateescape``, so each bad
    byte becomes a lone surrogate that marks its row. For ASCII-compatible encodings the bytes are
    cut at the last newline and decoded strictly in one call (the fast path); other encodings
    (UTF-16/32) go through an incremental decoder.
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SourceError(f"unknown encoding {encoding!r}; try utf-8, gbk, gb18030 or utf-16") from None
    if _ascii_compatible(encoding):
        yield from _byte_blocks(raw, encoding)
    else:
        yield from _decoded_blocks(raw, encoding)


def _read(raw: BinaryIO) -> bytes:
    try:
        return raw.read(BLOCK_BYTES)
    except (OSError, EOFError) as exc:  # truncated or corrupt gzip
        raise SourceError(f"cannot read the segment file: {exc}") from exc


def _decode(data: bytes, encoding: str) -> tuple[str, bool]:
    try:
        return data.decode(encoding), False
    except UnicodeDecodeError:
        return data.decode(encoding, "surrogateescape"), True


_NOT_TEXT: Final = (
    (b"PK\x03\x04", "an Excel workbook (.xlsx) or another zip archive"),
    (b"\xd0\xcf\x11\xe0", "an old Excel workbook (.xls)"),
    (b"%PDF", "a PDF document"),
)


def check_head(head: bytes, encoding: str) -> bool:
    """Refuse, before any row is read, a file that is not text in ``encoding``, saying what to do;
    returns whether its lines end with a lone CR (old Mac exports), to be read as line ends."""
    for magic, what in _NOT_TEXT:
        if head.startswith(magic):
            raise SourceError(
                f"the segment file is {what}, not a CSV or JSON Lines file: open it in Excel or WPS "
                'and save it as "CSV UTF-8 (comma delimited)" (or export the segment again as CSV)'
            )
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (
        head[:200].count(b"\x00") > len(head[:200]) // 4
    ):
        raise SourceError(
            'the segment file is UTF-16 (Excel\'s "Unicode Text" export), not '
            f'{encoding}: set segment.encoding = "utf-16" in the campaign file, or save it as "CSV UTF-8"'
        )
    return b"\r" in head and b"\n" not in head


def _byte_blocks(raw: BinaryIO, encoding: str) -> Iterator[tuple[str, bool]]:
    utf8 = codecs.lookup(encoding).name == "utf-8"
    carry = b""
    first = True
    cr_only = False
    while True:
        chunk = _read(raw)
        if first:
            first = False
            cr_only = check_head(chunk, encoding)
            if utf8 and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[len(codecs.BOM_UTF8) :]
        if cr_only:  # lines end with CR alone: read them as line ends (CR is never inside a character)
            chunk = chunk.replace(b"\r", b"\n")
        if not chunk:
            if carry:
                yield _decode(carry.removesuffix(b"\n"), encoding)
            return
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut == -1:
            carry = data
            continue
        carry = data[cut + 1 :]
        yield _decode(data[:cut], encoding)


def _decoded_blocks(raw: BinaryIO, encoding: str) -> Iterator[tuple[str, bool]]:
    decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
    carry = ""
    while True:
        chunk = _read(raw)
        final = not chunk
        text = carry + decoder.decode(chunk, final)
        if final:
            if text:
                text = text.removesuffix("\n")
                yield text, SURROGATE.search(text) is not None
            return
        cut = text.rfind("\n")
        if cut == -1:
            carry = text
            continue
        carry = text[cut + 1 :]
        block = text[:cut]
        yield block, SURROGATE.search(block) is not None
