"""A CMPP 2.0 / 3.0 ISMG simulator: a real server on loopback for the ``cmpp`` gateway's tests and load tests.

It checks CMPP_CONNECT (Source_Addr and the MD5 AuthenticatorSource with its shared secret;
status 3 when wrong) and answers with AuthenticatorISMG; answers ACTIVE_TEST and TERMINATE;
answers CMPP_SUBMIT after a latency with a Msg_Id packed the spec's way (time | gateway code |
sequence); enforces a window and a rate (result 8, flow control); sends a status report per part
after a delay (CMPP_DELIVER with Registered_Delivery 1: ``DELIVRD``, ``UNDELIV``, ``EXPIRED``);
injects MO (:meth:`Ismg.inject_mo`, with a UDH when long); and does what the magic destination
numbers of :mod:`loadtests._binsim` ask (444 → result 8, 445 → result 20, 446 → result 13). Its
parsing is its own (``struct`` and ``hashlib``), not the gateway's codec.

One command::

    python -m loadtests.ismg_sim --port 7890 --version 3.0 --latency-ms 10 --receipt-delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
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

__all__ = ["Ismg", "IsmgConfig", "IsmgThread", "main"]

H = struct.Struct(">III")
RESP = 0x80000000
STAT = {"666": "UNDELIV", "667": "EXPIRED"}
REFUSE = {"444": 8, "445": 20, "446": 13}


@dataclass
class IsmgConfig(BinSimConfig):
    """:class:`BinSimConfig` plus CMPP's version and gateway code."""

    version: int = 0x30
    gateway_code: int = 0x2A5A5
    """The 22-bit ISMG code inside every Msg_Id."""
    system_id: str = "901234"
    """The SP_Id (Source_Addr) accepted."""


class _Conn(asyncio.Protocol):
    def __init__(self, ismg: Ismg) -> None:
        self.ismg = ismg
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.bound = False
        self.open = 0
        self.submits = 0
        self.seq = 0x40000000
        self.id = 0
        self.sched: Scheduler | None = None
        self.receiver = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.id = self.ismg.next_number()
        self.ismg.conns[self.id] = self
        self.sched = Scheduler(asyncio.get_running_loop(), self.write)
        self.ismg.stats["connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.ismg.conns.pop(self.id, None)
        if self.sched is not None:
            self.sched.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        at, end = 0, len(buf)
        out: list[bytes] = []
        while end - at >= 12:
            n = int.from_bytes(buf[at : at + 4], "big")
            if n < 12 or n > 4096:
                self.abort()
                return
            if end - at < n:
                break
            reply = self.pdu(buf[at : at + n])
            if reply is None:
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

    @property
    def v3(self) -> bool:
        return self.ismg.config.version >= 0x30

    def pdu(self, pdu: bytes) -> bytes | None:
        _, cmd, seq = H.unpack_from(pdu)
        ismg, cfg = self.ismg, self.ismg.config
        if cmd == 0x04:
            return self.submit(pdu, seq)
        if cmd == 0x01:
            source = pdu[12:18].rstrip(b"\x00").decode()
            auth = pdu[18:34]
            ts = int.from_bytes(pdu[35:39], "big")
            want = hashlib.md5(
                source.encode() + b"\x00" * 9 + cfg.password.encode() + f"{ts:010d}".encode(),
                usedforsecurity=False,
            ).digest()
            status = 0 if (source == cfg.system_id and auth == want) else 3
            width = 4 if self.v3 else 1
            ismg_auth = hashlib.md5(
                status.to_bytes(width, "big") + auth + cfg.password.encode(), usedforsecurity=False
            ).digest()
            body = status.to_bytes(width, "big") + ismg_auth + bytes((cfg.version,))
            if status:
                ismg.stats["bind_refused"] += 1
            else:
                self.bound = True
                ismg.stats["binds"] += 1
                ismg.bound.set()
            return H.pack(12 + len(body), 0x01 | RESP, seq) + body
        if cmd == 0x08:
            ismg.stats["enquire_link"] += 1
            return H.pack(13, 0x08 | RESP, seq) + b"\x00"
        if cmd == 0x02:
            ismg.stats["unbind"] += 1
            self.write(H.pack(12, 0x02 | RESP, seq))
            assert self.transport is not None
            self.transport.close()
            return b""
        if cmd == 0x05 | RESP:
            ismg.stats["deliver_sm_resp"] += 1
            return b""
        if cmd & RESP:
            return b""
        ismg.stats[f"unknown_{cmd:#x}"] += 1
        return b""

    def msg_id(self) -> int:
        n = self.ismg.next_number()
        t = time.localtime()
        v = t.tm_mon
        for field, bits in ((t.tm_mday, 5), (t.tm_hour, 5), (t.tm_min, 6), (t.tm_sec, 6)):
            v = (v << bits) | field
        return (((v << 22) | self.ismg.config.gateway_code) << 16) | (n & 0xFFFF)

    def submit(self, pdu: bytes, seq: int) -> bytes | None:
        ismg, cfg = self.ismg, self.ismg.config
        ismg.stats["submit_sm"] += 1
        self.submits += 1
        width = 4 if self.v3 else 1
        t = 32 if self.v3 else 21

        def answer(msg_id: int, result: int) -> bytes:
            body = msg_id.to_bytes(8, "big") + result.to_bytes(width, "big")
            return H.pack(12 + len(body), 0x04 | RESP, seq) + body

        if not self.bound:
            return answer(0, 1)
        if cfg.drop_after and self.submits > cfg.drop_after:
            ismg.stats["dropped"] += 1
            return None
        at = 12 + 8
        pk_total, pk_number, reg = pdu[at], pdu[at + 1], pdu[at + 2]
        at += 4 + 10 + 1 + t + (1 if self.v3 else 0)
        udhi, fmt = pdu[at + 1], pdu[at + 2]
        at += 3 + 6 + 2 + 6 + 17 + 17 + 21
        n_dest = pdu[at]
        at += 1
        dest = pdu[at : at + t].rstrip(b"\x00").decode()
        at += t * n_dest + (1 if self.v3 else 0)
        length = pdu[at]
        content = pdu[at + 1 : at + 1 + length]
        fate = ismg.fate(dest)
        if fate == "997":
            ismg.stats["dropped"] += 1
            return None
        if fate == "999":
            ismg.stats["unanswered"] += 1
            return b""
        if cfg.window and self.open >= cfg.window:
            ismg.stats["window_violations"] += 1
            return answer(0, 8)
        if ismg.over_rate():
            ismg.stats["throttled"] += 1
            return answer(0, 8)
        if fate in REFUSE:
            ismg.stats[f"refused_{REFUSE[fate]}"] += 1
            return answer(0, REFUSE[fate])
        mid = self.msg_id()
        ismg.stats["accepted"] += 1
        if cfg.keep:
            ismg.parts.append(
                Part(dest, fmt, bool(udhi), content, str(mid), self.id, None, {"pk": (pk_total, pk_number)})
            )
        resp = answer(mid, 0)
        receipt = self.report(mid, dest, fate) if reg and cfg.receipts else b""
        if fate == "669" and receipt:
            self.write(receipt)
            receipt = b""
        delay = cfg.slow_ms if fate == "998" else cfg.latency_ms
        assert self.sched is not None
        if delay <= 0:
            if receipt:
                self.sched.after(cfg.receipt_delay_ms / 1000, receipt)
            return resp
        self.open += 1
        self.sched.after(delay / 1000, resp, lambda: self._answered(receipt))
        return b""

    def _answered(self, receipt: bytes) -> None:
        self.open -= 1
        if receipt:
            assert self.sched is not None
            self.sched.after(self.ismg.config.receipt_delay_ms / 1000, receipt)

    def report(self, mid: int, dest: str, fate: str) -> bytes:
        t = 32 if self.v3 else 21
        now = time.strftime("%y%m%d%H%M").encode()
        stat = STAT.get(fate, "DELIVRD").encode()
        content = (
            mid.to_bytes(8, "big")
            + stat.ljust(7, b"\x00")
            + now
            + now
            + dest.encode().ljust(t, b"\x00")
            + b"\x00\x00\x00\x01"
        )
        out = self.deliver(dest, 0, 0, content, 1)
        self.ismg.stats["receipts"] += 1
        if fate == "668":
            out += self.deliver(dest, 0, 0, content, 1)
            self.ismg.stats["receipts"] += 1
        return out

    def deliver(
        self, src: str, udhi: int, fmt: int, content: bytes, reg: int, dest: str = "10690000"
    ) -> bytes:
        t = 32 if self.v3 else 21
        body = (
            self.ismg.next_number().to_bytes(8, "big")
            + dest.encode().ljust(21, b"\x00")
            + b"\x00" * 10
            + bytes((0, udhi, fmt))
            + src.encode().ljust(t, b"\x00")
            + (b"\x00" if self.v3 else b"")
            + bytes((reg, len(content)))
            + content
            + b"\x00" * (20 if self.v3 else 8)
        )
        return H.pack(12 + len(body), 0x05, self.next_seq()) + body


class Ismg(BinSimServer):
    """The ISMG: see the module docstring."""

    connection_class = _Conn
    config: IsmgConfig

    def __init__(self, config: IsmgConfig | None = None) -> None:
        super().__init__(config or IsmgConfig())

    def inject_mo(self, source: str, text: str, *, per_part: int = 0) -> None:
        """Send an MO (UCS-2) from ``source`` on every connection, with a UDH when ``per_part`` is set."""

        def send() -> None:
            pieces = [text[i : i + per_part] for i in range(0, len(text), per_part)] if per_part else [text]
            ref = self.next_number() & 0xFF
            for conn in list(self.conns.values()):
                if not conn.bound:
                    continue
                for k, piece in enumerate(pieces, 1):
                    raw = piece.encode("utf-16-be")
                    udhi = 0
                    if len(pieces) > 1:
                        raw = bytes((5, 0, 3, ref, len(pieces), k)) + raw
                        udhi = 1
                    conn.write(conn.deliver(source, udhi, 8, raw, 0))
                self.stats["mo"] += 1

        self.call(send)


class IsmgThread(ServerThread):
    """An :class:`Ismg` on its own loop in a thread: ``with IsmgThread(cfg) as ismg: ismg.port``."""

    def __init__(self, config: IsmgConfig | None = None) -> None:
        super().__init__(Ismg(config))


def main(argv: list[str] | None = None) -> int:
    """Run the ISMG in the foreground until Ctrl-C."""
    p = argparse.ArgumentParser(description="Pigeon's CMPP ISMG simulator (loopback only)")
    p.add_argument("--port", type=int, default=7890)
    add_arguments(p)
    p.add_argument("--version", choices=["2.0", "3.0"], default="3.0")
    args = p.parse_args(argv)
    kw = config_from(args)
    if kw["system_id"] == BinSimConfig.system_id:
        kw["system_id"] = IsmgConfig.system_id
    cfg = IsmgConfig(version=0x30 if args.version == "3.0" else 0x20, **kw)
    ismg = Ismg(cfg)
    where = f"{cfg.host}:{cfg.port} (SP_Id {cfg.system_id!r})"
    print(f"ISMG simulator (CMPP {args.version}) on {where}; Ctrl-C stops it")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(ismg.serve())
    print(dict(ismg.stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
