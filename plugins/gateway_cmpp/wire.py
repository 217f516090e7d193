"""CMPP 2.0 / 3.0 on the session core: the dialect (CONNECT, ACTIVE_TEST, TERMINATE, answers) and
the wire (a CMPP_SUBMIT per part, SUBMIT_RESP, results, CMPP_DELIVER status reports and MO)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal

from plugins.gateway_cmpp import codec as c
from plugins.session_core.longsms import Segmenter, decode_payload
from plugins.session_core.pool import Kind, Mo
from plugins.session_core.receipts import Receipt, receipt_time
from plugins.session_core.session import Frame, Reply

_new = tuple.__new__  # (a NamedTuple from its fields, without the class call)

__all__ = ["CmppDialect", "CmppWire", "classify"]

_REJECTED: Final = frozenset({1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13})
_FORMATS: Final = {0: "ascii", 8: "ucs2", 15: "gbk", 4: "binary", 3: "binary"}


def classify(result: int) -> Kind:
    """What a SUBMIT_RESP result means: 8 flow control → throttled; 3 (duplicate sequence) and
    results past the spec's 13 (gateways' own "busy" codes) → retry; the spec's others → rejected."""
    if result == 0:
        return Kind.OK
    if result == c.RESULT_FLOW_CONTROL:
        return Kind.THROTTLED
    if result in _REJECTED:
        return Kind.REJECTED
    return Kind.RETRY


class CmppDialect:
    """What CMPP tells the session core."""

    name = "cmpp"
    seq_first = 1
    seq_last = 0xFFFFFFFF
    min_pdu = 12
    max_pdu = 4096

    def __init__(self, source_addr: str, secret: str, version: int, utc_offset_hours: float = 8.0) -> None:
        self.source_addr = source_addr
        self.secret = secret
        self.version = version
        self.tz = timezone(timedelta(hours=utc_offset_hours))

    def frame(self, pdu: bytes) -> Frame:
        """The header of one PDU (CMPP keeps results in bodies: status 0)."""
        _, command, seq = c.HEADER.unpack_from(pdu)
        return _new(Frame, (command, seq, 0, pdu))

    def is_response(self, command: int) -> bool:
        """Answers have the top bit set."""
        return bool(command & c.RESP)

    def bind(self, seq: int, wall: float) -> bytes:
        """CMPP_CONNECT with the authenticator for the ISMG's local time now."""
        t = datetime.fromtimestamp(wall, UTC).astimezone(self.tz)
        digits, ts = c.timestamp(t.month, t.day, t.hour, t.minute, t.second)
        auth = c.authenticator_source(self.source_addr, self.secret, digits)
        pdu = c.Connect(
            seq=seq, source_addr=self.source_addr, authenticator=auth, version=self.version, timestamp=ts
        )
        return c.encode(pdu, self.version)

    def bind_status(self, frame: Frame) -> int:
        """CONNECT_RESP's Status (0: connected)."""
        resp = c.decode(frame.pdu, self.version)
        return resp.status if isinstance(resp, c.ConnectResp) else 5

    def keepalive(self, seq: int) -> bytes:
        """CMPP_ACTIVE_TEST."""
        return c.HEADER.pack(12, c.ACTIVE_TEST, seq)

    def unbind(self, seq: int) -> bytes:
        """CMPP_TERMINATE."""
        return c.HEADER.pack(12, c.TERMINATE, seq)

    def reply(self, frame: Frame) -> tuple[Reply, bytes]:
        """Answer the ISMG: ACTIVE_TEST, DELIVER (with its Msg_Id), TERMINATE."""
        cmd, seq, pdu = frame.command, frame.seq, frame.pdu
        if cmd == c.DELIVER:
            width = 4 if self.version >= c.V3 else 1
            body = pdu[12:20] + bytes(width)
            return Reply.INBOUND, c.HEADER.pack(12 + len(body), c.DELIVER | c.RESP, seq) + body
        if cmd == c.ACTIVE_TEST:
            return Reply.KEEPALIVE, c.HEADER.pack(13, c.ACTIVE_TEST | c.RESP, seq) + b"\x00"
        if cmd == c.TERMINATE:
            return Reply.UNBIND, c.HEADER.pack(12, c.TERMINATE | c.RESP, seq)
        return Reply.UNKNOWN, b""  # CMPP has no generic refusal: ignored

    def auth_refusal(self, status: int) -> bool:
        """2 bad source address, 3 authentication failed, 4 version too high."""
        return status in (2, 3, 4)


class CmppWire:
    """Messages → CMPP_SUBMIT PDUs and ISMG answers → outcomes, status reports and MO."""

    def __init__(
        self,
        *,
        version: int = c.V3,
        service_id: str = "",
        src_id: str = "",
        msg_src: str = "",
        fee_user_type: int = 2,
        fee_terminal_id: str = "",
        fee_type: str = "01",
        fee_code: str = "000000",
        msg_level: int = 0,
        registered_delivery: int = 1,
        ascii_when_possible: bool = True,
        concat: Literal["udh8", "udh16"] = "udh8",
        national: bool = True,
        utc_offset_hours: float = 8.0,
    ) -> None:
        self.version = version
        v3 = version >= c.V3
        t = 21 if not v3 else 32
        fix = c.fixed
        self._pre = (
            bytes((registered_delivery, msg_level))
            + fix(service_id, 10, "service_id")
            + bytes((fee_user_type,))
            + fix(fee_terminal_id, t, "fee_terminal_id")
            + (b"\x00" if v3 else b"")
            + b"\x00"  # TP_pId
        )
        self._mid = (
            fix(msg_src, 6, "msg_src")
            + fix(fee_type, 2, "fee_type")
            + fix(fee_code, 6, "fee_code")
            + b"\x00" * 34  # ValId_Time, At_Time: the ISMG's defaults
            + fix(src_id, 21, "src_id")
            + b"\x01"  # DestUsr_tl
        )
        self._t = t
        self._dest_type = b"\x00" if v3 else b""
        self._tail = b"\x00" * (20 if v3 else 8)
        self.segmenter = Segmenter("ascii" if ascii_when_possible else "never", concat)
        self.national = national
        self.utc_offset = utc_offset_hours

    def destination(self, to: str) -> str:
        """``+8613800138000`` → ``13800138000`` (national) or ``8613800138000``; others without ``+``."""
        if self.national and to.startswith("+86"):
            return to[3:]
        return to[1:] if to[0] == "+" else to

    def submit_bodies(self, to: str, text: str) -> list[bytes]:
        """One CMPP_SUBMIT body per part: Pk_total/Pk_number set, TP_udhi with the UDH in front."""
        seg = self.segmenter.segments(text)
        fmt = 8 if seg.coding == "ucs2" else 0
        dest = self.destination(to).encode("ascii").ljust(self._t, b"\x00")
        total = len(seg.payloads)
        udhi = 1 if seg.udhi else 0
        pre, mid, dest_type, tail = self._pre, self._mid, self._dest_type, self._tail
        zero = b"\x00" * 8
        return [
            b"".join(
                (
                    zero,
                    bytes((total, k)),
                    pre,
                    bytes((udhi, fmt)),
                    mid,
                    dest,
                    dest_type,
                    bytes((len(payload),)),
                    payload,
                    tail,
                )
            )
            for k, payload in enumerate(seg.payloads, 1)
        ]

    def request(self, seq: int, body: bytes) -> bytes:
        """The CMPP_SUBMIT PDU."""
        return c.HEADER.pack(12 + len(body), c.SUBMIT, seq) + body

    def submit_answer(self, frame: Frame) -> tuple[int, str]:
        """Result and Msg_Id (canonical: the unsigned decimal) of a SUBMIT_RESP."""
        pdu = frame.pdu
        if len(pdu) < 21:
            return 1, ""
        result = int.from_bytes(pdu[20:], "big")
        return (0, str(int.from_bytes(pdu[12:20], "big"))) if result == 0 else (result, "")

    def classify(self, status: int) -> Kind:
        """See :func:`classify`."""
        return classify(status)

    def inbound(self, frame: Frame) -> Receipt | Mo | None:
        """A CMPP_DELIVER: a status report (Registered_Delivery 1) or an MO part."""
        if frame.command == c.DELIVER:
            report = c.report_view(frame.pdu, self.version)  # (read in place: the common case)
            if report is not None:
                msg_id, stat, done, dest = report
                return Receipt(str(msg_id), stat, "", receipt_time(done, self.utc_offset), dest)
        d = c.decode(frame.pdu, self.version)
        if not isinstance(d, c.Deliver):
            return None
        if d.registered_delivery == 1:
            r = c.decode_report(d.content, self.version)
            return Receipt(
                str(r.msg_id), r.stat, "", receipt_time(r.done_time, self.utc_offset), r.dest_terminal_id
            )
        concat, text = decode_payload(d.content, _FORMATS.get(d.msg_fmt, "gbk"), udhi=bool(d.tp_udhi))
        src = d.src_terminal_id
        if len(src) == 11 and src[0] == "1":
            src = "+86" + src
        elif src.startswith("86") and len(src) == 13:
            src = "+" + src
        return Mo(src, d.dest_id, text, concat)
