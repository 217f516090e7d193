"""SMPP 3.4 on the session core: the dialect (bind, enquire_link, unbind, answers) and the wire
(submit_sm for each part, submit_sm_resp, status classes, deliver_sm receipts and MO)."""

from __future__ import annotations

from typing import Final, Literal

from pigeon import DeliveryStatus
from plugins.gateway_smpp import codec as c
from plugins.session_core.longsms import Concat, Segmenter, decode_payload
from plugins.session_core.pool import Kind, Mo
from plugins.session_core.receipts import MESSAGE_STATES, Receipt, canonical_id, parse_receipt_text
from plugins.session_core.session import Frame, Reply

_new = tuple.__new__  # (a NamedTuple from its fields, without the class call)

__all__ = ["SmppDialect", "SmppWire", "classify"]

_THROTTLED: Final = frozenset({c.ESME_RTHROTTLED, c.ESME_RMSGQFUL})
_TRANSIENT: Final = frozenset({c.ESME_RSYSERR, c.ESME_RSUBMITFAIL, c.ESME_RINVBNDSTS, c.ESME_RUNKNOWNERR})
_AUTH: Final = frozenset({c.ESME_RINVPASWD, c.ESME_RINVSYSID, c.ESME_RBINDFAIL, 0x53})
"""Bind refusals that mean the account is wrong (0x53: ESME_RINVSYSTYP)."""

_CODINGS: Final = {0: "gsm7", 1: "ascii", 3: "latin1", 8: "ucs2", 2: "binary", 4: "binary"}


def classify(status: int) -> Kind:
    """What a submit_sm_resp (or generic_nack) status means."""
    if status == 0:
        return Kind.OK
    if status in _THROTTLED:
        return Kind.THROTTLED
    if status in _TRANSIENT:
        return Kind.RETRY
    return Kind.REJECTED


class SmppDialect:
    """What SMPP 3.4 tells the session core."""

    name = "smpp"
    seq_first = 1
    seq_last = 0x7FFFFFFF
    min_pdu = 16
    max_pdu = 65536

    def __init__(self, bind: c.Bind) -> None:
        self._bind = bind

    def frame(self, pdu: bytes) -> Frame:
        """The header of one PDU."""
        _, command, status, seq = c.HEADER.unpack_from(pdu)
        return _new(Frame, (command, seq, status, pdu))

    def is_response(self, command: int) -> bool:
        """Answers (and generic_nack) have the top bit set."""
        return bool(command & c.RESP)

    def bind(self, seq: int, wall: float) -> bytes:
        """bind_transceiver / bind_transmitter."""
        b = self._bind
        return c.encode(
            c.Bind(
                command=b.command,
                seq=seq,
                system_id=b.system_id,
                password=b.password,
                system_type=b.system_type,
                addr_ton=b.addr_ton,
                addr_npi=b.addr_npi,
                address_range=b.address_range,
            )
        )

    def bind_status(self, frame: Frame) -> int:
        """The bind_resp's command_status (a generic_nack counts as a refusal)."""
        if frame.command == c.GENERIC_NACK:
            return frame.status or c.ESME_RINVCMDID
        return frame.status

    def keepalive(self, seq: int) -> bytes:
        """enquire_link."""
        return c.HEADER.pack(16, c.ENQUIRE_LINK, 0, seq)

    def unbind(self, seq: int) -> bytes:
        """unbind."""
        return c.HEADER.pack(16, c.UNBIND, 0, seq)

    def reply(self, frame: Frame) -> tuple[Reply, bytes]:
        """Answer the SMSC's requests: enquire_link, deliver_sm / data_sm, unbind; refuse the rest."""
        cmd, seq = frame.command, frame.seq
        if cmd == c.DELIVER_SM:
            return Reply.INBOUND, c.HEADER.pack(17, c.DELIVER_SM | c.RESP, 0, seq) + b"\x00"
        if cmd == c.ENQUIRE_LINK:
            return Reply.KEEPALIVE, c.HEADER.pack(16, c.ENQUIRE_LINK | c.RESP, 0, seq)
        if cmd == c.UNBIND:
            return Reply.UNBIND, c.HEADER.pack(16, c.UNBIND | c.RESP, 0, seq)
        if cmd == c.DATA_SM:
            return Reply.INBOUND, c.HEADER.pack(17, c.DATA_SM | c.RESP, 0, seq) + b"\x00"
        return Reply.UNKNOWN, c.HEADER.pack(16, c.GENERIC_NACK, c.ESME_RINVCMDID, seq)

    def auth_refusal(self, status: int) -> bool:
        """Wrong system_id / password / system_type, or a bind the SMSC refuses outright."""
        return status in _AUTH


class SmppWire:
    """Messages → submit_sm PDUs and SMSC answers → outcomes, receipts and MO."""

    def __init__(
        self,
        template: c.SubmitTemplate,
        *,
        gsm7: Literal["unpacked", "packed", "never"] = "unpacked",
        concat: Literal["udh8", "udh16", "sar"] = "udh8",
        national: bool = False,
        receipt_utc_offset_hours: float = 0.0,
        mo_packed: bool = False,
    ) -> None:
        self.template = template
        self.segmenter = Segmenter(gsm7, concat)
        self.sar = concat == "sar"
        self.national = national
        self.utc_offset = receipt_utc_offset_hours
        self.mo_packed = mo_packed

    def destination(self, to: str) -> str:
        """``+8613800138000`` → ``8613800138000`` (international) or ``13800138000`` (national)."""
        if self.national and to.startswith("+86"):
            return to[3:]
        return to[1:] if to[0] == "+" else to

    def submit_bodies(self, to: str, text: str) -> list[bytes]:
        """One submit_sm body per part, in order."""
        seg = self.segmenter.segments(text)
        dc = 8 if seg.coding == "ucs2" else 0
        dest = self.destination(to)
        body = self.template.body
        if seg.concat is None:
            return [body(dest, seg.payloads[0], 0, dc)]
        if self.sar:
            return [
                body(
                    dest,
                    p,
                    0,
                    dc,
                    c.tlv(c.TLV_SAR_MSG_REF_NUM, k.ref.to_bytes(2, "big"))
                    + c.tlv(c.TLV_SAR_TOTAL_SEGMENTS, bytes((k.total,)))
                    + c.tlv(c.TLV_SAR_SEGMENT_SEQNUM, bytes((k.seq,))),
                )
                for p, k in zip(seg.payloads, seg.concat, strict=True)
            ]
        return [body(dest, p, c.ESM_UDHI, dc) for p in seg.payloads]

    def request(self, seq: int, body: bytes) -> bytes:
        """The submit_sm PDU."""
        return c.HEADER.pack(16 + len(body), c.SUBMIT_SM, 0, seq) + body

    def submit_answer(self, frame: Frame) -> tuple[int, str]:
        """submit_sm_resp status and message_id (canonical); a generic_nack carries only a status."""
        status = frame.status
        if frame.command == c.GENERIC_NACK:
            return status or c.ESME_RSYSERR, ""
        if status:
            return status, ""
        pdu = frame.pdu
        mid = pdu[16:].split(b"\x00", 1)[0].decode("latin-1") if len(pdu) > 16 else ""
        return 0, canonical_id(mid) if mid else ""

    def classify(self, status: int) -> Kind:
        """See :func:`classify`."""
        return classify(status)

    def inbound(self, frame: Frame) -> Receipt | tuple[Receipt, DeliveryStatus] | Mo | None:
        """A deliver_sm / data_sm: a receipt (esm_class type 0x04) or an MO part."""
        if frame.command == c.DELIVER_SM:
            view = c.receipt_view(frame.pdu)  # (a receipt read without decoding every field)
            if view is not None:
                _, source, body, tlv_id, state = view
                return self._receipt(body, source, tlv_id, state)
        sm = c.decode(frame.pdu)
        if not isinstance(sm, c.ShortMessage):
            return None
        if (sm.esm_class & 0x3C) == c.ESM_RECEIPT:
            return self._receipt(
                sm.short_message or sm.tlv(c.TLV_MESSAGE_PAYLOAD) or b"",
                sm.source_addr,
                sm.tlv(c.TLV_RECEIPTED_MESSAGE_ID),
                sm.tlv(c.TLV_MESSAGE_STATE),
            )
        payload = sm.short_message or sm.tlv(c.TLV_MESSAGE_PAYLOAD) or b""
        coding = _CODINGS.get(sm.data_coding, "latin1")
        concat, text = decode_payload(
            payload, coding, udhi=bool(sm.esm_class & c.ESM_UDHI), packed=self.mo_packed
        )
        if concat is None:
            ref, total, seq = (
                sm.tlv(c.TLV_SAR_MSG_REF_NUM),
                sm.tlv(c.TLV_SAR_TOTAL_SEGMENTS),
                sm.tlv(c.TLV_SAR_SEGMENT_SEQNUM),
            )
            if ref and total and seq:
                concat = Concat(int.from_bytes(ref, "big"), total[0], seq[0])
        source = sm.source_addr
        if sm.source_addr_ton == 1 and source.isdigit():
            source = "+" + source
        return Mo(source, sm.destination_addr, text, concat)

    def _receipt(
        self, payload: bytes, source: str, tlv_id: bytes | None, state: bytes | None
    ) -> Receipt | tuple[Receipt, DeliveryStatus] | None:
        parsed = parse_receipt_text(payload.decode("latin-1", errors="replace"), self.utc_offset)
        rid = tlv_id.split(b"\x00", 1)[0].decode("latin-1") if tlv_id else ""
        if not rid and parsed is None:
            return None
        receipt = (
            Receipt(rid or parsed.id, parsed.stat, parsed.err, parsed.done_at, source)
            if parsed is not None
            else Receipt(rid, "", "", 0.0, source)
        )
        if state:
            status = MESSAGE_STATES.get(state[0])
            if status is None:
                return None  # ENROUTE / ACCEPTED: not final
            if not receipt.stat:
                receipt = receipt._replace(stat=status.value.upper())
            return receipt, status
        return receipt if receipt.stat else None
