"""Shared file plumbing for the file sources: open plain or gzip files and read decoded line blocks."""

from __future__ import annotations

import codecs
import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from engine.errors import SourceError

__all__ = ["BLOCK_BYTES", "SURROGATE", "open_binary", "resolve", "text_blocks"]

BLOCK_BYTES: Final = 1 << 20
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
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    raw.seek(0)
    return raw


def text_blocks(raw: BinaryIO, encoding: str) -> Iterator[tuple[str, bool]]:
    """Yield blocks of whole lines (without the final newline) and whether a block had bad bytes.

    Decoding is incremental (a multi-byte character may straddle two reads) and uses
    ``surrogateescape``, so a bad byte marks its row instead of stopping the file.
    """
    enc = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        decoder = codecs.getincrementaldecoder(enc)(errors="surrogateescape")
    except LookupError:
        raise SourceError(f"unknown encoding {encoding!r}") from None
    carry = ""
    while True:
        try:
            chunk = raw.read(BLOCK_BYTES)
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip
            raise SourceError(f"cannot read the segment file: {exc}") from exc
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
