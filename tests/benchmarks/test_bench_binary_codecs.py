"""pytest-benchmark: encode and decode of one submit_sm (and a CMPP_SUBMIT), ours beside baselines.

Baselines, in the same run: a naive field-by-field codec written the obvious way (one
``struct.pack`` per field, ``+=``; a dict per decoded PDU) and smpp34's Rust codec (through pyo3).
The PDU is the one in reference/providers-protocols-scaleout.md §1.2: a UCS-2 body of 27
characters, 104 bytes. Run with ``pytest tests/benchmarks/test_bench_binary_codecs.py --benchmark-enable``.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import smpp34

from plugins.gateway_cmpp import codec as cmpp
from plugins.gateway_cmpp.wire import CmppWire
from plugins.gateway_smpp import codec as c
from plugins.gateway_smpp.wire import SmppWire

TEXT = "【鸽子商城】您的双十一优惠券已到账，请于三日内使用。"
BODY = TEXT.encode("utf-16-be")
TEMPLATE = c.SubmitTemplate(source_addr="10690000", source_ton=5)
PDU = TEMPLATE.pdu(7, TEMPLATE.body("8613800138000", BODY, 0, 8))
assert len(PDU) in range(90, 130)


def naive_encode(seq: int, source: str, dest: str, sm: bytes) -> bytes:
    body = b""
    body += b"\x00"  # service_type
    body += struct.pack(">B", 5) + struct.pack(">B", 0) + source.encode() + b"\x00"
    body += struct.pack(">B", 1) + struct.pack(">B", 1) + dest.encode() + b"\x00"
    for v in (0, 0, 0):  # esm_class, protocol_id, priority_flag
        body += struct.pack(">B", v)
    body += b"\x00" + b"\x00"  # schedule_delivery_time, validity_period
    for v in (1, 0, 8, 0, len(sm)):
        body += struct.pack(">B", v)
    body += sm
    return (
        struct.pack(">I", 16 + len(body))
        + struct.pack(">I", 4)
        + struct.pack(">I", 0)
        + struct.pack(">I", seq)
        + body
    )


def naive_decode(pdu: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["length"], out["command"], out["status"], out["seq"] = struct.unpack(">IIII", pdu[:16])
    at = 16

    def cstr() -> str:
        nonlocal at
        end = pdu.index(b"\x00", at)
        s = pdu[at:end].decode()
        at = end + 1
        return s

    def byte() -> int:
        nonlocal at
        at += 1
        return pdu[at - 1]

    out["service_type"] = cstr()
    out["source_ton"], out["source_npi"] = byte(), byte()
    out["source"] = cstr()
    out["dest_ton"], out["dest_npi"] = byte(), byte()
    out["dest"] = cstr()
    out["esm_class"], out["protocol_id"], out["priority"] = byte(), byte(), byte()
    out["schedule"], out["validity"] = cstr(), cstr()
    for k in ("registered", "replace", "data_coding", "default_id"):
        out[k] = byte()
    n = byte()
    out["short_message"] = pdu[at : at + n]
    return out


assert naive_encode(7, "10690000", "8613800138000", BODY) == PDU
assert naive_decode(PDU)["short_message"] == BODY


@pytest.mark.benchmark(group="submit_sm encode")
def test_encode_ours(benchmark: Any) -> None:
    body, pdu = TEMPLATE.body, TEMPLATE.pdu
    assert benchmark(lambda: pdu(7, body("8613800138000", BODY, 0, 8))) == PDU


@pytest.mark.benchmark(group="submit_sm encode")
def test_encode_ours_text_to_pdu(benchmark: Any) -> None:
    """From the message's text: split and encode by the billed-part rules, then the PDU."""
    wire = SmppWire(TEMPLATE)
    assert benchmark(lambda: wire.request(7, wire.submit_bodies("+8613800138000", TEXT)[0])) == PDU


@pytest.mark.benchmark(group="submit_sm encode")
def test_encode_naive_baseline(benchmark: Any) -> None:
    assert benchmark(naive_encode, 7, "10690000", "8613800138000", BODY) == PDU


@pytest.mark.benchmark(group="submit_sm encode")
def test_encode_smpp34_rust(benchmark: Any) -> None:
    def enc() -> bytes:
        return smpp34.SubmitSm(
            "10690000",
            "8613800138000",
            BODY,
            source_addr_ton=5,
            dest_addr_ton=1,
            dest_addr_npi=1,
            data_coding=8,
            registered_delivery=1,
            sequence_number=7,
        ).encode()

    assert benchmark(enc) == PDU


@pytest.mark.benchmark(group="submit_sm decode")
def test_decode_ours(benchmark: Any) -> None:
    got = benchmark(c.decode, PDU)
    assert isinstance(got, c.ShortMessage) and got.short_message == BODY


@pytest.mark.benchmark(group="submit_sm decode")
def test_decode_naive_baseline(benchmark: Any) -> None:
    assert benchmark(naive_decode, PDU)["short_message"] == BODY


@pytest.mark.benchmark(group="submit_sm decode")
def test_decode_smpp34_rust(benchmark: Any) -> None:
    assert benchmark(smpp34.decode, PDU).short_message == BODY


@pytest.mark.benchmark(group="submit_sm_resp read")
def test_read_submit_resp_ours(benchmark: Any) -> None:
    """What the hot path reads of each answer: status and canonical message id."""
    from plugins.session_core.session import Frame

    wire = SmppWire(TEMPLATE)
    resp = c.encode(c.MessageResp(command=c.SUBMIT_SM | c.RESP, seq=7, message_id="00B8BE19"))
    frame = Frame(c.SUBMIT_SM | c.RESP, 7, 0, resp)
    assert benchmark(wire.submit_answer, frame) == (0, "b8be19")


@pytest.mark.benchmark(group="CMPP_SUBMIT encode")
def test_cmpp_encode_ours_text_to_pdu(benchmark: Any) -> None:
    wire = CmppWire(src_id="10690001", service_id="MKT")
    pdu = benchmark(lambda: wire.request(7, wire.submit_bodies("+8613800138000", TEXT)[0]))
    assert cmpp.decode(pdu).content == BODY  # type: ignore[union-attr]
