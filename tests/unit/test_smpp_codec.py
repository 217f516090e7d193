"""SMPP 3.4 codec and wire: byte-identical with an independent encoder (smpp34), receipts in every form."""

from __future__ import annotations

import pytest
import smpp34

from engine.core.messages import DeliveryStatus
from plugins.gateway_smpp import codec as c
from plugins.gateway_smpp.wire import SmppWire, classify
from plugins.session_core.pool import Kind, Mo
from plugins.session_core.receipts import Receipt, canonical_id, id_forms, parse_receipt_text, status_of
from plugins.session_core.session import Frame


def _frame(pdu: bytes) -> Frame:
    _, cmd, status, seq = c.HEADER.unpack_from(pdu)
    return Frame(cmd, seq, status, pdu)


def test_submit_sm_bytes_match_an_independent_encoder() -> None:
    text = "【测试】你好世界😀".encode("utf-16-be")
    ours = c.SubmitTemplate(source_addr="10690000", source_ton=5, registered_delivery=1)
    pdu = ours.pdu(
        42, ours.body("8613800138000", text, c.ESM_UDHI, 8, c.tlv(c.TLV_SAR_MSG_REF_NUM, b"\x01\x02"))
    )
    theirs = smpp34.SubmitSm(
        "10690000",
        "8613800138000",
        text,
        source_addr_ton=5,
        dest_addr_ton=1,
        dest_addr_npi=1,
        esm_class=0x40,
        data_coding=8,
        registered_delivery=1,
        sequence_number=42,
        tlvs=[smpp34.Tlv(smpp34.TLV_SAR_MSG_REF_NUM, b"\x01\x02")],
    ).encode()
    assert pdu == theirs
    decoded = c.decode(pdu)
    assert isinstance(decoded, c.ShortMessage)
    assert decoded.short_message == text
    assert decoded.tlv(c.TLV_SAR_MSG_REF_NUM) == b"\x01\x02"
    assert c.encode(decoded) == pdu


def test_decodes_a_deliver_sm_written_by_the_independent_encoder() -> None:
    pdu = smpp34.DeliverSm(
        "8613800138000",
        "10690000",
        b"id:0A1B sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:DELIVRD err:000 text:",
        esm_class=0x04,
        source_addr_ton=1,
        sequence_number=9,
        tlvs=[
            smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, b"0A1B\x00"),
            smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, b"\x02"),
        ],
    ).encode()
    sm = c.decode(pdu)
    assert isinstance(sm, c.ShortMessage)
    assert (sm.command, sm.seq, sm.esm_class, sm.source_addr) == (c.DELIVER_SM, 9, 4, "8613800138000")
    wire = SmppWire(c.SubmitTemplate())
    got = wire.inbound(_frame(pdu))
    assert got == (
        Receipt("0A1B", "DELIVRD", "000", got[0].done_at, "8613800138000"),
        DeliveryStatus.DELIVERED,
    )  # type: ignore[index]
    assert got[0].done_at > 0  # type: ignore[index]


@pytest.mark.parametrize(
    "pdu",
    [
        c.Bind(
            seq=1, system_id="sys", password="pw", system_type="t", addr_ton=1, addr_npi=1, address_range="86"
        ),
        c.BindResp(command=c.BIND_TRANSCEIVER | c.RESP, seq=1, system_id="smsc", tlvs=[(0x0210, b"\x34")]),
        c.MessageResp(command=c.SUBMIT_SM | c.RESP, seq=5, message_id="abc"),
        c.Header(command=c.ENQUIRE_LINK, seq=3),
    ],
)
def test_round_trips(pdu: c.Pdu) -> None:
    assert c.decode(c.encode(pdu)) == pdu


def test_an_error_answer_without_a_body_and_malformed_pdus() -> None:
    assert c.decode(c.HEADER.pack(16, c.SUBMIT_SM | c.RESP, 0x58, 3)) == c.MessageResp(
        command=c.SUBMIT_SM | c.RESP, seq=3, status=0x58
    )
    with pytest.raises(c.DecodeError, match="command_length"):
        c.decode(c.HEADER.pack(20, c.ENQUIRE_LINK, 0, 1))
    with pytest.raises(c.DecodeError):
        c.decode(c.HEADER.pack(18, c.SUBMIT_SM, 0, 1) + b"ab")
    with pytest.raises(ValueError, match="password"):
        c.encode(c.Bind(seq=1, system_id="s", password="123456789"))


@pytest.mark.parametrize(
    ("status", "kind"),
    [(0, Kind.OK), (0x58, Kind.THROTTLED), (0x14, Kind.THROTTLED), (0x08, Kind.RETRY), (0x0B, Kind.REJECTED)],
)
def test_status_classes(status: int, kind: Kind) -> None:
    assert classify(status) is kind


@pytest.mark.parametrize(
    ("text", "rid", "stat", "err"),
    [
        (
            "id:12107289 sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:DELIVRD err:000 text:hi",
            "12107289",
            "DELIVRD",
            "000",
        ),
        (
            "ID:00B8BE19 SUB:001 DLVRD:000 SUBMIT DATE:261203120000 DONE DATE:261203120130 STAT:UNDELIV ERR:0x0B Text:",
            "00B8BE19",
            "UNDELIV",
            "0x0B",
        ),
        ("stat:EXPIRED err:X id:ab-CD-01", "ab-CD-01", "EXPIRED", "X"),
    ],
)
def test_receipt_text_is_read_leniently(text: str, rid: str, stat: str, err: str) -> None:
    r = parse_receipt_text(text)
    assert r is not None
    assert (r.id, r.stat, r.err) == (rid, stat, err)


def test_receipt_text_without_an_id_is_not_a_receipt() -> None:
    assert parse_receipt_text("stat:DELIVRD err:000") is None


@pytest.mark.parametrize(
    ("stat", "status"),
    [
        ("DELIVRD", DeliveryStatus.DELIVERED),
        ("undeliv", DeliveryStatus.FAILED),
        ("EXPIRED", DeliveryStatus.EXPIRED),
        ("REJECTD", DeliveryStatus.REJECTED),
        ("MK:0001", DeliveryStatus.FAILED),
        ("DBBLACK", DeliveryStatus.REJECTED),
        ("ENROUTE", None),
        ("ACCEPTD", None),
    ],
)
def test_stat_words(stat: str, status: DeliveryStatus | None) -> None:
    assert status_of(stat) is status


def test_id_forms_meet_across_case_padding_and_base() -> None:
    submit = canonical_id("00B8BE19")
    for receipt in ("b8be19", "B8BE19", "0000b8be19", "12107289", "0012107289"):
        assert submit in id_forms(canonical_id(receipt)), receipt
    assert canonical_id("\x00 0 \x00") == "0"


def test_mo_with_a_udh_and_an_international_source() -> None:
    wire = SmppWire(c.SubmitTemplate())
    payload = bytes((5, 0, 3, 9, 2, 1)) + "退订".encode("utf-16-be")
    pdu = c.encode(
        c.ShortMessage(
            command=c.DELIVER_SM,
            seq=1,
            source_addr="8613800138000",
            source_addr_ton=1,
            destination_addr="10690000",
            esm_class=0x40,
            data_coding=8,
            short_message=payload,
        )
    )
    got = wire.inbound(_frame(pdu))
    assert isinstance(got, Mo)
    assert (got.source, got.text, got.concat) == ("+8613800138000", "退订", (9, 2, 1))


def _deliver(esm: int, short_message: bytes, tlvs: list[tuple[int, bytes]] | None = None) -> bytes:
    return c.encode(
        c.ShortMessage(
            command=c.DELIVER_SM,
            seq=3,
            source_addr="8613800138000",
            source_addr_ton=1,
            destination_addr="10690000",
            esm_class=esm,
            short_message=short_message,
            tlvs=tlvs or [],
        )
    )


TEXT_RECEIPT = (
    b"id:00B8BE19 sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:DELIVRD err:000"
)


@pytest.mark.parametrize(
    ("short_message", "tlvs", "expected"),
    [
        (TEXT_RECEIPT, [], ("00B8BE19", "DELIVRD", "000", DeliveryStatus.DELIVERED)),
        (  # the TLV id wins over the text's; message_state gives the status
            TEXT_RECEIPT.replace(b"DELIVRD", b"UNDELIV"),
            [(c.TLV_RECEIPTED_MESSAGE_ID, b"b8be19\x00"), (c.TLV_MESSAGE_STATE, b"\x05")],
            ("b8be19", "UNDELIV", "000", DeliveryStatus.FAILED),
        ),
        (  # no text: the TLVs alone
            b"",
            [(c.TLV_RECEIPTED_MESSAGE_ID, b"12107289\x00"), (c.TLV_MESSAGE_STATE, b"\x03")],
            ("12107289", "EXPIRED", "", DeliveryStatus.EXPIRED),
        ),
        (  # the text in message_payload
            b"",
            [(c.TLV_MESSAGE_PAYLOAD, TEXT_RECEIPT)],
            ("00B8BE19", "DELIVRD", "000", DeliveryStatus.DELIVERED),
        ),
        (b"", [(c.TLV_RECEIPTED_MESSAGE_ID, b"1\x00"), (c.TLV_MESSAGE_STATE, b"\x01")], None),  # ENROUTE
        (b"no receipt words here", [], None),
    ],
)
def test_a_receipt_read_in_place_says_what_the_decoded_pdu_says(
    short_message: bytes, tlvs: list[tuple[int, bytes]], expected: tuple[str, str, str, DeliveryStatus] | None
) -> None:
    wire = SmppWire(c.SubmitTemplate())
    pdu = _deliver(c.ESM_RECEIPT, short_message, tlvs)
    view = c.receipt_view(pdu)
    assert view is not None and view[:2] == (c.ESM_RECEIPT, "8613800138000")
    got = wire.inbound(_frame(pdu))
    if expected is None:
        assert got is None
        return
    receipt, status = (got, status_of(got.stat)) if isinstance(got, Receipt) else got  # type: ignore[misc]
    assert isinstance(receipt, Receipt)
    assert (receipt.id, receipt.stat, receipt.err, status) == expected
    assert receipt.addr == "8613800138000"
    # the same through the full decoder (data_sm takes that path): the same receipt
    sm = c.decode(pdu)
    assert isinstance(sm, c.ShortMessage)
    slow = wire._receipt(
        sm.short_message or sm.tlv(c.TLV_MESSAGE_PAYLOAD) or b"",
        sm.source_addr,
        sm.tlv(c.TLV_RECEIPTED_MESSAGE_ID),
        sm.tlv(c.TLV_MESSAGE_STATE),
    )
    assert slow == got


def test_the_in_place_reader_leaves_mo_to_the_decoder_and_refuses_what_it_refuses() -> None:
    assert c.receipt_view(_deliver(0, "退订".encode("utf-16-be"))) is None
    pdu = _deliver(c.ESM_RECEIPT, TEXT_RECEIPT, [(c.TLV_MESSAGE_STATE, b"\x02")])
    for cut in (pdu[:40], pdu[:-1], pdu[:-3]):
        with pytest.raises(c.DecodeError):
            c.receipt_view(cut)


def test_an_id_with_a_digit_int_cannot_read_has_no_other_reading() -> None:
    # latin-1 has digits that str.isdigit() accepts and int() refuses ('³'): no base conversion
    assert id_forms(canonical_id("12³")) == ["12³", "", ""]
    assert id_forms("16") == ["16", "10", "22"]
    assert id_forms("ab") == ["ab", "", "171"]
