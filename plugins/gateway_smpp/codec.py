"""SMPP 3.4 PDUs in plain ``struct`` code: bytes in, typed PDUs out, and back. No I/O.

Layouts from the SMPP 3.4 specification (``reference/protocols-carriers-compliance.md`` §5.1):
a 16-byte header ``command_length, command_id, command_status, sequence_number`` (big-endian),
C-octet strings (NUL-terminated), and optional TLVs ``tag(2) length(2) value`` after the
mandatory fields. :func:`decode` reads any PDU this gateway meets; :func:`encode` writes one;
:class:`SubmitTemplate` builds submit_sm bodies with the per-gateway constant fields precomputed
(the hot path).
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

__all__ = [
    "BIND_RECEIVER",
    "BIND_TRANSCEIVER",
    "BIND_TRANSMITTER",
    "DELIVER_SM",
    "ENQUIRE_LINK",
    "ESME_RTHROTTLED",
    "GENERIC_NACK",
    "HEADER",
    "RESP",
    "SUBMIT_SM",
    "UNBIND",
    "Bind",
    "BindResp",
    "DecodeError",
    "Header",
    "MessageResp",
    "ShortMessage",
    "SubmitTemplate",
    "decode",
    "encode",
    "read_tlvs",
    "receipt_view",
]

HEADER: Final = struct.Struct(">IIII")
_TLV: Final = struct.Struct(">HH")

RESP: Final = 0x80000000
GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_TRANSMITTER: Final = 0x00000002
QUERY_SM: Final = 0x00000003
SUBMIT_SM: Final = 0x00000004
DELIVER_SM: Final = 0x00000005
UNBIND: Final = 0x00000006
BIND_TRANSCEIVER: Final = 0x00000009
OUTBIND: Final = 0x0000000B
ENQUIRE_LINK: Final = 0x00000015
DATA_SM: Final = 0x00000103

ESME_ROK: Final = 0x00
ESME_RINVMSGLEN: Final = 0x01
ESME_RINVCMDLEN: Final = 0x02
ESME_RINVCMDID: Final = 0x03
ESME_RINVBNDSTS: Final = 0x04
ESME_RALYBND: Final = 0x05
ESME_RSYSERR: Final = 0x08
ESME_RINVSRCADR: Final = 0x0A
ESME_RINVDSTADR: Final = 0x0B
ESME_RBINDFAIL: Final = 0x0D
ESME_RINVPASWD: Final = 0x0E
ESME_RINVSYSID: Final = 0x0F
ESME_RMSGQFUL: Final = 0x14
ESME_RSUBMITFAIL: Final = 0x45
ESME_RTHROTTLED: Final = 0x58
ESME_RUNKNOWNERR: Final = 0xFF

TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_SAR_MSG_REF_NUM: Final = 0x020C
TLV_SAR_TOTAL_SEGMENTS: Final = 0x020E
TLV_SAR_SEGMENT_SEQNUM: Final = 0x020F
TLV_NETWORK_ERROR_CODE: Final = 0x0423
TLV_MESSAGE_PAYLOAD: Final = 0x0424
TLV_MESSAGE_STATE: Final = 0x0427

ESM_UDHI: Final = 0x40
ESM_RECEIPT: Final = 0x04
"""Message type bits 5-2 equal to 1: an SMSC delivery receipt."""

Tlvs = list[tuple[int, bytes]]


class DecodeError(ValueError):
    """A PDU that does not follow SMPP 3.4 (the message says what is wrong)."""


class Header(msgspec.Struct, gc=False, frozen=True):
    """A PDU with no body this gateway reads (enquire_link, unbind, generic_nack, their answers)."""

    command: int
    seq: int
    status: int = 0


class Bind(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """bind_transmitter / bind_receiver / bind_transceiver."""

    command: int = BIND_TRANSCEIVER
    seq: int
    system_id: str
    password: str
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


class BindResp(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """The answer to a bind."""

    command: int
    seq: int
    status: int = 0
    system_id: str = ""
    tlvs: Tlvs = msgspec.field(default_factory=list)


class ShortMessage(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """submit_sm or deliver_sm (same layout)."""

    command: int = SUBMIT_SM
    seq: int = 0
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: Tlvs = msgspec.field(default_factory=list)

    def tlv(self, tag: int) -> bytes | None:
        """The value of the first TLV ``tag`` (None if absent)."""
        for t, v in self.tlvs:
            if t == tag:
                return v
        return None


class MessageResp(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """submit_sm_resp / deliver_sm_resp."""

    command: int
    seq: int
    status: int = 0
    message_id: str = ""


Pdu = Header | Bind | BindResp | ShortMessage | MessageResp


def _cstr(value: str, limit: int, what: str) -> bytes:
    raw = value.encode("latin-1")
    if len(raw) >= limit:
        raise ValueError(f"{what} is {len(raw)} bytes; SMPP allows {limit - 1}")
    return raw + b"\x00"


def _tlv_bytes(tlvs: Tlvs) -> bytes:
    return b"".join(_TLV.pack(tag, len(v)) + v for tag, v in tlvs)


def encode(pdu: Pdu) -> bytes:
    """The bytes of ``pdu`` (header included)."""
    if isinstance(pdu, Header):
        return HEADER.pack(16, pdu.command, pdu.status, pdu.seq)
    if isinstance(pdu, Bind):
        body = b"".join(
            (
                _cstr(pdu.system_id, 16, "system_id"),
                _cstr(pdu.password, 9, "password"),
                _cstr(pdu.system_type, 13, "system_type"),
                bytes((pdu.interface_version, pdu.addr_ton, pdu.addr_npi)),
                _cstr(pdu.address_range, 41, "address_range"),
            )
        )
        return HEADER.pack(16 + len(body), pdu.command, 0, pdu.seq) + body
    if isinstance(pdu, BindResp):
        body = _cstr(pdu.system_id, 16, "system_id") + _tlv_bytes(pdu.tlvs)
        return HEADER.pack(16 + len(body), pdu.command, pdu.status, pdu.seq) + body
    if isinstance(pdu, MessageResp):
        body = _cstr(pdu.message_id, 65, "message_id")
        return HEADER.pack(16 + len(body), pdu.command, pdu.status, pdu.seq) + body
    body = _sm_body(pdu)
    return HEADER.pack(16 + len(body), pdu.command, 0, pdu.seq) + body


def _sm_body(p: ShortMessage) -> bytes:
    if len(p.short_message) > 254:
        raise ValueError(f"short_message is {len(p.short_message)} bytes; at most 254 (use message_payload)")
    return b"".join(
        (
            _cstr(p.service_type, 6, "service_type"),
            bytes((p.source_addr_ton, p.source_addr_npi)),
            _cstr(p.source_addr, 21, "source_addr"),
            bytes((p.dest_addr_ton, p.dest_addr_npi)),
            _cstr(p.destination_addr, 21, "destination_addr"),
            bytes((p.esm_class, p.protocol_id, p.priority_flag)),
            _cstr(p.schedule_delivery_time, 17, "schedule_delivery_time"),
            _cstr(p.validity_period, 17, "validity_period"),
            bytes(
                (
                    p.registered_delivery,
                    p.replace_if_present_flag,
                    p.data_coding,
                    p.sm_default_msg_id,
                    len(p.short_message),
                )
            ),
            p.short_message,
            _tlv_bytes(p.tlvs),
        )
    )


class _Reader:
    __slots__ = ("at", "data", "end")

    def __init__(self, data: bytes, at: int) -> None:
        self.data = data
        self.at = at
        self.end = len(data)

    def cstr(self, limit: int, what: str) -> str:
        nul = self.data.find(b"\x00", self.at, min(self.end, self.at + limit))
        if nul < 0:
            raise DecodeError(f"{what}: no NUL within {limit} bytes")
        value = self.data[self.at : nul].decode("latin-1")
        self.at = nul + 1
        return value

    def byte(self, what: str) -> int:
        if self.at >= self.end:
            raise DecodeError(f"{what}: PDU ends early")
        b = self.data[self.at]
        self.at += 1
        return b

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > self.end:
            raise DecodeError(f"{what}: {n} bytes announced, {self.end - self.at} left")
        v = self.data[self.at : self.at + n]
        self.at += n
        return v


def read_tlvs(data: bytes, at: int) -> Tlvs:
    """The TLVs from ``at`` to the end of ``data``."""
    out: Tlvs = []
    end = len(data)
    while at < end:
        if at + 4 > end:
            raise DecodeError("TLV header cut short")
        tag, n = _TLV.unpack_from(data, at)
        at += 4
        if at + n > end:
            raise DecodeError(f"TLV {tag:#06x}: {n} bytes announced, {end - at} left")
        out.append((tag, data[at : at + n]))
        at += n
    return out


def decode(data: bytes) -> Pdu:
    """One whole PDU → its typed form. Raises :class:`DecodeError` on a malformed PDU."""
    if len(data) < 16:
        raise DecodeError(f"a PDU has at least 16 bytes, got {len(data)}")
    length, command, status, seq = HEADER.unpack_from(data)
    if length != len(data):
        raise DecodeError(f"command_length says {length}, the PDU has {len(data)} bytes")
    if command in (SUBMIT_SM, DELIVER_SM):
        return _short_message(data, command, seq)
    if command in (SUBMIT_SM | RESP, DELIVER_SM | RESP):
        # an error answer may come without a body at all
        mid = data[16:].split(b"\x00", 1)[0].decode("latin-1") if length > 16 else ""
        return MessageResp(command=command, seq=seq, status=status, message_id=mid)
    if command in (BIND_TRANSCEIVER, BIND_TRANSMITTER, BIND_RECEIVER):
        r = _Reader(data, 16)
        return Bind(
            command=command,
            seq=seq,
            system_id=r.cstr(16, "system_id"),
            password=r.cstr(9, "password"),
            system_type=r.cstr(13, "system_type"),
            interface_version=r.byte("interface_version"),
            addr_ton=r.byte("addr_ton"),
            addr_npi=r.byte("addr_npi"),
            address_range=r.cstr(41, "address_range"),
        )
    if command in (BIND_TRANSCEIVER | RESP, BIND_TRANSMITTER | RESP, BIND_RECEIVER | RESP):
        if length == 16:
            return BindResp(command=command, seq=seq, status=status)
        r = _Reader(data, 16)
        sid = r.cstr(16, "system_id")
        return BindResp(command=command, seq=seq, status=status, system_id=sid, tlvs=read_tlvs(data, r.at))
    return Header(command=command, seq=seq, status=status)


def _short_message(d: bytes, command: int, seq: int) -> ShortMessage:
    """submit_sm / deliver_sm fields, read inline (the receipts' path: no reader object)."""
    try:
        e1 = d.index(0, 16, 22)
        e2 = d.index(0, e1 + 3, e1 + 24)
        e3 = d.index(0, e2 + 3, e2 + 24)
        at = e3 + 4
        e4 = d.index(0, at, at + 17)
        e5 = d.index(0, e4 + 1, e4 + 18)
    except ValueError:
        raise DecodeError("a C-octet string of submit_sm/deliver_sm has no NUL within its size") from None
    at = e5 + 1
    if at + 5 > len(d):
        raise DecodeError("submit_sm/deliver_sm ends early")
    n = d[at + 4]
    end = at + 5 + n
    if end > len(d):
        raise DecodeError(f"short_message: {n} bytes announced, {len(d) - at - 5} left")
    return ShortMessage(
        command=command,
        seq=seq,
        service_type=d[16:e1].decode("latin-1"),
        source_addr_ton=d[e1 + 1],
        source_addr_npi=d[e1 + 2],
        source_addr=d[e1 + 3 : e2].decode("latin-1"),
        dest_addr_ton=d[e2 + 1],
        dest_addr_npi=d[e2 + 2],
        destination_addr=d[e2 + 3 : e3].decode("latin-1"),
        esm_class=d[e3 + 1],
        protocol_id=d[e3 + 2],
        priority_flag=d[e3 + 3],
        schedule_delivery_time=d[e3 + 4 : e4].decode("latin-1"),
        validity_period=d[e4 + 1 : e5].decode("latin-1"),
        registered_delivery=d[at],
        replace_if_present_flag=d[at + 1],
        data_coding=d[at + 2],
        sm_default_msg_id=d[at + 3],
        short_message=d[at + 5 : end],
        tlvs=read_tlvs(d, end) if end < len(d) else [],
    )


def receipt_view(d: bytes) -> tuple[int, str, bytes, bytes | None, bytes | None] | None:
    """What a receipt reader needs of a deliver_sm, without building a :class:`ShortMessage`.

    ``(esm_class, source_addr, text, receipted_message_id, message_state)`` when ``esm_class``
    says it is an SMSC delivery receipt (``text``: short_message, else the message_payload TLV;
    the TLVs are None when absent), None when it is not one (an MO: :func:`decode` it). Raises
    :class:`DecodeError` on a malformed PDU, as :func:`decode` does.
    """
    try:
        e1 = d.index(0, 16, 22)
        e2 = d.index(0, e1 + 3, e1 + 24)
        e3 = d.index(0, e2 + 3, e2 + 24)
        esm = d[e3 + 1]
        if (esm & 0x3C) != ESM_RECEIPT:
            return None
        at = e3 + 4
        e4 = d.index(0, at, at + 17)
        e5 = d.index(0, e4 + 1, e4 + 18)
    except (ValueError, IndexError):
        raise DecodeError("a C-octet string of deliver_sm has no NUL within its size") from None
    at = e5 + 1
    size = len(d)
    if at + 5 > size:
        raise DecodeError("deliver_sm ends early")
    end = at + 5 + d[at + 4]
    if end > size:
        raise DecodeError(f"short_message: {d[at + 4]} bytes announced, {size - at - 5} left")
    text = d[at + 5 : end]
    rid = state = None
    while end < size:
        if end + 4 > size:
            raise DecodeError("TLV header cut short")
        tag, n = _TLV.unpack_from(d, end)
        end += 4
        if end + n > size:
            raise DecodeError(f"TLV {tag:#06x}: {n} bytes announced, {size - end} left")
        if tag == TLV_RECEIPTED_MESSAGE_ID and rid is None:
            rid = d[end : end + n]
        elif tag == TLV_MESSAGE_STATE and state is None:
            state = d[end : end + n]
        elif tag == TLV_MESSAGE_PAYLOAD and not text:
            text = d[end : end + n]
        end += n
    return esm, d[e1 + 3 : e2].decode("latin-1"), text, rid, state


class SubmitTemplate:
    """submit_sm bodies with the gateway's constant fields encoded once.

    ``body(dest, payload, esm_class, data_coding, tlvs)`` costs one ``bytes.join``.
    """

    __slots__ = ("_mid", "_pre", "_reg")

    def __init__(
        self,
        *,
        service_type: str = "",
        source_addr: str = "",
        source_ton: int = 0,
        source_npi: int = 0,
        dest_ton: int = 1,
        dest_npi: int = 1,
        protocol_id: int = 0,
        priority_flag: int = 0,
        validity_period: str = "",
        registered_delivery: int = 1,
    ) -> None:
        self._pre = (
            _cstr(service_type, 6, "service_type")
            + bytes((source_ton, source_npi))
            + _cstr(source_addr, 21, "source_addr")
            + bytes((dest_ton, dest_npi))
        )
        self._mid = (protocol_id, priority_flag)
        self._reg = b"\x00" + _cstr(validity_period, 17, "validity_period") + bytes((registered_delivery, 0))

    def body(
        self, dest: str, payload: bytes, esm_class: int = 0, data_coding: int = 0, tlvs: bytes = b""
    ) -> bytes:
        """A submit_sm body (no header) to ``dest`` carrying ``payload`` (≤ 254 bytes)."""
        pid, prio = self._mid
        return b"".join(
            (
                self._pre,
                dest.encode("ascii"),
                bytes((0, esm_class, pid, prio)),
                self._reg,
                bytes((data_coding, 0, len(payload))),
                payload,
                tlvs,
            )
        )

    @staticmethod
    def pdu(seq: int, body: bytes) -> bytes:
        """The whole submit_sm: header with ``seq``, then ``body``."""
        return HEADER.pack(16 + len(body), SUBMIT_SM, 0, seq) + body


def tlv(tag: int, value: bytes) -> bytes:
    """One TLV's bytes."""
    return _TLV.pack(tag, len(value)) + value
