"""Sharded sends: one campaign split across worker processes, one per core.

``pigeon send --shards N`` forks N workers after everything is loaded and checked (plugins,
template, opt-outs and caps history are shared copy-on-write, frozen out of the collector). By
default each worker reads one byte range of the segment, cut on row boundaries
(:func:`shard_ranges`), and the numbers it sees first are claimed in a table in shared memory
(:class:`~engine.core.shared_keys.SharedKeys`, one compare-and-swap per number; logged in the
store when the run keeps a ledger, so that a resume keeps the rows that won): a number in two
ranges is sent once. Opt-outs, caps and the same-content rule need nothing shared — their history
is loaded before the fork and a campaign's repeats are dedupe's. With ``PIGEON_SHARD_BY=hash``
(or a file that cannot be cut: compressed, lone-CR line ends) each worker reads the whole
segment, normalizes every number and keeps those whose key modulo N is its index (and the bad
rows whose row number is): dedupe stays local too. Each carrier's and gateway's rate and each
gateway's in-flight window are split across the workers, so together they keep within the
configured budget. Workers write to the same campaign ledger (one connection each, in turn) and send their
counts to the parent, which shows one progress line, merges the row files, marks the campaign
finished when every shard is, and writes the summary.

Signals go to the parent only (each worker is its own process group); it passes them on, so the
first Ctrl-C drains every shard and the second abandons them, as with one process. A worker that
finds its parent gone stops as on a signal.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import anyio
import msgspec

from engine.core.clock import Clock
from engine.core.config import EngineConfig
from engine.core.errors import ConfigError, EngineError, SourceError
from engine.core.messages import State
from engine.core.shared_keys import LocalKeys, SharedKeys
from engine.observability.metrics import Metrics
from engine.observability.report import RecorderState, RunRecorder, RunSummary
from engine.pipeline.source import RangedSource, SegmentRange
from engine.run.plan import prepare_run
from engine.state.dedupe_claims import DedupeClaims, KeyTable
from engine.state.ledger.run import CampaignLedger

__all__ = ["ShardRun", "check_budgets", "check_shards", "run_shards", "shard_config"]

SHARDS_MAX = 64
"""The most shards a send may have (as the engine key ``shards`` allows)."""

PROGRESS_SECONDS = 0.25
"""How often a worker sends its counts to the parent (and always once at the end)."""

ROW_FILES = {
    State.REJECTED: "rejects.csv",
    State.SUPPRESSED: "suppressed.csv",
    State.DEFERRED: "deferred.csv",
}
"""The row files a run writes (:func:`engine.run.blast._send`), merged from every shard's."""


def _share(value: int, index: int, count: int) -> int:
    """Shard ``index``'s part of ``value``: the parts add up to ``value`` exactly."""
    return value // count + (1 if index < value % count else 0)


def check_shards(config: EngineConfig, file: str, count: int) -> None:
    """Refuse a shard count the machine or the budgets cannot split (before anything is sent)."""
    if not 1 <= count <= SHARDS_MAX:
        raise ConfigError(file, "shards", f"{count} is not a number of shards: use 1 to {SHARDS_MAX}")
    if count == 1:
        return
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(file, "shards", "sharded sends need fork() (Linux, macOS): use shards = 1 here")
    budgets = [(f"carriers.{n}", c.rate_per_second) for n, c in config.carriers.items()]
    budgets += [(f"gateways.{n}", g.rate_per_second) for n, g in config.gateways.items()]
    for key, rate in budgets:
        if rate is not None and rate < count:
            raise ConfigError(
                file,
                f"{key}.rate_per_second",
                f"{rate}/s cannot be split across {count} shards: use at most {rate} shards",
            )


def check_budgets(plan: Any, count: int) -> None:
    """Refuse a campaign one of whose messages could take more parts than a rate on its route
    allows in a second (each shard's part of it): it could never be sent within the rate."""
    cfg, most = plan.engine.config, plan.max_parts
    for carrier, names in plan.failover.items():
        budgets = [
            (
                f"carriers.{carrier}",
                cfg.carriers[carrier].rate_per_second if carrier in cfg.carriers else None,
            )
        ]
        budgets += [(f"gateways.{n}", cfg.gateways[n].rate_per_second) for n in names]
        for key, rate in budgets:
            if rate is not None and rate // count < most:
                per = f" ({rate // count} for each of {count} shards)" if count > 1 else ""
                raise ConfigError(
                    plan.engine.file,
                    f"{key}.rate_per_second",
                    f"{rate} parts a second{per} is below the {most} parts one message of campaign "
                    f"{plan.campaign.id!r} may take (template.max_length = {plan.template.max_length}): "
                    f"raise the rate to at least {most * count}, or lower template.max_length in "
                    f"{plan.campaign.file}",
                )


def shard_config(config: EngineConfig, index: int, count: int) -> EngineConfig:
    """The engine config shard ``index`` of ``count`` runs with: every carrier's and gateway's
    ``rate_per_second`` and every gateway's ``in_flight`` split (at least one request each)."""
    carriers = {
        name: msgspec.structs.replace(
            cc, rate_per_second=_share(cc.rate_per_second, index, count) if cc.rate_per_second else None
        )
        for name, cc in config.carriers.items()
    }
    gateways = {
        name: msgspec.structs.replace(
            gc,
            rate_per_second=_share(gc.rate_per_second, index, count) if gc.rate_per_second else None,
            in_flight=max(1, _share(gc.in_flight, index, count)),
        )
        for name, gc in config.gateways.items()
    }
    return msgspec.structs.replace(config, carriers=carriers, gateways=gateways)


@dataclass
class ShardRun:
    """How a sharded send ended, for :func:`engine.run.send.send`."""

    recorder: RunRecorder
    """Every shard's counts added up."""
    abandoned: bool
    """A second signal abandoned what was in flight."""
    stopped: bool
    """A signal (or a cancel) stopped reading before the end of the segment."""
    complete: bool
    """Every shard handled all of its rows: the campaign can be marked finished."""
    files: dict[str, str]
    """State → the merged row file of the run (``rejects.csv``…)."""
    halted: str = ""
    """The first shard's halt reason (see :attr:`engine.observability.report.RunSummary.halted`)."""
    message: str = ""


def run_shards(
    plan: Any,
    count: int,
    run_dir: Path,
    *,
    progress: Callable[[RunRecorder, float, float | None, bool], None] | None,
    clock: Clock,
    notify: Callable[[str], None] | None,
    ledger: CampaignLedger | None,
    backend: str,
    backend_options: dict[str, Any],
    metrics_port: int | None,
    metrics_addr: str,
    ranged: bool = True,
) -> ShardRun:
    """Send ``plan`` (a checked :class:`~engine.run.plan.Plan`) on ``count`` worker processes: each
    reads one byte range of the segment (:func:`shard_ranges`) when the source can be cut and
    ``ranged``, else the whole segment keeping its numbers (hash sharding).

    Raises the first worker's :class:`EngineError` (after stopping and waiting for the others).
    Shard ``k`` serves its metrics on ``metrics_port + k``.
    """
    ctx = multiprocessing.get_context("fork")
    started = time.perf_counter()
    store, campaign = plan.engine.store_path, plan.campaign.id
    if ledger is None or not ledger.resumed:  # a fresh run: no claims of an earlier one count
        DedupeClaims.clear(store, campaign)
    parts = shard_ranges(plan, count, notify) if ranged else None
    # The claims: in a table in shared memory for byte ranges; a resume of a run that claimed
    # numbers fills it (or, hash-sharded, each shard's own) from the store's log before the fork.
    logged: tuple[list[int], list[int]] | None = None
    if ledger is not None and ledger.resumed and DedupeClaims.exists(store, campaign):
        logged = DedupeClaims.logged(store, campaign)
    table: SharedKeys | None = None
    if parts is not None:
        table = SharedKeys(sum(p.rows for p in parts) + (len(logged[0]) if logged else 0))
        if logged:
            table.claim(*logged)
    if parts is not None and notify is not None:
        notify(
            f"--shards {count}: each shard reads its byte range of the segment ("
            + ", ".join(f"rows {p.first_row:,}–{p.first_row + p.rows - 1:,}" for p in parts if p.rows)
            + "); numbers deduplicated in shared memory"
            + (", claims logged in the store" if ledger is not None else "")
        )
    conns: dict[int, multiprocessing.connection.Connection] = {}
    procs: list[BaseProcess] = []
    signals = [0]

    def forward(signum: int, _frame: object) -> None:
        signals[0] += 1
        if notify is not None:
            notify(
                "stopping: no new rows; every shard sends what is already in flight (again to abandon)"
                if signals[0] == 1
                else "second signal: abandoning what is in flight"
            )
        _signal_all(procs, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    states: dict[int, RecorderState] = {}
    fractions: dict[int, float | None] = {}
    finished: dict[int, tuple[bool, bool, bool, str, str]] = {}
    errors: list[EngineError] = []
    said: dict[str, float] = {}
    try:
        for k in range(count):
            rx, tx = ctx.Pipe(duplex=False)
            proc: BaseProcess = ctx.Process(
                target=_worker,
                name=f"pigeon-shard-{k}",
                args=(k, count, plan, run_dir / f"shard-{k}", ledger, tx, clock, backend, backend_options),
                kwargs={
                    "metrics_port": metrics_port + k if metrics_port else None,
                    "metrics_addr": metrics_addr,
                    "part": parts[k] if parts is not None else None,
                    "table": table,
                    "logged": logged if table is None else None,
                },
            )
            proc.start()
            tx.close()  # the child holds the only writing end: EOF when it exits
            procs.append(proc)
            conns[k] = rx
        shown = 0.0
        while conns:
            ready = multiprocessing.connection.wait(list(conns.values()), timeout=1.0)
            for k, conn in list(conns.items()):
                if conn not in ready:
                    continue
                try:
                    message: tuple[Any, ...] = conn.recv()
                except (EOFError, OSError):
                    del conns[k]
                    continue
                kind, payload = message[0], message[1:]
                if kind == "progress":
                    states[k], fractions[k] = payload
                elif kind == "notify":
                    text = payload[0]
                    now = time.monotonic()
                    if notify is not None and now - said.get(text, -1e9) > 5.0:  # once for all shards
                        notify(text)
                    said[text] = now
                elif kind == "done":
                    states[k] = payload[0]
                    finished[k] = payload[1]
                elif kind == "error":
                    errors.append(_error(payload[0]))
                    _signal_all(procs, signal.SIGTERM)  # the others drain what is in flight and stop
            if progress is not None and time.monotonic() - shown >= PROGRESS_SECONDS and states:
                shown = time.monotonic()
                progress(_total(plan, states), time.perf_counter() - started, _fraction(fractions), False)
        for proc in procs:
            proc.join()
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        if any(proc.is_alive() for proc in procs):  # an error in the parent itself: none is left
            _signal_all(procs, signal.SIGTERM)
            for proc in procs:
                proc.join(10)
        if table is not None:
            table.close()
    if errors:
        raise errors[0]
    for k, proc in enumerate(procs):
        if k not in finished:
            raise EngineError(
                f"shard {k} of {count} ended without a summary (exit code {proc.exitcode}); what it "
                "recorded is in the ledger: `pigeon resume` the campaign to finish it"
            )
    merged = _total(plan, states)
    files = _merge_row_files(run_dir, count)
    abandoned = any(f[0] for f in finished.values())
    halts = [(f[3], f[4]) for f in finished.values() if f[3]]
    return ShardRun(
        recorder=merged,
        abandoned=abandoned,
        stopped=any(f[1] for f in finished.values()),
        complete=not abandoned and all(f[2] for f in finished.values()),
        files=files,
        halted=halts[0][0] if halts else "",
        message=halts[0][1] if halts else "",
    )


RANGE_PIECE = 16 * 1024
"""Bytes of the pieces :func:`shard_ranges` cuts first (then joins into one range per shard)."""


def shard_ranges(
    plan: Any, count: int, notify: Callable[[str], None] | None = None
) -> list[SegmentRange] | None:
    """``count`` byte ranges of the segment, back to back on row boundaries, of about equal bytes
    (some empty when the file has fewer rows): one per shard. None — each shard reads the whole
    file and keeps its numbers — when the source cannot be cut (not a CSV / JSON Lines file,
    gzip-compressed, lines ended by a lone CR, an encoding that is not ASCII-compatible): said
    through ``notify``. Reads the file once, counting rows (it is in the page cache afterwards)."""
    source = plan.source
    if not isinstance(source, RangedSource):
        return None
    try:
        pieces = source.ranges(RANGE_PIECE)
    except SourceError as exc:
        if notify is not None:
            notify(f"--shards {count}: {exc} — so every shard reads the whole segment and keeps its numbers")
        return None
    total = sum(p.end - p.start for p in pieces)
    out: list[SegmentRange] = []
    at = 0
    for k in range(count):
        group: list[SegmentRange] = []
        goal = total * (k + 1) / count
        while at < len(pieces) and (not group or pieces[at].end - pieces[0].start <= goal or k == count - 1):
            group.append(pieces[at])
            at += 1
        if group:
            out.append(
                SegmentRange(
                    index=k,
                    start=group[0].start,
                    end=group[-1].end,
                    first_row=group[0].first_row,
                    rows=sum(p.rows for p in group),
                )
            )
        else:
            end = out[-1].end if out else 0
            row = out[-1].first_row + out[-1].rows if out else 2
            out.append(SegmentRange(index=k, start=end, end=end, first_row=row, rows=0))
    return out


def _signal_all(procs: list[BaseProcess], signum: int) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)


def _total(plan: Any, states: dict[int, RecorderState]) -> RunRecorder:
    total = RunRecorder(plan.prices)
    for st in states.values():
        total.add(st)
    return total


def _fraction(fractions: dict[int, float | None]) -> float | None:
    known = [f for f in fractions.values() if f is not None]
    return min(known) if known else None


def _error(blob: bytes) -> EngineError:
    try:
        exc = pickle.loads(blob)
    except Exception:  # a class that does not unpickle: say so
        return EngineError("a shard failed (its error could not be read back)")
    return exc if isinstance(exc, EngineError) else EngineError(str(exc))


def _merge_row_files(run_dir: Path, count: int) -> dict[str, str]:
    """Merge each shard's row files into the run's, in row order; the shards' copies go."""
    files: dict[str, str] = {}
    for state, name in ROW_FILES.items():
        parts = [run_dir / f"shard-{k}" / name for k in range(count)]
        parts = [p for p in parts if p.exists()]
        if not parts:
            continue
        out = run_dir / name
        with contextlib.ExitStack() as stack:
            readers = [csv.reader(stack.enter_context(p.open(newline="", encoding="utf-8"))) for p in parts]
            header = next((h for h in [next(r, None) for r in readers] if h is not None), None)
            f = stack.enter_context(out.open("w", newline="", encoding="utf-8"))
            w = csv.writer(f)
            if header is not None:
                w.writerow(header)
            w.writerows(heapq.merge(*readers, key=_row_number))
        for p in parts:
            p.unlink()
        files[state] = str(out)
    return files


def _row_number(row: Any) -> int:
    return int(row[0])


def _worker(
    index: int,
    count: int,
    plan: Any,
    run_dir: Path,
    ledger: CampaignLedger | None,
    conn: multiprocessing.connection.Connection,
    clock: Clock,
    backend: str,
    backend_options: dict[str, Any],
    *,
    metrics_port: int | None,
    metrics_addr: str,
    part: SegmentRange | None = None,
    table: SharedKeys | None = None,
    logged: tuple[list[int], list[int]] | None = None,
) -> None:
    """One shard, in its own process: send its rows (``part``: that byte range's, deduplicated
    against the other shards' in ``table``, shared), report its counts, tell how it ended.
    ``logged``: a hash-sharded resume of a run that claimed numbers — this shard's own table is
    filled with them."""
    from engine.run.signals import _send_until_signalled  # it imports this module

    for signum in (signal.SIGINT, signal.SIGTERM):  # not the parent's forwarding handler, copied by
        signal.signal(signum, signal.SIG_IGN)  # fork: the run's own receiver takes over in a moment
    os.setpgid(0, 0)  # Ctrl-C reaches the parent only; it passes signals on
    parent = os.getppid()
    cl: CampaignLedger | None = None
    claims: DedupeClaims | None = None
    try:
        config = shard_config(plan.engine.config, index, count)
        shard_plan = replace(plan, engine=msgspec.structs.replace(plan.engine, config=config))
        store, campaign = plan.engine.store_path, plan.campaign.id
        cl = ledger.attach(index, count) if ledger is not None else None
        keys: KeyTable | None = table
        if keys is None and logged is not None:  # (a resume keeps a ranged run's claims)
            keys = LocalKeys()
            keys.claim(*logged)
        if keys is not None:
            claims = DedupeClaims(keys, campaign, store if cl is not None else None)
            claims.skip = cl.skip if cl is not None else None
            shard_plan.dedupe_claims = claims
        metrics = Metrics(backend=backend)
        prepare_run(metrics, shard_plan, [])
        last = [0.0]

        recorders: list[RunRecorder] = []  # the run's, kept for the final counts

        def report(recorder: RunRecorder, _elapsed: float, fraction: float | None, final: bool) -> None:
            if not recorders:
                recorders.append(recorder)
            now = time.monotonic()
            if final or now - last[0] >= PROGRESS_SECONDS:
                last[0] = now
                conn.send(("progress", recorder.state(), fraction))
                if os.getppid() != parent:  # the parent is gone: stop as on a signal
                    os.kill(os.getpid(), signal.SIGTERM)

        outcome: list[bool] = []
        try:
            serving = metrics.serving(metrics_addr, metrics_port, None)
        except OSError as exc:
            raise EngineError(
                f"shard {index}: cannot serve metrics on {metrics_addr}:{metrics_port} ({exc}); "
                f"shards take the ports from --metrics-port on, one each"
            ) from None
        with serving:
            summary: RunSummary | None = anyio.run(
                partial(
                    _send_until_signalled,
                    shard_plan,
                    run_dir,
                    report,
                    clock,
                    lambda text: conn.send(("notify", text)),
                    metrics,
                    cl,
                    shard=(index, count),
                    on_finish=outcome.append,
                    part=part,
                ),
                backend=backend,
                backend_options=backend_options,
            )
        state = recorders[0].state() if recorders else RecorderState()
        conn.send(
            (
                "done",
                state,
                (
                    summary is None,
                    summary is None or summary.stopped,
                    bool(outcome and outcome[0]),
                    summary.halted if summary is not None else "",
                    summary.message if summary is not None else "",
                ),
            )
        )
    except EngineError as exc:
        try:
            blob = pickle.dumps(exc)
        except Exception:  # an exception that does not pickle: keep its message
            blob = pickle.dumps(EngineError(str(exc)))
        conn.send(("error", blob))
    finally:
        if cl is not None:
            cl.ledger.close()
        if claims is not None:
            claims.close()
        conn.close()
