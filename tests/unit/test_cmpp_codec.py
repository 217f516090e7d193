"""CMPP 2.0 / 3.0 codec: golden vectors from the specification's layouts, round trips, classes."""

from __future__ import annotations

import hashlib

import pytest

from plugins.gateway_cmpp import codec as c
from plugins.gateway_cmpp.wire import CmppDialect, CmppWire, classify
from plugins.session_core.pool import Kind, Mo
from plugins.session_core.receipts import Receipt
from plugins.session_core.session import Frame, Reply


def test_authenticator_source_is_md5_of_addr_nine_nuls_secret_and_timestamp() -> None:
    digits, ts = c.timestamp(12, 3, 14, 5, 9)
    assert (digits, ts) == ("1203140509", 1203140509)
    got = c.authenticator_source("901234", "s3cr3t", digits)
    # the bytes the spec says are hashed, written out literally
    material = b"901234" + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00" + b"s3cr3t" + b"1203140509"
    assert got == hashlib.md5(material).digest()
    # computed once outside Python: printf '901234\0\0\0\0\0\0\0\0\0s3cr3t1203140509' | md5sum
    assert got.hex() == "4a0e4abb3d4b4ff8bb3884d116303953"


def test_connect_pdu_bytes_version_byte_and_timestamp() -> None:
    auth = bytes(range(16))
    for version, vbyte in ((c.V2, b"\x20"), (c.V3, b"\x30")):
        pdu = c.encode(
            c.Connect(seq=1, source_addr="901234", authenticator=auth, version=version, timestamp=1203140509),
            version,
        )
        assert len(pdu) == 39
        assert pdu == (
            bytes.fromhex("000000270000000100000001")
            + b"901234"
            + auth
            + vbyte
            + (1203140509).to_bytes(4, "big")
        )
        assert c.decode(pdu, version) == c.Connect(
            seq=1, source_addr="901234", authenticator=auth, version=version, timestamp=1203140509
        )


def test_connect_resp_is_30_bytes_in_2_0_and_33_in_3_0() -> None:
    a = c.authenticator_ismg(0, b"\x01" * 16, "k", c.V2)
    assert a == hashlib.md5(b"\x00" + b"\x01" * 16 + b"k").digest()
    assert (
        c.authenticator_ismg(0, b"\x01" * 16, "k", c.V3)
        == hashlib.md5(b"\x00\x00\x00\x00" + b"\x01" * 16 + b"k").digest()
    )
    for version, size in ((c.V2, 30), (c.V3, 33)):
        resp = c.ConnectResp(seq=4, status=3, authenticator=a, version=version)
        pdu = c.encode(resp, version)
        assert len(pdu) == size
        assert c.decode(pdu, version) == resp


def test_msg_id_packs_the_spec_layout() -> None:
    m = c.MsgId(month=12, day=31, hour=23, minute=59, second=58, gateway=0x2A5A5, seq=0xBEEF)
    bits = "".join(format(v, f"0{w}b") for v, w in zip(m, (4, 5, 5, 6, 6, 22, 16), strict=True))
    assert len(bits) == 64
    assert c.pack_msg_id(m) == int(bits, 2)
    assert c.unpack_msg_id(int(bits, 2)) == m
    # above 2**63: a Java peer prints it negative; ours is the unsigned decimal
    assert c.pack_msg_id(m) > 2**63
    with pytest.raises(ValueError, match="bits"):
        c.pack_msg_id(m._replace(month=16))


@pytest.mark.parametrize("version", [c.V2, c.V3])
def test_submit_and_deliver_round_trip_with_the_version_widths(version: int) -> None:
    sub = c.Submit(
        seq=9,
        pk_total=3,
        pk_number=2,
        service_id="MKT",
        fee_user_type=2,
        tp_udhi=1,
        msg_fmt=8,
        msg_src="901234",
        src_id="10690001",
        dest_terminal_ids=["13800138000"],
        content=b"\x05\x00\x03\x01\x03\x02hi",
        link_id="L1" if version == c.V3 else "",
    )
    pdu = c.encode(sub, version)
    fixed = 8 + 4 + 10 + 1 + 1 + 1 + 1 + 6 + 2 + 6 + 17 + 17 + 21 + 1 + 1 + 8
    wide = 8 + 4 + 10 + 1 + 32 + 1 + 1 + 1 + 1 + 6 + 2 + 6 + 17 + 17 + 21 + 1 + 1 + 1 + 20
    terms = 21 + 21 if version == c.V2 else 32
    assert len(pdu) == 12 + (fixed + terms if version == c.V2 else wide + terms) + len(sub.content)
    assert c.decode(pdu, version) == sub
    report = c.Report(
        msg_id=2**63 + 5,
        stat="DELIVRD",
        submit_time="2612031200",
        done_time="2612031201",
        dest_terminal_id="13800138000",
        smsc_sequence=7,
    )
    content = c.encode_report(report, version)
    assert len(content) == (60 if version == c.V2 else 71)
    assert c.decode_report(content, version) == report
    d = c.Deliver(
        seq=3,
        msg_id=11,
        dest_id="10690001",
        src_terminal_id="13800138000",
        registered_delivery=1,
        content=content,
    )
    assert c.decode(c.encode(d, version), version) == d


@pytest.mark.parametrize(
    ("result", "kind"),
    [(0, Kind.OK), (8, Kind.THROTTLED), (3, Kind.RETRY), (13, Kind.REJECTED), (20, Kind.RETRY)],
)
def test_result_classes(result: int, kind: Kind) -> None:
    assert classify(result) is kind


def _frame(pdu: bytes) -> Frame:
    _, cmd, seq = c.HEADER.unpack_from(pdu)
    return Frame(cmd, seq, 0, pdu)


def test_the_wire_reads_reports_and_mo_and_writes_long_messages() -> None:
    wire = CmppWire(version=c.V3, src_id="10690001", service_id="MKT")
    text = "【鸽子】" + "优惠" * 60
    bodies = wire.submit_bodies("+8613800138000", text)
    subs = [c.decode(wire.request(i, b), c.V3) for i, b in enumerate(bodies, 1)]
    assert all(isinstance(s, c.Submit) for s in subs)
    assert [(s.pk_total, s.pk_number, s.tp_udhi, s.msg_fmt) for s in subs] == [(2, 1, 1, 8), (2, 2, 1, 8)]  # type: ignore[union-attr]
    assert subs[0].dest_terminal_ids == ["13800138000"] and subs[0].src_id == "10690001"  # type: ignore[union-attr]
    (ascii_body,) = wire.submit_bodies("+8613800138000", "Your code is 1234")
    assert c.decode(wire.request(1, ascii_body), c.V3).msg_fmt == 0  # type: ignore[union-attr]
    report = c.Report(
        msg_id=2**63 + 5, stat="UNDELIV", done_time="2612031201", dest_terminal_id="13800138000"
    )
    pdu = c.encode(c.Deliver(seq=1, registered_delivery=1, content=c.encode_report(report, c.V3)), c.V3)
    got = wire.inbound(_frame(pdu))
    assert isinstance(got, Receipt) and (got.id, got.stat, got.addr) == (
        str(2**63 + 5),
        "UNDELIV",
        "13800138000",
    )
    mo = c.encode(
        c.Deliver(seq=2, src_terminal_id="13800138000", msg_fmt=8, content="退订".encode("utf-16-be")), c.V3
    )
    assert wire.inbound(_frame(mo)) == Mo("+8613800138000", "", "退订", None)
    dialect = CmppDialect("901234", "s3cr3t", c.V3)
    kind, answer = dialect.reply(_frame(pdu))
    assert kind is Reply.INBOUND
    assert answer == c.encode(c.SubmitResp(command=c.DELIVER | c.RESP, seq=1, msg_id=0), c.V3)
    assert c.decode(dialect.bind(1, 0.0), c.V3).timestamp == 101080000  # type: ignore[union-attr]  # 1970-01-01 08:00 in China


@pytest.mark.parametrize("version", [c.V2, c.V3])
def test_a_report_read_in_place_says_what_the_decoded_pdu_says(version: int) -> None:
    report = c.Report(
        msg_id=2**63 + 7, stat="DELIVRD", done_time="2612031201", dest_terminal_id="13800138000"
    )
    pdu = c.encode(c.Deliver(seq=1, registered_delivery=1, content=c.encode_report(report, version)), version)
    assert c.report_view(pdu, version) == (2**63 + 7, "DELIVRD", "2612031201", "13800138000")
    decoded = c.decode(pdu, version)
    assert isinstance(decoded, c.Deliver)
    full = c.decode_report(decoded.content, version)
    assert (full.msg_id, full.stat, full.done_time, full.dest_terminal_id) == c.report_view(pdu, version)
    mo = c.encode(c.Deliver(seq=2, src_terminal_id="13800138000", content=b"R", msg_fmt=0), version)
    assert c.report_view(mo, version) is None  # an MO: the decoder's
    short = c.encode(c.Deliver(seq=3, registered_delivery=1, content=b"\x00" * 20), version)
    assert c.report_view(short, version) is None  # too short to be a report: the decoder says why
    with pytest.raises(c.DecodeError):
        CmppWire(version=version).inbound(_frame(short))
