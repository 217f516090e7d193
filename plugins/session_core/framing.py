"""Length-prefixed framing shared by SMPP, CMPP, SGIP and SMGP: bytes in, whole PDUs out."""

from __future__ import annotations

__all__ = ["Framer", "FramingError"]


class FramingError(ValueError):
    """The peer sent a length that no valid PDU has: the connection cannot be read any further."""


class Framer:
    """Cuts a byte stream into PDUs whose first four bytes are their big-endian total length.

    Sans-IO: :meth:`feed` takes whatever the socket gave and returns the complete PDUs in it
    (header included); an incomplete tail is kept for the next call. A length below
    ``min_length`` or above ``max_length`` raises :class:`FramingError`.
    """

    __slots__ = ("_rest", "max_length", "min_length")

    def __init__(self, min_length: int, max_length: int) -> None:
        if not 4 <= min_length <= max_length:
            raise ValueError("need 4 <= min_length <= max_length")
        self.min_length = min_length
        self.max_length = max_length
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The PDUs completed by ``data``, in order."""
        if self._rest:
            data = self._rest + data
        out: list[bytes] = []
        end = len(data)
        at = 0
        lo, hi = self.min_length, self.max_length
        while end - at >= 4:
            n = int.from_bytes(data[at : at + 4], "big")
            if n < lo or n > hi:
                self._rest = b""
                raise FramingError(f"PDU length {n} outside {lo}..{hi}")
            if end - at < n:
                break
            out.append(data[at : at + n])
            at += n
        self._rest = data[at:] if at < end else b""
        return out

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a PDU."""
        return len(self._rest)
