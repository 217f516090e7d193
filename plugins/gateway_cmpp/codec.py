"""CMPP 2.0 and 3.0 PDUs in plain ``struct`` code: bytes in, typed PDUs out, and back. No I/O.

Layouts from the CMPP specifications (``reference/protocols-carriers-compliance.md`` §5.2 and
``providers-protocols-scaleout.md`` §2.2): a 12-byte header ``Total_Length, Command_Id,
Sequence_Id`` (big-endian), fixed-length NUL-padded strings, and the differences of 3.0 (32-byte
terminal ids with a type byte, 4-byte status/result fields, ``LinkID`` instead of ``Reserve``).

* ``AuthenticatorSource = MD5(Source_Addr + 9 × 0x00 + shared secret + "MMDDHHMMSS")``, the
  timestamp also sent as the uint32 of those digits; ``Version`` is 0x20 or 0x30 (high nibble
  major, low nibble minor).
* ``AuthenticatorISMG = MD5(Status + AuthenticatorSource + shared secret)``.
* ``Msg_Id`` is 64 bits: month 4 | day 5 | hour 5 | minute 6 | second 6 | gateway code 22 |
  sequence 16 (:func:`pack_msg_id`); it is canonical as its unsigned decimal.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final, NamedTuple

import msgspec

__all__ = [
    "ACTIVE_TEST",
    "CONNECT",
    "DELIVER",
    "HEADER",
    "RESP",
    "SUBMIT",
    "TERMINATE",
    "V2",
    "V3",
    "Connect",
    "ConnectResp",
    "DecodeError",
    "Deliver",
    "Header",
    "MsgId",
    "Report",
    "Submit",
    "SubmitResp",
    "authenticator_ismg",
    "authenticator_source",
    "decode",
    "encode",
    "fixed",
    "pack_msg_id",
    "timestamp",
    "unpack_msg_id",
]

HEADER: Final = struct.Struct(">III")
RESP: Final = 0x80000000
CONNECT: Final = 0x00000001
TERMINATE: Final = 0x00000002
SUBMIT: Final = 0x00000004
DELIVER: Final = 0x00000005
ACTIVE_TEST: Final = 0x00000008

V2: Final = 0x20
V3: Final = 0x30

RESULT_FLOW_CONTROL: Final = 8
"""SUBMIT_RESP result 8: 流量控制错 (too fast)."""


class DecodeError(ValueError):
    """A PDU that does not follow CMPP (the message says what is wrong)."""


def fixed(value: str, n: int, what: str, encoding: str = "ascii") -> bytes:
    """``value`` as a fixed-length field of ``n`` bytes, NUL-padded (ValueError if longer)."""
    raw = value.encode(encoding)
    if len(raw) > n:
        raise ValueError(f"{what} is {len(raw)} bytes; CMPP allows {n}")
    return raw.ljust(n, b"\x00")


def _str(data: bytes) -> str:
    return data.split(b"\x00", 1)[0].decode("ascii", errors="replace")


def timestamp(month: int, day: int, hour: int, minute: int, second: int) -> tuple[str, int]:
    """The CONNECT timestamp as its ``MMDDHHMMSS`` digits and as the uint32 sent."""
    digits = f"{month:02d}{day:02d}{hour:02d}{minute:02d}{second:02d}"
    return digits, int(digits)


def authenticator_source(source_addr: str, secret: str, digits: str) -> bytes:
    """``MD5(Source_Addr + 9 × 0x00 + secret + MMDDHHMMSS)``."""
    return hashlib.md5(
        source_addr.encode("ascii") + b"\x00" * 9 + secret.encode("ascii") + digits.encode("ascii"),
        usedforsecurity=False,
    ).digest()


def authenticator_ismg(status: int, auth_source: bytes, secret: str, version: int) -> bytes:
    """``MD5(Status + AuthenticatorSource + secret)`` (Status as its 1-byte / 4-byte field)."""
    field = status.to_bytes(1 if version < V3 else 4, "big")
    return hashlib.md5(field + auth_source + secret.encode("ascii"), usedforsecurity=False).digest()


class MsgId(NamedTuple):
    """The fields of a 64-bit Msg_Id."""

    month: int
    day: int
    hour: int
    minute: int
    second: int
    gateway: int
    seq: int


def pack_msg_id(m: MsgId) -> int:
    """The 64-bit Msg_Id of ``m``."""
    value = 0
    for field, bits in zip(m, (4, 5, 5, 6, 6, 22, 16), strict=True):
        if not 0 <= field < 1 << bits:
            raise ValueError(f"{field} does not fit in {bits} bits")
        value = (value << bits) | field
    return value


def unpack_msg_id(value: int) -> MsgId:
    """The fields of a 64-bit Msg_Id."""
    seq = value & 0xFFFF
    gateway = (value >> 16) & 0x3FFFFF
    second = (value >> 38) & 0x3F
    minute = (value >> 44) & 0x3F
    hour = (value >> 50) & 0x1F
    day = (value >> 55) & 0x1F
    month = (value >> 60) & 0xF
    return MsgId(month, day, hour, minute, second, gateway, seq)


class Header(msgspec.Struct, gc=False, frozen=True):
    """A PDU whose body this codec does not read (TERMINATE, ACTIVE_TEST and their answers)."""

    command: int
    seq: int


class Connect(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """CMPP_CONNECT."""

    seq: int
    source_addr: str
    authenticator: bytes
    version: int = V3
    timestamp: int = 0


class ConnectResp(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """CMPP_CONNECT_RESP."""

    seq: int
    status: int
    authenticator: bytes = b"\x00" * 16
    version: int = V3


class Submit(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """CMPP_SUBMIT (one destination or several)."""

    seq: int = 0
    msg_id: int = 0
    pk_total: int = 1
    pk_number: int = 1
    registered_delivery: int = 1
    msg_level: int = 0
    service_id: str = ""
    fee_user_type: int = 0
    fee_terminal_id: str = ""
    fee_terminal_type: int = 0
    tp_pid: int = 0
    tp_udhi: int = 0
    msg_fmt: int = 8
    msg_src: str = ""
    fee_type: str = "01"
    fee_code: str = "000000"
    valid_time: str = ""
    at_time: str = ""
    src_id: str = ""
    dest_terminal_ids: list[str] = msgspec.field(default_factory=list)
    dest_terminal_type: int = 0
    content: bytes = b""
    link_id: str = ""


class SubmitResp(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """CMPP_SUBMIT_RESP (also the layout of CMPP_DELIVER_RESP)."""

    seq: int
    msg_id: int
    result: int = 0
    command: int = SUBMIT | RESP


class Report(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """A status report carried in a CMPP_DELIVER's Msg_Content."""

    msg_id: int
    stat: str
    submit_time: str = ""
    done_time: str = ""
    dest_terminal_id: str = ""
    smsc_sequence: int = 0


class Deliver(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """CMPP_DELIVER: an MO message, or a status report when ``registered_delivery`` is 1."""

    seq: int = 0
    msg_id: int = 0
    dest_id: str = ""
    service_id: str = ""
    tp_pid: int = 0
    tp_udhi: int = 0
    msg_fmt: int = 8
    src_terminal_id: str = ""
    src_terminal_type: int = 0
    registered_delivery: int = 0
    content: bytes = b""
    link_id: str = ""


Pdu = Header | Connect | ConnectResp | Submit | SubmitResp | Deliver


def _term(version: int) -> int:
    return 21 if version < V3 else 32


def encode_report(r: Report, version: int = V3) -> bytes:
    """The Msg_Content of a status report (60 bytes in 2.0, 71 in 3.0)."""
    return (
        r.msg_id.to_bytes(8, "big")
        + fixed(r.stat, 7, "Stat")
        + fixed(r.submit_time, 10, "Submit_time")
        + fixed(r.done_time, 10, "Done_time")
        + fixed(r.dest_terminal_id, _term(version), "Dest_terminal_Id")
        + r.smsc_sequence.to_bytes(4, "big")
    )


def decode_report(content: bytes, version: int = V3) -> Report:
    """A status report out of a CMPP_DELIVER's Msg_Content."""
    t = _term(version)
    if len(content) < 8 + 7 + 20 + t + 4:
        raise DecodeError(f"a status report has {8 + 7 + 20 + t + 4} bytes, got {len(content)}")
    return Report(
        msg_id=int.from_bytes(content[:8], "big"),
        stat=_str(content[8:15]),
        submit_time=_str(content[15:25]),
        done_time=_str(content[25:35]),
        dest_terminal_id=_str(content[35 : 35 + t]),
        smsc_sequence=int.from_bytes(content[35 + t : 39 + t], "big"),
    )


def report_view(data: bytes, version: int = V3) -> tuple[int, str, str, str] | None:
    """``(Msg_Id, Stat, Done_time, Dest_terminal_Id)`` of a whole CMPP_DELIVER that carries a
    status report, read in place; None for anything else (an MO, a PDU too short to be one:
    :func:`decode` it, which says what is wrong)."""
    t = _term(version)
    v3 = version >= V3
    reg = 12 + 8 + 21 + 10 + 3 + t + (1 if v3 else 0)
    if len(data) < reg + 2 or data[reg] != 1:
        return None
    n = data[reg + 1]
    if len(data) != reg + 2 + n + (20 if v3 else 8) or n < 8 + 7 + 20 + t + 4:
        return None
    at = reg + 2
    return (
        int.from_bytes(data[at : at + 8], "big"),
        _str(data[at + 8 : at + 15]),
        _str(data[at + 25 : at + 35]),
        _str(data[at + 35 : at + 35 + t]),
    )


def encode(pdu: Pdu, version: int = V3) -> bytes:
    """The bytes of ``pdu`` in CMPP ``version`` (0x20 / 0x30), header included."""
    v3 = version >= V3
    t = _term(version)
    if isinstance(pdu, Header):
        body = b"\x00" if pdu.command == ACTIVE_TEST | RESP else b""
        return HEADER.pack(12 + len(body), pdu.command, pdu.seq) + body
    if isinstance(pdu, Connect):
        body = (
            fixed(pdu.source_addr, 6, "Source_Addr")
            + pdu.authenticator
            + bytes((pdu.version,))
            + pdu.timestamp.to_bytes(4, "big")
        )
        return HEADER.pack(12 + len(body), CONNECT, pdu.seq) + body
    if isinstance(pdu, ConnectResp):
        body = pdu.status.to_bytes(4 if v3 else 1, "big") + pdu.authenticator + bytes((pdu.version,))
        return HEADER.pack(12 + len(body), CONNECT | RESP, pdu.seq) + body
    if isinstance(pdu, SubmitResp):
        body = pdu.msg_id.to_bytes(8, "big") + pdu.result.to_bytes(4 if v3 else 1, "big")
        return HEADER.pack(12 + len(body), pdu.command, pdu.seq) + body
    if isinstance(pdu, Deliver):
        body = b"".join(
            (
                pdu.msg_id.to_bytes(8, "big"),
                fixed(pdu.dest_id, 21, "Dest_Id"),
                fixed(pdu.service_id, 10, "Service_Id"),
                bytes((pdu.tp_pid, pdu.tp_udhi, pdu.msg_fmt)),
                fixed(pdu.src_terminal_id, t, "Src_terminal_Id"),
                bytes((pdu.src_terminal_type,)) if v3 else b"",
                bytes((pdu.registered_delivery, len(pdu.content))),
                pdu.content,
                fixed(pdu.link_id, 20, "LinkID") if v3 else b"\x00" * 8,
            )
        )
        return HEADER.pack(12 + len(body), DELIVER, pdu.seq) + body
    body = submit_body(pdu, version)
    return HEADER.pack(12 + len(body), SUBMIT, pdu.seq) + body


def submit_body(p: Submit, version: int = V3) -> bytes:
    """A CMPP_SUBMIT body (no header)."""
    v3 = version >= V3
    t = _term(version)
    if len(p.content) > 255:
        raise ValueError(f"Msg_Content is {len(p.content)} bytes; at most 255")
    if not 1 <= len(p.dest_terminal_ids) < 100:
        raise ValueError("DestUsr_tl must be 1..99")
    return b"".join(
        (
            p.msg_id.to_bytes(8, "big"),
            bytes((p.pk_total, p.pk_number, p.registered_delivery, p.msg_level)),
            fixed(p.service_id, 10, "Service_Id"),
            bytes((p.fee_user_type,)),
            fixed(p.fee_terminal_id, t, "Fee_terminal_Id"),
            bytes((p.fee_terminal_type,)) if v3 else b"",
            bytes((p.tp_pid, p.tp_udhi, p.msg_fmt)),
            fixed(p.msg_src, 6, "Msg_src"),
            fixed(p.fee_type, 2, "FeeType"),
            fixed(p.fee_code, 6, "FeeCode"),
            fixed(p.valid_time, 17, "ValId_Time"),
            fixed(p.at_time, 17, "At_Time"),
            fixed(p.src_id, 21, "Src_Id"),
            bytes((len(p.dest_terminal_ids),)),
            b"".join(fixed(d, t, "Dest_terminal_Id") for d in p.dest_terminal_ids),
            bytes((p.dest_terminal_type,)) if v3 else b"",
            bytes((len(p.content),)),
            p.content,
            fixed(p.link_id, 20, "LinkID") if v3 else b"\x00" * 8,
        )
    )


class _R:
    __slots__ = ("at", "data")

    def __init__(self, data: bytes, at: int) -> None:
        self.data = data
        self.at = at

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > len(self.data):
            raise DecodeError(f"{what}: the PDU ends early")
        v = self.data[self.at : self.at + n]
        self.at += n
        return v

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def num(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def text(self, n: int, what: str) -> str:
        return _str(self.take(n, what))


def _tail(r: _R, v3: bool) -> str:
    """3.0's LinkID (20), or 2.0's Reserve (8 bytes, dropped)."""
    if v3:
        return r.text(20, "LinkID")
    r.take(8, "Reserve")
    return ""


def decode(data: bytes, version: int = V3) -> Pdu:
    """One whole PDU → its typed form. Raises :class:`DecodeError` on a malformed PDU."""
    if len(data) < 12:
        raise DecodeError(f"a PDU has at least 12 bytes, got {len(data)}")
    length, command, seq = HEADER.unpack_from(data)
    if length != len(data):
        raise DecodeError(f"Total_Length says {length}, the PDU has {len(data)} bytes")
    v3 = version >= V3
    t = _term(version)
    r = _R(data, 12)
    if command == CONNECT:
        return Connect(
            seq=seq,
            source_addr=r.text(6, "Source_Addr"),
            authenticator=r.take(16, "AuthenticatorSource"),
            version=r.byte("Version"),
            timestamp=r.num(4, "Timestamp"),
        )
    if command == CONNECT | RESP:
        wide = length >= 12 + 4 + 16 + 1  # 3.0's Status is 4 bytes (30 vs 33 bytes in all)
        return ConnectResp(
            seq=seq,
            status=r.num(4 if wide else 1, "Status"),
            authenticator=r.take(16, "AuthenticatorISMG"),
            version=r.byte("Version"),
        )
    if command in (SUBMIT | RESP, DELIVER | RESP):
        return SubmitResp(
            command=command,
            seq=seq,
            msg_id=r.num(8, "Msg_Id"),
            result=r.num(4 if length >= 24 else 1, "Result"),
        )
    if command == DELIVER:
        msg_id = r.num(8, "Msg_Id")
        dest_id = r.text(21, "Dest_Id")
        service_id = r.text(10, "Service_Id")
        tp_pid, tp_udhi, fmt = r.byte("TP_pid"), r.byte("TP_udhi"), r.byte("Msg_Fmt")
        src = r.text(t, "Src_terminal_Id")
        src_type = r.byte("Src_terminal_type") if v3 else 0
        reg = r.byte("Registered_Delivery")
        content = r.take(r.byte("Msg_Length"), "Msg_Content")
        link = _tail(r, v3)
        return Deliver(
            seq=seq,
            msg_id=msg_id,
            dest_id=dest_id,
            service_id=service_id,
            tp_pid=tp_pid,
            tp_udhi=tp_udhi,
            msg_fmt=fmt,
            src_terminal_id=src,
            src_terminal_type=src_type,
            registered_delivery=reg,
            content=content,
            link_id=link,
        )
    if command == SUBMIT:
        msg_id = r.num(8, "Msg_Id")
        pk_total, pk_number, reg, level = (
            r.byte("Pk_total"),
            r.byte("Pk_number"),
            r.byte("Registered_Delivery"),
            r.byte("Msg_level"),
        )
        service_id = r.text(10, "Service_Id")
        fee_user_type = r.byte("Fee_UserType")
        fee_terminal = r.text(t, "Fee_terminal_Id")
        fee_type_b = r.byte("Fee_terminal_type") if v3 else 0
        tp_pid, tp_udhi, fmt = r.byte("TP_pId"), r.byte("TP_udhi"), r.byte("Msg_Fmt")
        msg_src = r.text(6, "Msg_src")
        fee_type = r.text(2, "FeeType")
        fee_code = r.text(6, "FeeCode")
        valid = r.text(17, "ValId_Time")
        at_time = r.text(17, "At_Time")
        src_id = r.text(21, "Src_Id")
        dests = [r.text(t, "Dest_terminal_Id") for _ in range(r.byte("DestUsr_tl"))]
        dest_type = r.byte("Dest_terminal_type") if v3 else 0
        content = r.take(r.byte("Msg_Length"), "Msg_Content")
        link = _tail(r, v3)
        return Submit(
            seq=seq,
            msg_id=msg_id,
            pk_total=pk_total,
            pk_number=pk_number,
            registered_delivery=reg,
            msg_level=level,
            service_id=service_id,
            fee_user_type=fee_user_type,
            fee_terminal_id=fee_terminal,
            fee_terminal_type=fee_type_b,
            tp_pid=tp_pid,
            tp_udhi=tp_udhi,
            msg_fmt=fmt,
            msg_src=msg_src,
            fee_type=fee_type,
            fee_code=fee_code,
            valid_time=valid,
            at_time=at_time,
            src_id=src_id,
            dest_terminal_ids=dests,
            dest_terminal_type=dest_type,
            content=content,
            link_id=link,
        )
    return Header(command=command, seq=seq)
