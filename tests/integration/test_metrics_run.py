"""Metrics of real runs, on both event loops: the registry agrees exactly with the run's summary and
with what the simulator saw; ``/metrics`` answers mid-run; ``pigeon send --metrics-port`` serves and
stops."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.core.clock import SystemClock
from engine.observability.metrics import Metrics
from engine.observability.report import RunSummary
from engine.run.blast import _send
from engine.run.plan import new_run_dir, prepare
from loadtests.simulator import SimConfig, SimulatorThread

pytestmark = pytest.mark.anyio

SEGMENT = (
    "phone,name,coupon\n"
    + "".join(f"1380013{i:04d},客{i},20\n" for i in range(40))  # China Mobile
    + "".join(f"1300013{i:04d},客{i},20\n" for i in range(25))  # Unicom
    + "".join(f"1330013{i:04d},客{i},20\n" for i in range(15))  # Telecom
    + "13800130000,again,20\n13800130001,again,20\n"  # duplicates
    + "12345,bad,20\n,nobody,20\n01012345678,landline,20\n19212345678,广电,20\n"  # bad ×3, Broadnet
)


def _sum(m: Metrics, family: str, **labels: str) -> float:
    """Sum of a family's samples whose labels include ``labels``."""
    total = 0.0
    for f in m.registry.collect():
        for s in f.samples:
            if s.name == family and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _by(m: Metrics, family: str, label: str, **labels: str) -> dict[str, float]:
    out: Counter[str] = Counter()
    for f in m.registry.collect():
        for s in f.samples:
            if s.name == family and all(s.labels.get(k) == v for k, v in labels.items()) and s.value:
                out[s.labels[label]] += int(s.value)
    return dict(out)


def _http_engine(
    tmp_path: Path,
    port: int,
    *,
    backup: int | None = None,
    extra: str = "",
    max_batch: int = 7,
    options: str = "",
    max_attempts: int = 20,
) -> None:
    backup_section = (
        f"""
[gateways.backup]
plugin = "http"
[gateways.backup.options]
url = "http://127.0.0.1:{backup}/send"
max_batch = {max_batch}
"""
        if backup
        else ""
    )
    (tmp_path / "engine.toml").write_text(
        f"""batch_size = 16
[retry]
max_attempts = {max_attempts}
base = 0.01
cap = 0.05
[gateways.sim]
plugin = "http"
breaker_cooldown = 0.05
{extra}
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = {max_batch}
{options}
{backup_section}""",
        encoding="utf-8",
    )


async def _run(tmp_path: Path, campaign: Path, metrics: Metrics) -> RunSummary:
    plan = prepare(campaign)
    return await _send(plan, new_run_dir(plan, tmp_path / "runs"), None, SystemClock(), metrics=metrics)


def _check_against_summary(m: Metrics, summary: RunSummary) -> None:
    """What every run's metrics must agree with, exactly."""
    assert _sum(m, "pigeon_stage_messages_in_total", stage="source") == summary.rows
    dropped = _by(m, "pigeon_stage_messages_dropped_total", "reason")
    by_reason: Counter[str] = Counter()
    for state in ("rejected", "suppressed", "deferred"):
        by_reason.update(summary.reasons.get(state, {}))
    assert dropped == dict(by_reason)
    for carrier, c in summary.carriers.items():
        assert _sum(m, "pigeon_messages_total", carrier=carrier, outcome="accepted") == c.messages
        assert _sum(m, "pigeon_message_parts_total", carrier=carrier, outcome="accepted") == c.parts
    assert _sum(m, "pigeon_messages_total", outcome="accepted") == summary.states.get("sent", 0)
    failed = _sum(m, "pigeon_messages_total", outcome="failed") + _sum(
        m, "pigeon_messages_total", outcome="rejected"
    )
    assert failed == summary.states.get("failed", 0)
    assert _sum(m, "pigeon_messages_total", outcome="unknown") == summary.states.get("unknown", 0)
    # Everything handed to the lanes left them; no request is open.
    assert _sum(m, "pigeon_queued_messages") == 0
    assert _sum(m, "pigeon_gateway_in_flight_requests") == 0


async def test_a_run_to_the_file_gateway_counts_exactly_what_the_summary_says(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv", engine_kwargs={"batch_size": 16, "max_batch": 10})
    m = Metrics(backend="test")
    summary = await _run(tmp_path, campaign, m)
    assert summary.states["sent"] == 81
    assert summary.reasons["suppressed"] == {"duplicate": 2}
    _check_against_summary(m, summary)
    assert _by(m, "pigeon_messages_total", "carrier", outcome="accepted") == {
        "cm": 40,
        "cu": 25,
        "ct": 15,
        "cbn": 1,
    }
    # Each stage hands on what the next one takes in.
    stages = ["source", "normalize", "suppress_optouts", "route", "render", "count_parts", "dedupe"]
    for a, b in itertools.pairwise(stages):
        assert _sum(m, "pigeon_stage_messages_out_total", stage=a) == _sum(
            m, "pigeon_stage_messages_in_total", stage=b
        )
    assert _sum(m, "pigeon_stage_messages_dropped_total", stage="dedupe", reason="duplicate") == 2
    requests = summary.gateways["out"].requests
    assert _sum(m, "pigeon_gateway_request_duration_seconds_count", outcome="ok") == requests
    assert _sum(m, "pigeon_ratelimit_wait_seconds_count") == 0  # no rate limit configured: no wait measured


async def test_faults_at_the_simulator_are_counted_as_the_simulator_saw_them(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    m = Metrics()
    with SimulatorThread(SimConfig(p_5xx=0.3, p_429=0.2, p_reject=0.05, retry_after=0.01, seed=7)) as sim:
        _http_engine(tmp_path, sim.port)
        summary = await _run(tmp_path, campaign, m)
    _check_against_summary(m, summary)
    assert sim.stats["5xx"] > 0 and sim.stats["429"] > 0 and sim.stats["rejected"] > 0
    requests = "pigeon_gateway_request_duration_seconds_count"
    assert _sum(m, requests, gateway="sim") == sim.stats["requests"]
    assert _sum(m, requests, gateway="sim", outcome="unavailable") == sim.stats["5xx"]
    assert _sum(m, requests, gateway="sim", outcome="throttled") == sim.stats["429"]
    assert _sum(m, "pigeon_messages_total", outcome="rejected") == sim.stats["rejected"]
    assert _sum(m, "pigeon_messages_total", outcome="accepted") == sim.stats["accepted"]
    for outcome in ("unavailable", "throttled"):  # every message of a failed request went again
        assert _sum(m, "pigeon_retries_total", gateway="sim", outcome=outcome) == _sum(
            m, "pigeon_gateway_request_messages_total", gateway="sim", outcome=outcome
        )
    assert _sum(m, "pigeon_failovers_total") == 0


@pytest.mark.parametrize(
    ("config", "outcome", "request_outcome"),
    [
        (SimConfig(p_reject=1.0), "rejected", "ok"),
        (SimConfig(p_5xx=1.0), "failed", "unavailable"),
        (SimConfig(p_drop=1.0), "unknown", "timeout"),
        (SimConfig(token="right"), "", "auth"),
    ],
    ids=["rejects", "5xx", "dropped", "auth"],
)
async def test_each_fault_ends_in_its_outcome_with_nothing_left_queued(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    config: SimConfig,
    outcome: str,
    request_outcome: str,
) -> None:
    monkeypatch.setenv("SIM_TOKEN", "wrong")
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    m = Metrics()
    with SimulatorThread(config) as sim:
        _http_engine(tmp_path, sim.port, options='timeout = 0.3\ntoken_env = "SIM_TOKEN"', max_attempts=2)
        summary = await _run(tmp_path, campaign, m)
    _check_against_summary(m, summary)  # nothing queued or in flight once retries ran out
    if outcome:
        assert _sum(m, "pigeon_messages_total", outcome=outcome) == 81
    else:  # credentials refused: the run halts, stops reading, and every message it read is pending
        assert summary.halted == "gateway_refused"
        dropped = summary.states.get("rejected", 0) + summary.states.get("suppressed", 0)
        assert summary.states["pending"] == summary.rows - dropped > 0
        assert _sum(m, "pigeon_messages_total") == 0
    requests = _by(m, "pigeon_gateway_request_duration_seconds_count", "outcome", gateway="sim")
    assert set(requests) == {request_outcome}
    assert requests[request_outcome] == sim.stats["requests"]


async def test_a_failover_is_counted_once_per_message(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    m = Metrics()
    with SimulatorThread(SimConfig(p_5xx=1.0)) as down, SimulatorThread(SimConfig()) as up:
        _http_engine(tmp_path, down.port, backup=up.port)
        summary = await _run(tmp_path, campaign, m)
    _check_against_summary(m, summary)
    assert summary.states["sent"] == 81 == len(up.log)
    assert _by(m, "pigeon_failovers_total", "carrier", gateway="backup") == {
        "cm": 40,
        "cu": 25,
        "ct": 15,
        "cbn": 1,
    }
    assert _sum(m, "pigeon_messages_total", gateway="backup", outcome="accepted") == 81
    assert (
        _sum(m, "pigeon_gateway_request_duration_seconds_count", gateway="sim", outcome="unavailable")
        == (down.stats["5xx"])
    )


def _scrape_values(body: str) -> dict[str, float]:
    out: Counter[str] = Counter()
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[s.name] += s.value
    return dict(out)


async def test_metrics_are_scraped_mid_run(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    """A scrape while the blast runs sees it part-way: some sent, a request open; the last one all."""
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    m = Metrics()
    seen: list[dict[str, float]] = []
    with SimulatorThread(SimConfig(latency_ms=15)) as sim, m.serve("127.0.0.1", 0) as server:
        _http_engine(tmp_path, sim.port, extra="in_flight = 1", max_batch=1)
        done = anyio.Event()

        async def blast() -> None:
            try:
                await _run(tmp_path, campaign, m)
            finally:
                done.set()

        async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
            tg.start_soon(blast)
            while not done.is_set():
                resp = await client.get(server.url)
                assert resp.status_code == 200
                seen.append(_scrape_values(resp.text))
                await anyio.sleep(0.01)
            resp = await client.get(server.url)
            seen.append(_scrape_values(resp.text))
    sent = [s["pigeon_messages_total"] for s in seen]
    assert any(0 < n < 81 for n in sent)
    assert any(s["pigeon_gateway_in_flight_requests"] == 1 for s in seen)
    assert sent == sorted(sent) and sent[-1] == 81 == len(sim.log)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pigeon_send_serves_metrics_during_the_run_and_stops_after(
    backend: str,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    with SimulatorThread(SimConfig(latency_ms=15)) as sim:
        _http_engine(tmp_path, sim.port, extra="in_flight = 1", max_batch=1)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "send",
                str(campaign),
                "-q",
                "--backend",
                backend,
                "--metrics-port",
                "0",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUTF8": "1"},
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("metrics: http://127.0.0.1:"), line
        url = line.split(" ", 1)[1].strip()
        scrapes: list[str] = []
        while proc.poll() is None and not any(_mid_run(b) for b in scrapes):
            with urllib.request.urlopen(url, timeout=10) as resp:
                scrapes.append(resp.read().decode())
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    body = next(b for b in scrapes if _mid_run(b))
    assert _scrape_values(body)["pigeon_build_info"] == 1
    assert f'backend="{backend}"' in body
    assert 'pigeon_gateway_in_flight_limit{gateway="sim"} 1.0' in body
    assert 'pigeon_stage_messages_dropped_total{reason="duplicate",stage="dedupe"}' in body
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)  # the server stopped with the run


def _mid_run(body: str) -> bool:
    return 0 < _scrape_values(body).get("pigeon_messages_total", 0) < 81
