"""An SMPP 3.4 SMSC simulator: a real server on loopback for the ``smpp`` gateway's tests and load tests.

It answers binds (checking system_id and password), enquire_link and unbind; answers submit_sm
after a latency with a message id (``--id-format hex``: zero-padded upper-case hex, or ``dec``);
enforces a window and a rate (refusing with ESME_RTHROTTLED); sends a delivery receipt per part
after a delay — as text ``id:… stat:… err:…`` and, unless ``--no-receipt-tlvs``, the
``receipted_message_id`` and ``message_state`` TLVs — writing the id the way ``--receipt-id``
says (``same``, ``decimal``, ``lower``, ``unpadded``: the forms peers get wrong); injects MO
(:meth:`Smsc.inject_mo`, concatenated with a UDH when long); and does what the magic destination
numbers of :mod:`loadtests._binsim` ask. Its parsing is its own (``struct`` only), not the
gateway's codec, so the two check each other.

One command::

    python -m loadtests.smsc_sim --port 2775 --latency-ms 10 --receipt-delay-ms 50 --window 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass

from loadtests._binsim import (
    BinSimConfig,
    BinSimServer,
    Part,
    Scheduler,
    ServerThread,
    add_arguments,
    config_from,
)

__all__ = ["Smsc", "SmscConfig", "SmscThread", "main"]

H = struct.Struct(">IIII")
RESP = 0x80000000
STAT = {
    "": ("DELIVRD", 2),
    "666": ("UNDELIV", 5),
    "667": ("EXPIRED", 3),
    "668": ("DELIVRD", 2),
    "669": ("DELIVRD", 2),
}
REFUSE = {"444": 0x58, "445": 0x08, "446": 0x0B}


@dataclass
class SmscConfig(BinSimConfig):
    """:class:`BinSimConfig` plus the SMPP id forms."""

    id_format: str = "hex"
    """``hex``: zero-padded upper-case hex (``0000001A``); ``dec``: decimal."""
    receipt_id: str = "same"
    """How a receipt writes the id: ``same``, ``decimal``, ``lower`` or ``unpadded``."""
    receipt_tlvs: bool = True


def _cstr(data: bytes, at: int) -> tuple[str, int]:
    nul = data.index(b"\x00", at)
    return data[at:nul].decode("latin-1"), nul + 1


class _Conn(asyncio.Protocol):
    def __init__(self, smsc: Smsc) -> None:
        self.smsc = smsc
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.bound = False
        self.receiver = False
        self.open = 0
        self.submits = 0
        self.seq = 0x40000000
        self.id = 0
        self.sched: Scheduler | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.id = self.smsc.next_number()
        self.smsc.conns[self.id] = self
        self.sched = Scheduler(asyncio.get_running_loop(), self.write)
        self.smsc.stats["connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.smsc.conns.pop(self.id, None)
        if self.sched is not None:
            self.sched.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        at, end = 0, len(buf)
        out: list[bytes] = []
        while end - at >= 16:
            n = int.from_bytes(buf[at : at + 4], "big")
            if n < 16 or n > 65536:
                self.abort()
                return
            if end - at < n:
                break
            reply = self.pdu(buf[at : at + n])
            if reply is None:  # the connection is to go now
                if out:
                    self.write(b"".join(out))
                self.abort()
                return
            if reply:
                out.append(reply)
            at += n
        self.buf = buf[at:]
        if out:
            self.write(b"".join(out))

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # PDUs
    def pdu(self, pdu: bytes) -> bytes | None:
        _, cmd, _status, seq = H.unpack_from(pdu)
        smsc = self.smsc
        if cmd == 0x04:
            return self.submit(pdu, seq)
        if cmd in (0x01, 0x02, 0x09):
            system_id, at = _cstr(pdu, 16)
            password, at = _cstr(pdu, at)
            ok = system_id == smsc.config.system_id and password == smsc.config.password
            body = smsc.config.system_id.encode() + b"\x00"
            if not ok:
                smsc.stats["bind_refused"] += 1
                return H.pack(16, cmd | RESP, 0x0E, seq)
            self.bound = True
            self.receiver = cmd in (0x01, 0x09)
            smsc.stats["binds"] += 1
            smsc.call_bound()
            return H.pack(16 + len(body), cmd | RESP, 0, seq) + body
        if cmd == 0x15:
            smsc.stats["enquire_link"] += 1
            return H.pack(16, 0x15 | RESP, 0, seq)
        if cmd == 0x06:
            smsc.stats["unbind"] += 1
            self.write(H.pack(16, 0x06 | RESP, 0, seq))
            assert self.transport is not None
            self.transport.close()
            return b""
        if cmd == 0x05 | RESP:
            smsc.stats["deliver_sm_resp"] += 1
            return b""
        if cmd & RESP:
            smsc.stats[f"resp_{cmd:#x}"] += 1
            return b""
        return H.pack(16, RESP, 0x03, seq)

    def submit(self, pdu: bytes, seq: int) -> bytes | None:
        smsc, cfg = self.smsc, self.smsc.config
        smsc.stats["submit_sm"] += 1
        self.submits += 1
        if not self.bound:
            return H.pack(16, 0x04 | RESP, 0x04, seq)
        if cfg.drop_after and self.submits > cfg.drop_after:
            smsc.stats["dropped"] += 1
            return None
        _, at = _cstr(pdu, 16)
        at += 2
        _, at = _cstr(pdu, at)
        at += 2
        dest, at = _cstr(pdu, at)
        esm = pdu[at]
        at += 3
        _, at = _cstr(pdu, at)
        _, at = _cstr(pdu, at)
        reg, coding, sm_len = pdu[at], pdu[at + 2], pdu[at + 4]
        payload = pdu[at + 5 : at + 5 + sm_len]
        fate = smsc.fate(dest)
        if fate == "997":
            smsc.stats["dropped"] += 1
            return None
        if fate == "999":
            smsc.stats["unanswered"] += 1
            return b""
        if cfg.window and self.open >= cfg.window:
            smsc.stats["window_violations"] += 1
            return H.pack(16, 0x04 | RESP, 0x58, seq)
        if smsc.over_rate():
            smsc.stats["throttled"] += 1
            return H.pack(16, 0x04 | RESP, 0x58, seq)
        if fate in REFUSE:
            smsc.stats[f"refused_{REFUSE[fate]:#x}"] += 1
            return H.pack(16, 0x04 | RESP, REFUSE[fate], seq)
        n = smsc.next_number()
        mid = f"{n:08X}" if cfg.id_format == "hex" else str(n)
        smsc.stats["accepted"] += 1
        if cfg.keep:
            sar = None
            tlvs = pdu[at + 5 + sm_len :]
            found: dict[int, bytes] = {}
            i = 0
            while i + 4 <= len(tlvs):
                tag, ln = struct.unpack_from(">HH", tlvs, i)
                found[tag] = tlvs[i + 4 : i + 4 + ln]
                i += 4 + ln
            if 0x020C in found:
                sar = (int.from_bytes(found[0x020C], "big"), found[0x020E][0], found[0x020F][0])
            smsc.parts.append(Part(dest, coding, bool(esm & 0x40), payload, mid, self.id, sar))
        body = mid.encode() + b"\x00"
        resp = H.pack(16 + len(body), 0x04 | RESP, 0, seq) + body
        receipt = self.receipt(mid, n, dest, fate) if (reg & 3) and cfg.receipts and self.receiver else b""
        delay = cfg.slow_ms if fate == "998" else cfg.latency_ms
        assert self.sched is not None
        if fate == "669" and receipt:
            self.write(receipt)  # the receipt before its submit answer
            receipt = b""
        if delay <= 0:
            if receipt:
                self.later(receipt)
            return resp
        self.open += 1
        self.sched.after(delay / 1000, resp, lambda: self._answered(receipt))
        return b""

    def _answered(self, receipt: bytes) -> None:
        self.open -= 1
        if receipt:
            self.later(receipt)

    def later(self, receipt: bytes) -> None:
        cfg = self.smsc.config
        assert self.sched is not None
        self.sched.after(cfg.receipt_delay_ms / 1000, receipt)

    def receipt(self, mid: str, n: int, dest: str, fate: str) -> bytes:
        cfg = self.smsc.config
        stat, state = STAT.get(fate, ("DELIVRD", 2))
        form = cfg.receipt_id
        rid = (
            str(n)
            if form == "decimal"
            else mid.lower()
            if form == "lower"
            else mid.lstrip("0")
            if form == "unpadded"
            else mid
        )
        now = time.strftime("%y%m%d%H%M")
        err = "000" if state == 2 else "001"
        dlvrd = "001" if state == 2 else "000"
        text = f"id:{rid} sub:001 dlvrd:{dlvrd} submit date:{now} done date:{now} stat:{stat} err:{err} text:"
        tlvs = b""
        if cfg.receipt_tlvs:
            rb = rid.encode() + b"\x00"
            tlvs = struct.pack(">HH", 0x001E, len(rb)) + rb + struct.pack(">HHB", 0x0427, 1, state)
        out = self.deliver(dest, "10690000", 0x04, 0, text.encode("latin-1"), tlvs)
        self.smsc.stats["receipts"] += 1
        if fate == "668":
            out += self.deliver(dest, "10690000", 0x04, 0, text.encode("latin-1"), tlvs)
            self.smsc.stats["receipts"] += 1
        return out

    def deliver(self, source: str, dest: str, esm: int, coding: int, sm: bytes, tlvs: bytes = b"") -> bytes:
        body = (
            b"\x00"
            + bytes((1, 1))
            + source.encode()
            + b"\x00"
            + bytes((0, 0))
            + dest.encode()
            + b"\x00"
            + bytes((esm, 0, 0))
            + b"\x00\x00"
            + bytes((0, 0, coding, 0, len(sm)))
            + sm
            + tlvs
        )
        return H.pack(16 + len(body), 0x05, 0, self.next_seq()) + body


class Smsc(BinSimServer):
    """The SMSC: see the module docstring."""

    connection_class = _Conn
    config: SmscConfig

    def __init__(self, config: SmscConfig | None = None) -> None:
        super().__init__(config or SmscConfig())

    def call_bound(self) -> None:
        """Note a bind (tests wait for it)."""
        self.bound.set()

    def inject_mo(
        self, source: str, text: str, *, dest: str = "10690000", per_part: int = 0, ucs2: bool = True
    ) -> None:
        """Send an MO from ``source`` on every receiving bind; split with a UDH when ``per_part`` is set
        (characters per part) — from any thread."""

        def send() -> None:
            pieces = [text[i : i + per_part] for i in range(0, len(text), per_part)] if per_part else [text]
            ref = self.next_number() & 0xFF
            for conn in list(self.conns.values()):
                if not conn.receiver:
                    continue
                for k, piece in enumerate(pieces, 1):
                    raw = piece.encode("utf-16-be") if ucs2 else piece.encode("latin-1")
                    esm = 0
                    if len(pieces) > 1:
                        raw = bytes((5, 0, 3, ref, len(pieces), k)) + raw
                        esm = 0x40
                    conn.write(conn.deliver(source, dest, esm, 8 if ucs2 else 0, raw))
                self.stats["mo"] += 1

        self.call(send)


class SmscThread(ServerThread):
    """An :class:`Smsc` on its own loop in a thread: ``with SmscThread(cfg) as smsc: smsc.port``."""

    def __init__(self, config: SmscConfig | None = None) -> None:
        super().__init__(Smsc(config))


def main(argv: list[str] | None = None) -> int:
    """Run the SMSC in the foreground until Ctrl-C."""
    p = argparse.ArgumentParser(description="Pigeon's SMPP 3.4 SMSC simulator (loopback only)")
    p.add_argument("--port", type=int, default=2775)
    add_arguments(p)
    p.add_argument("--id-format", choices=["hex", "dec"], default="hex")
    p.add_argument("--receipt-id", choices=["same", "decimal", "lower", "unpadded"], default="same")
    p.add_argument("--no-receipt-tlvs", action="store_true")
    args = p.parse_args(argv)
    cfg = SmscConfig(
        id_format=args.id_format,
        receipt_id=args.receipt_id,
        receipt_tlvs=not args.no_receipt_tlvs,
        **config_from(args),
    )
    smsc = Smsc(cfg)
    print(f"SMSC simulator on {cfg.host}:{cfg.port} (system_id {cfg.system_id!r}); Ctrl-C stops it")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(smsc.serve())
    print(dict(smsc.stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
