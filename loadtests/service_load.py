"""Load test: a blast through ``pigeon serve`` while transactional messages are posted to its API.

Three processes on loopback: the gateway simulator, ``pigeon serve`` and this client. In one run:

1. baseline: the blast alone (``POST /v1/campaigns``), its throughput, and ``/metrics`` scrape time idle;
2. the same blast again while ``--rate`` transactional messages a second are posted to
   ``POST /v1/messages`` (one message per request) until it ends; ``/metrics`` is scraped every
   half second meanwhile.

Reported: the blast's throughput alone and under transactional load; for transactional messages
the latency from API accept to the gateway request (the service's ``accepted_at`` →
``submitted_at``, recorded just before the request is written) and, end to end, from the client's
POST to the simulator's arrival time (both on the machine's monotonic clock); the scrape time of
``/metrics`` idle and under load. Bounded: each phase stops by itself after ``--max-seconds``.

    python -m loadtests.service_load --rows 1000000 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from loadtests._host import cpu_seconds, free_port
from loadtests._report import emit
from loadtests._segment import write_marketing_campaign

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_pct(values, 0.5) * 1000, 2),
        "p99_ms": round(_pct(values, 0.99) * 1000, 2),
        "p99.9_ms": round(_pct(values, 0.999) * 1000, 2),
        "max_ms": round(max(values, default=0.0) * 1000, 2),
    }


def simulator_process(port: int, out: Path) -> None:
    """Run the simulator; on SIGTERM write the arrival time of every API message to ``out``."""
    import asyncio

    from loadtests.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(port=port))

    async def main() -> None:
        task = asyncio.create_task(sim.serve())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        task.cancel()

    asyncio.run(main())
    api = {mid: t for t, mid, *_ in sim.log if mid.startswith(("api-", "msg_"))}  # (msg_: opaque API ids)
    out.write_text(json.dumps({"api": api, "total": len(sim.log)}))


def _write_files(tmp: Path, sim_port: int, rows: int) -> None:
    (tmp / "engine.toml").write_text(
        f"""batch_size = 1024
runs_dir = "runs"
[gateways.sim]
plugin = "http"
in_flight = 4
[gateways.sim.options]
url = "http://127.0.0.1:{sim_port}/send"
max_batch = 100
max_connections = 12
[service]
signature = "小鹅优选"
campaigns_dir = "campaigns"
transactional_in_flight = 8
log_level = "warning"
[service.templates.code]
text = "验证码{{code}}，5分钟内有效"
""",
        encoding="utf-8",
    )
    camp = tmp / "campaigns"
    camp.mkdir()
    with (camp / "seg.csv").open("w", encoding="utf-8") as fh:
        fh.write("phone,name\n")
        step = 100_000
        for start in range(0, rows, step):
            fh.write("".join(f"138{i:08d},客{i % 1000}\n" for i in range(start, min(rows, start + step))))
    for cid in ("alone", "loaded"):
        write_marketing_campaign(camp, cid)


class RawPoster:
    """A lean HTTP/1.1 client for the posts: keep-alive connections, one request at a time on each.

    The load generator must not be what limits the rate: ``httpx`` costs ~1–3 ms of CPU a request
    (loadtests/results-http-blast.json), which on a shared 2-core machine caps one client near
    60 posts/s; this one writes a pre-built request and reads a Content-Length answer.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str], limit: int = 64) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``path``; the status and the answer's body."""
        if self.idle:
            r, w = self.idle.pop()
        else:
            r, w = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
        w.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n%s"
            % (path.encode(), self.host.encode(), len(body), self.extra, body)
        )
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = await r.readexactly(length)
        if b"connection: close" in head.lower():
            w.close()
        else:
            self.idle.append((r, w))
        return status, answer

    def close(self) -> None:
        """Close the idle connections."""
        for _, w in self.idle:
            w.close()
        self.idle.clear()


async def _scrape(c: httpx.AsyncClient) -> float:
    t = time.perf_counter()
    r = await c.get("/metrics")
    r.raise_for_status()
    return time.perf_counter() - t


async def _blast(c: httpx.AsyncClient, cid: str, max_seconds: float) -> dict[str, Any]:
    r = await c.post("/v1/campaigns", json={"file": f"{cid}.toml"})
    r.raise_for_status()
    with anyio.move_on_after(max_seconds):
        while True:
            await anyio.sleep(0.2)
            view: dict[str, Any] = (await c.get(f"/v1/campaigns/{cid}")).json()
            if view["done"]:
                break
    view = (await c.get(f"/v1/campaigns/{cid}")).json()
    if not view["done"]:
        await c.post(f"/v1/campaigns/{cid}/cancel")
    sent = view["states"].get("sent", 0)
    return {
        "state": view["state"],
        "sent": sent,
        "elapsed_s": view["elapsed_seconds"],
        "msgs_per_s": round(sent / view["elapsed_seconds"], 1) if view["elapsed_seconds"] else 0.0,
    }


async def _run(url: str, rate: float, max_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, limits=limits, timeout=30) as c:
        idle = [await _scrape(c) for _ in range(20)]
        out["metrics_scrape_idle"] = _ms(idle)
        out["blast_alone"] = await _blast(c, "alone", max_seconds)

        sent: dict[str, float] = {}
        refused: list[int] = []
        done = anyio.Event()

        host, port = url.removeprefix("http://").split(":")
        poster_client = RawPoster(host, int(port), HEADERS)

        async def post(i: int) -> None:
            message = {"to": f"139{i:08d}", "template": "code", "fields": {"code": f"{i % 10000:04d}"}}
            body = json.dumps({"priority": "transactional", "messages": [message]}).encode()
            t = time.monotonic()
            status, answer = await poster_client.post("/v1/messages", body)
            if status != 202:
                refused.append(status)
                return
            sent[json.loads(answer)["messages"][0]["id"]] = t

        async def poster() -> None:
            start = time.monotonic()
            i = 0
            async with anyio.create_task_group() as tg:
                while not done.is_set() and time.monotonic() - start < max_seconds:
                    tg.start_soon(post, i)
                    i += 1
                    await anyio.sleep(max(0.0, start + i / rate - time.monotonic()))

        scrapes: list[float] = []

        async def scraper() -> None:
            while not done.is_set():
                scrapes.append(await _scrape(c))
                await anyio.sleep(0.5)

        cpu = cpu_seconds()
        async with anyio.create_task_group() as tg:
            tg.start_soon(poster)
            tg.start_soon(scraper)
            out["blast_with_transactional"] = await _blast(c, "loaded", max_seconds)
            done.set()
        out["client_cpu_s_while_loaded"] = round(cpu_seconds() - cpu, 2)
        out["client_connections"] = poster_client.opened
        poster_client.close()
        out["metrics_scrape_under_load"] = _ms(scrapes)
        await anyio.sleep(1.0)  # the last transactional messages leave
        accept_to_request: list[float] = []
        states: dict[str, int] = {}
        for mid in sent:
            v = (await c.get(f"/v1/messages/{mid}")).json()
            states[v["state"]] = states.get(v["state"], 0) + 1
            if v.get("submitted_at"):
                accept_to_request.append(v["submitted_at"] - v["accepted_at"])
        out["transactional"] = {
            "posted": len(sent) + len(refused),
            "accepted": len(sent),
            "refused": len(refused),
            "states": states,
            "accept_to_gateway_request": _ms(accept_to_request),
        }
        out["_sent_at"] = sent
    return out


HEADERS: dict[str, str] = {}


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print (and save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=200.0, help="transactional messages per second")
    p.add_argument("--max-seconds", type=float, default=300.0, help="bound on each phase")
    p.add_argument("--simulator", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=HERE / "results-service-load.json")
    args = p.parse_args(argv)
    if args.simulator:
        simulator_process(int(args.simulator[0]), Path(args.simulator[1]))
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sim_port, port = free_port(), free_port()
        _write_files(tmp, sim_port, args.rows)
        from engine.service.apikeys import KeyRing

        HEADERS["authorization"] = "Bearer " + KeyRing(tmp / "api-keys.json").create("load")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtests.service_load",
                "--simulator",
                str(sim_port),
                str(tmp / "sim.json"),
            ],
            cwd=ROOT,
            env=env,
        )
        svc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "serve",
                "--engine",
                str(tmp / "engine.toml"),
                "--port",
                str(port),
            ],
            cwd=tmp,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not become ready")
                time.sleep(0.2)
            result = anyio.run(_run, url, args.rate, args.max_seconds, backend="asyncio")
        finally:
            svc.send_signal(signal.SIGTERM)
            rc = svc.wait(120)
            sim.send_signal(signal.SIGTERM)
            sim.wait(60)
        arrivals = json.loads((tmp / "sim.json").read_text())
        sent_at = result.pop("_sent_at")
        e2e = [arrivals["api"][m] - t for m, t in sent_at.items() if m in arrivals["api"]]
        result["transactional"]["post_to_simulator_arrival"] = _ms(e2e)
        result["transactional"]["received_by_simulator"] = len(e2e)
        result["simulator_total_messages"] = arrivals["total"]
        result["service_exit_code"] = rc
        a, b = result["blast_alone"]["msgs_per_s"], result["blast_with_transactional"]["msgs_per_s"]
        result["blast_throughput_ratio"] = round(b / a, 3) if a else 0.0
        result["params"] = {"rows": args.rows, "rate": args.rate, "cpus": os.cpu_count()}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
