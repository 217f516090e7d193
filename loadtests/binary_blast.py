"""Load test: the ``smpp`` and ``cmpp`` gateways against their simulators, beside a naive windowed client.

The simulator (``loadtests.smsc_sim`` / ``loadtests.ismg_sim``) runs in its own process (the
second core). In one run, for each protocol:

* ``engine_instant``: ``pigeon send`` of a segment (every engine policy on: normalize, dedupe,
  opt-outs, routing, rendering, part counting, the ledger, metrics) through one bind to a
  simulator that answers at once, no receipts: submits per second and client CPU per message;
* ``gateway_10ms_receipts``: the gateway alone, one bind, window 100, the simulator answering each
  submit after 10 ms and sending a receipt for every message: messages per second and whether
  every receipt correlated;
* ``naive_*``: the same two loads through a naive windowed client (one task and one future per
  submit, a semaphore as the window, a reader task: the usual asyncio pattern).

Bounded: ``--messages`` (default 100,000) per scenario. CPU is this process's user+system time.

    python -m loadtests.binary_blast --messages 100000 --json loadtests/results-binary-blast.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests._host import cpu_seconds, free_port
from loadtests._report import emit
from loadtests._segment import segment_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PASSWORD_ENV = "PIGEON_LOAD_BINARY_SECRET"
TEXT = "【鸽子商城】您的双十一优惠券已到账，请于三日内使用。"


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sim:
    """A simulator process for the block."""

    def __init__(self, protocol: str, *args: str) -> None:
        self.port = free_port()
        module = "loadtests.smsc_sim" if protocol == "smpp" else "loadtests.ismg_sim"
        extra = ["--system-id", "pigeon"] if protocol == "smpp" else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "--port",
                str(self.port),
                "--no-magic",
                "--password",
                "secret",
                *extra,
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def gateway_options(protocol: str, port: int, window: int) -> str:
    """The ``[gateways.g.options]`` lines for ``protocol`` on ``port``."""
    common = f'host = "127.0.0.1"\nport = {port}\nwindow = {window}\nmax_batch = 1000\n'
    if protocol == "smpp":
        return common + f'system_id = "pigeon"\npassword_env = "{PASSWORD_ENV}"\n'
    return common + f'source_addr = "901234"\nsecret_env = "{PASSWORD_ENV}"\nsrc_id = "10690001"\n'


def engine_instant(protocol: str, rows: int, window: int, tmp: Path) -> dict[str, Any]:
    """``pigeon send`` of a ``rows`` segment through one bind; the simulator answers at once."""
    from engine.observability.metrics import Metrics
    from engine.run.plan import prepare
    from engine.run.send import send

    with Sim(protocol, "--no-receipts") as sim:
        (tmp / "engine.toml").write_text(
            f"""
[carriers.cm]
rate_per_second = 1000000
[carriers.cu]
rate_per_second = 1000000
[carriers.ct]
rate_per_second = 1000000
[carriers.cbn]
rate_per_second = 1000000
[gateways.g]
plugin = "{protocol}"
in_flight = 2
[gateways.g.options]
{gateway_options(protocol, sim.port, window)}
""",
            encoding="utf-8",
        )
        (tmp / "campaign.toml").write_text(
            f"""
id = "binary-blast-{protocol}"
engine = "engine.toml"
[segment]
source = "csv"
path = "{segment_of(rows)}"
[template]
signature = "小鹅优选"
text = "{{name|亲爱的会员}}，您在{{city}}的{{coupon}}元双11专属券已到账"
[policy]
send_window = ""
""",
            encoding="utf-8",
        )
        plan = prepare(tmp / "campaign.toml")
        sim_cpu, cpu, started = sim.cpu(), cpu_seconds(), time.perf_counter()
        summary = send(
            plan, runs_dir=tmp / "runs", metrics=Metrics(backend="asyncio"), ledger=True, again=True
        )
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        sent = summary.states.get("sent", 0)
        return {
            "rows": summary.rows,
            "sent": sent,
            "parts": summary.gateways["g"].parts if hasattr(summary.gateways["g"], "parts") else None,
            "seconds": round(elapsed, 2),
            "messages_per_s": round(sent / elapsed),
            "client_cpu_us_per_message": round(cpu / max(1, sent) * 1e6, 1),
            "simulator_cpu_s": round(sim.cpu() - sim_cpu, 2),
            "window": window,
            "states": summary.states,
        }


async def gateway_receipts(protocol: str, n: int, window: int, latency_ms: float) -> dict[str, Any]:
    """The gateway alone: ``n`` messages in batches of 1000, two sends in flight, every receipt awaited."""
    import anyio

    from engine.core.messages import MessageBatch
    from engine.sending.testing import gateway_context
    from plugins.session_core.pool import Inbox

    with Sim(protocol, "--latency-ms", str(latency_ms), "--receipt-delay-ms", "20") as sim:
        if protocol == "smpp":
            from plugins.gateway_smpp.hooks import SmppConfig, SmppGateway

            gw: Any = SmppGateway(
                SmppConfig(
                    host="127.0.0.1",
                    port=sim.port,
                    system_id="pigeon",
                    password_env=PASSWORD_ENV,
                    window=window,
                ),
                gateway_context("load"),
            )
        else:
            from plugins.gateway_cmpp.hooks import CmppConfig, CmppGateway

            gw = CmppGateway(
                CmppConfig(
                    host="127.0.0.1",
                    port=sim.port,
                    source_addr="901234",
                    secret_env=PASSWORD_ENV,
                    window=window,
                ),
                gateway_context("load"),
            )
        inbox = Inbox(limit=n + 10)
        gw.attach(inbox)
        size = 1000
        batches = [
            MessageBatch(
                "cm",
                rows=list(range(s, min(n, s + size))),
                numbers=[f"139{i:08d}"[:11] for i in range(s, min(n, s + size))],
                texts=[TEXT] * (min(n, s + size) - s),
                parts=[1] * (min(n, s + size) - s),
                id_prefix="load-",
            )
            for s in range(0, n, size)
        ]
        accepted = 0
        sim_cpu, cpu, started = sim.cpu(), cpu_seconds(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gw.serve)
            queue = list(reversed(batches))

            async def sender() -> None:
                nonlocal accepted
                while queue:
                    results = await gw.send(queue.pop())
                    accepted += sum(1 for r in results if r.outcome.value == "accepted")

            async with anyio.create_task_group() as senders:
                for _ in range(2):
                    senders.start_soon(sender)
            submitted = time.perf_counter() - started
            with anyio.move_on_after(30):
                while len(inbox.delivery_reports) < accepted:
                    await inbox.changed.wait()
            tg.cancel_scope.cancel()
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        await gw.aclose()
        matched = sum(1 for r in inbox.delivery_reports if r.message_id)
        stats = next(iter(gw.bind_stats.values()))
        return {
            "messages": n,
            "accepted": accepted,
            "submit_seconds": round(submitted, 2),
            "messages_per_s": round(accepted / submitted),
            "receipts": len(inbox.delivery_reports),
            "receipts_correlated": matched,
            "all_receipts_correlated": matched == accepted,
            "seconds_until_last_receipt": round(elapsed, 2),
            "client_cpu_us_per_message": round(cpu / max(1, n) * 1e6, 1),
            "simulator_cpu_s": round(sim.cpu() - sim_cpu, 2),
            "window": window,
            "latency_ms": latency_ms,
            "mean_round_trip_ms": round(stats.latency_sum / max(1, stats.answers) * 1000, 2),
        }


# -- the naive windowed client: one task and one future per submit, a semaphore as the window ----------


def _naive_smpp_bind(seq: int) -> bytes:
    body = b"pigeon\x00secret\x00\x00" + bytes((0x34, 0, 0)) + b"\x00"
    return struct.pack(">IIII", 16 + len(body), 9, 0, seq) + body


def _naive_smpp_submit(seq: int, dest: str, sm: bytes) -> bytes:
    body = b"\x00" + bytes((0, 0)) + b"10690000\x00" + bytes((1, 1)) + dest.encode() + b"\x00"
    body += bytes((0, 0, 0)) + b"\x00\x00" + bytes((1, 0, 8, 0, len(sm))) + sm
    return struct.pack(">IIII", 16 + len(body), 4, 0, seq) + body


def _naive_cmpp_bind(seq: int) -> bytes:
    digits = time.strftime("%m%d%H%M%S")
    auth = hashlib.md5(b"901234" + b"\x00" * 9 + b"secret" + digits.encode()).digest()
    body = b"901234" + auth + b"\x30" + int(digits).to_bytes(4, "big")
    return struct.pack(">III", 12 + len(body), 1, seq) + body


def _naive_cmpp_submit(seq: int, dest: str, sm: bytes) -> bytes:
    body = b"\x00" * 8 + bytes((1, 1, 1, 0)) + b"\x00" * 10 + b"\x02" + b"\x00" * 33 + bytes((0, 0, 8))
    body += b"901234" + b"01" + b"000000" + b"\x00" * 34 + b"10690001".ljust(21, b"\x00") + b"\x01"
    body += dest.encode().ljust(32, b"\x00") + b"\x00" + bytes((len(sm),)) + sm + b"\x00" * 20
    return struct.pack(">III", 12 + len(body), 4, seq) + body


async def naive(protocol: str, n: int, window: int, latency_ms: float, receipts: bool) -> dict[str, Any]:
    smpp = protocol == "smpp"
    hsize = 16 if smpp else 12
    args = ["--latency-ms", str(latency_ms)] + (
        ["--receipt-delay-ms", "20"] if receipts else ["--no-receipts"]
    )
    with Sim(protocol, *args) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        futures: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        ids: dict[str, int] = {}
        got_receipts = [0]
        correlated = [0]
        all_done = asyncio.Event()

        async def read() -> None:
            while True:
                head = await reader.readexactly(hsize)
                length = int.from_bytes(head[:4], "big")
                body = await reader.readexactly(length - hsize)
                cmd = int.from_bytes(head[4:8], "big")
                seq = int.from_bytes(head[-4:], "big")
                if cmd & 0x80000000:
                    fut = futures.pop(seq, None)
                    if fut is not None and not fut.done():
                        status = (
                            int.from_bytes(head[8:12], "big") if smpp else int.from_bytes(body[8:], "big")
                        )
                        fut.set_result((status, body))
                elif cmd == 5:  # deliver_sm / CMPP_DELIVER: a receipt
                    if smpp:
                        writer.write(struct.pack(">IIII", 17, 0x80000005, 0, seq) + b"\x00")
                        text = body.decode("latin-1")
                        rid = text[text.index("id:") + 3 :].split(" ", 1)[0]
                    else:
                        writer.write(struct.pack(">III", 24, 0x80000005, seq) + body[:8] + b"\x00" * 4)
                        content = body[8 + 21 + 10 + 3 + 32 + 1 + 2 :]
                        rid = str(int.from_bytes(content[:8], "big"))
                    got_receipts[0] += 1
                    if ids.pop(rid, None) is not None:
                        correlated[0] += 1
                    if got_receipts[0] >= n:
                        all_done.set()
                elif cmd in (0x15, 8):  # keepalive
                    writer.write(
                        struct.pack(">IIII", 16, cmd | 0x80000000, 0, seq)
                        if smpp
                        else struct.pack(">III", 13, cmd | 0x80000000, seq) + b"\x00"
                    )

        seq = [1]
        loop = asyncio.get_running_loop()
        writer.write((_naive_smpp_bind if smpp else _naive_cmpp_bind)(seq[0]))
        head = await reader.readexactly(hsize)
        await reader.readexactly(int.from_bytes(head[:4], "big") - hsize)
        task = asyncio.create_task(read())
        sem = asyncio.Semaphore(window)
        sm = TEXT.encode("utf-16-be")
        build = _naive_smpp_submit if smpp else _naive_cmpp_submit
        accepted = [0]

        async def one(i: int) -> None:
            async with sem:
                seq[0] += 1
                s = seq[0]
                fut: asyncio.Future[tuple[int, bytes]] = loop.create_future()
                futures[s] = fut
                writer.write(build(s, f"86139{i:08d}" if smpp else f"139{i:08d}", sm))
                status, body = await fut
                if status == 0:
                    accepted[0] += 1
                    mid = body[:-1].decode() if smpp else str(int.from_bytes(body[:8], "big"))
                    ids[mid] = i

        cpu, started = cpu_seconds(), time.perf_counter()
        sim_cpu = sim.cpu()
        await asyncio.gather(*(one(i) for i in range(n)))
        submitted = time.perf_counter() - started
        if receipts:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_done.wait(), 30)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        task.cancel()
        writer.close()
        out: dict[str, Any] = {
            "messages": n,
            "accepted": accepted[0],
            "messages_per_s": round(accepted[0] / submitted),
            "client_cpu_us_per_message": round(cpu / n * 1e6, 1),
            "simulator_cpu_s": round(sim.cpu() - sim_cpu, 2),
            "window": window,
            "latency_ms": latency_ms,
        }
        if receipts:
            out.update(
                receipts=got_receipts[0],
                receipts_correlated=correlated[0],
                seconds_until_last_receipt=round(elapsed, 2),
            )
        return out


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--window-instant", type=int, default=100)
    p.add_argument("--protocols", default="smpp,cmpp")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    os.environ[PASSWORD_ENV] = "secret"
    import anyio

    report: dict[str, Any] = {"load_average_at_start": os.getloadavg()[0], "messages": args.messages}
    for protocol in args.protocols.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            report[f"{protocol}_engine_instant"] = engine_instant(
                protocol, args.messages, args.window_instant, Path(tmp)
            )
        report[f"{protocol}_naive_instant"] = asyncio.run(
            naive(protocol, args.messages, args.window_instant, 0, False)
        )
        report[f"{protocol}_gateway_10ms_receipts"] = anyio.run(
            gateway_receipts,
            protocol,
            args.messages,
            100,
            10.0,
            backend="asyncio",
            backend_options={"use_uvloop": True},
        )
        report[f"{protocol}_naive_10ms_receipts"] = asyncio.run(
            naive(protocol, args.messages, 100, 10.0, True)
        )
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
