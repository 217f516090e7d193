"""Properties of the binary-protocol parts: PDU round trips, framing, long messages, receipt folding."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings, strategies as st

from engine.core.messages import DeliveryStatus
from engine.core.sms import GSM7_BASIC, GSM7_EXTENSION, count_parts
from plugins.gateway_smpp import codec as c
from plugins.session_core.framing import Framer
from plugins.session_core.longsms import (
    Reassembler,
    Segmenter,
    decode_gsm7,
    decode_payload,
    encode_gsm7,
    pack_septets,
    unpack_septets,
)
from plugins.session_core.receipts import Correlator, Receipt, canonical_id

_cstr = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=5)
_addr = st.text(alphabet="0123456789", max_size=20)
_byte = st.integers(0, 255)


@st.composite
def short_messages(draw: st.DrawFn) -> c.ShortMessage:
    return c.ShortMessage(
        command=draw(st.sampled_from([c.SUBMIT_SM, c.DELIVER_SM])),
        seq=draw(st.integers(1, 0x7FFFFFFF)),
        service_type=draw(_cstr),
        source_addr_ton=draw(_byte),
        source_addr_npi=draw(_byte),
        source_addr=draw(_addr),
        dest_addr_ton=draw(_byte),
        dest_addr_npi=draw(_byte),
        destination_addr=draw(_addr),
        esm_class=draw(_byte),
        protocol_id=draw(_byte),
        priority_flag=draw(_byte),
        schedule_delivery_time=draw(st.sampled_from(["", "261203120000000+"])),
        validity_period=draw(st.sampled_from(["", "000001000000000R"])),
        registered_delivery=draw(_byte),
        replace_if_present_flag=draw(_byte),
        data_coding=draw(_byte),
        sm_default_msg_id=draw(_byte),
        short_message=draw(st.binary(max_size=254)),
        tlvs=draw(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=3)),
    )


@given(short_messages())
def test_short_messages_round_trip(sm: c.ShortMessage) -> None:
    assert c.decode(c.encode(sm)) == sm


@given(st.lists(short_messages(), min_size=1, max_size=5), st.lists(st.integers(1, 60), max_size=20))
def test_framing_finds_the_same_pdus_however_the_bytes_are_cut(
    sms: list[c.ShortMessage], cuts: list[int]
) -> None:
    pdus = [c.encode(sm) for sm in sms]
    data = b"".join(pdus)
    framer = Framer(16, 65536)
    got: list[bytes] = []
    at = 0
    for n in itertools.cycle(cuts or [len(data)]):
        if at >= len(data):
            break
        got += framer.feed(data[at : at + n])
        at += n
    assert got == pdus


_gsm = st.text(alphabet=GSM7_BASIC + GSM7_EXTENSION, max_size=400)


@given(_gsm)
def test_gsm7_encodes_and_decodes(text: str) -> None:
    assert decode_gsm7(encode_gsm7(text)) == text


@given(st.binary(max_size=200).map(lambda b: bytes(x & 0x7F for x in b)), st.integers(0, 6))
def test_septets_pack_and_unpack(septets: bytes, fill: int) -> None:
    assert unpack_septets(pack_septets(septets, fill), len(septets), fill) == septets


_any_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(GSM7_BASIC + GSM7_EXTENSION),
        st.sampled_from("券优惠【】，。"),
        st.sampled_from(["😀", "𠮷"]),
    ),
    min_size=1,
    max_size=700,
)


@settings(max_examples=150)
def _full_part_ending_in_cr(payload: bytes, udhi: bool) -> bool:
    udh_len = payload[0] + 1 if udhi else 0
    fill = (7 - (udh_len * 8) % 7) % 7 if udh_len else 0
    bits = (len(payload) - udh_len) * 8 - fill
    septets = unpack_septets(payload[udh_len:], bits // 7, fill)
    return len(payload) == 140 and bits % 7 == 0 and septets.endswith(b"\r")


@pytest.mark.parametrize(
    ("text", "concat"),
    [
        ("0000000@", "udh8"),  # 8 septets fill 7 octets: the '@' (septet 0) is a character, not padding
        ("1234567", "udh8"),  # 7 septets and 7 spare bits: padded with CR, read back without it
        ("0000000\r", "sar"),  # a wanted last CR on an octet boundary: doubled, read back once
        ("@" * 15, "udh8"),
        ("x" * 152 + "@" + "y" * 3, "udh8"),  # an '@' ending a full part of a long message
    ],
)
def test_packed_gsm7_keeps_a_trailing_at_and_pads_with_cr(text: str, concat: str) -> None:
    seg = Segmenter("packed", concat, seed=1).segments(text)  # type: ignore[arg-type]
    got = "".join(decode_payload(p, "gsm7", udhi=seg.udhi, packed=True)[1] for p in seg.payloads)
    assert got == text


def test_seven_spare_bits_are_a_cr() -> None:
    packed = pack_septets(encode_gsm7("1234567"))
    assert len(packed) == 7 and packed[-1] >> 1 == 0x0D


@given(
    _any_text,
    st.sampled_from(["unpacked", "packed", "never"]),
    st.sampled_from(["udh8", "udh16", "sar"]),
)
def test_long_messages_split_encode_and_join_back(text: str, gsm7: str, concat: str) -> None:
    seg = Segmenter(gsm7, concat, seed=1).segments(text)  # type: ignore[arg-type]
    packed = gsm7 == "packed" and seg.coding == "gsm7"
    # 23.038 §6.1.2.3.1: a full packed part whose last septet is CR ends on an octet boundary with
    # no room to double it, and every receiver reads that CR as padding (tested apart below).
    assume(not (packed and any(_full_part_ending_in_cr(p, seg.udhi) for p in seg.payloads)))
    if concat == "udh8" and gsm7 != "never":
        assert len(seg.payloads) == count_parts(text)  # the parts the engine bills
    texts = []
    refs = set()
    for i, payload in enumerate(seg.payloads, 1):
        limit = 140 if (packed or seg.coding == "ucs2") else 160
        assert len(payload) <= limit
        kind = "ucs2" if seg.coding == "ucs2" else "gsm7"
        if kind == "ucs2":  # a part alone is valid UTF-16: no surrogate pair was cut
            body = payload[payload[0] + 1 :] if seg.udhi else payload
            body.decode("utf-16-be")
        info, part = decode_payload(payload, kind, udhi=seg.udhi, packed=packed)
        if seg.udhi:
            assert info is not None and info.seq == i and info.total == len(seg.payloads)
            refs.add(info.ref)
        texts.append(part)
    assert "".join(texts) == text
    assert len(refs) <= 1
    if seg.concat is not None:
        assert [k.seq for k in seg.concat] == list(range(1, len(seg.payloads) + 1))


@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=12), st.randoms())
def test_mo_parts_join_once_in_any_order_with_duplicates(plan: list[tuple[int, bool]], rnd: object) -> None:
    r = Reassembler()
    from plugins.session_core.longsms import Concat

    parts = [(Concat(7, 3, k), f"<{k}>") for k in (1, 2, 3)]
    order = parts + [parts[k - 1] for k, dup in plan if dup]
    rnd.shuffle(order)  # type: ignore[attr-defined]
    done = [t for con, txt in order if (t := r.add("+8613800138000", con, txt, 0.0)) is not None]
    assert done == ["<1><2><3>"]


_final = st.sampled_from([DeliveryStatus.DELIVERED] * 3 + [DeliveryStatus.FAILED, DeliveryStatus.EXPIRED])


@given(st.lists(_final, min_size=1, max_size=4), st.randoms(), st.booleans(), st.booleans())
def test_receipts_fold_into_one_report_per_message(
    states: list[DeliveryStatus], rnd: object, early: bool, dup: bool
) -> None:
    corr = Correlator("g", clock=lambda: 0.0)
    ids = [f"{0xB8BE19 + i:08X}" for i in range(len(states))]
    order = list(zip(ids, states, strict=True))
    if dup:
        order += order[:1]
    rnd.shuffle(order)  # type: ignore[attr-defined]
    reports = []
    forms = [str(int(i, 16)) for i, _ in order]  # the receipts write the ids in decimal
    if early:  # every receipt arrives before the submit answers
        for f, (_, s) in zip(forms, order, strict=True):
            reports += corr.receipt(Receipt(f, s.name), s)
        reports += corr.track("m-1", [canonical_id(i) for i in ids])
    else:
        reports += corr.track("m-1", [canonical_id(i) for i in ids])
        for f, (_, s) in zip(forms, order, strict=True):
            reports += corr.receipt(Receipt(f, s.name), s)
    assert len(reports) == 1
    (rep,) = reports
    assert rep.message_id == "m-1" and rep.provider_id == canonical_id(ids[0])
    if all(s is DeliveryStatus.DELIVERED for s in states):
        assert rep.status is DeliveryStatus.DELIVERED
    else:
        assert rep.status is not DeliveryStatus.DELIVERED
    assert corr.expire(1e9) == []
