"""``pigeon optout`` and ``pigeon consent``: the number lists kept in the store, from the command line."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from engine.config import load_engine
from engine.errors import SourceError
from engine.phone import mask, parse_phone
from engine.store import ConsentRecord, OptOutRecord
from engine.store.sqlite import SqliteStore

__all__ = ["consent_command", "optout_command"]

_BATCH = 100_000
T = TypeVar("T")
R = TypeVar("R")


def _e164(raw: str) -> str | None:
    p = parse_phone(raw)
    return p.e164 if p.reason is None else None


def _file_numbers(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, first field) of every non-blank line."""
    try:
        with path.open(newline="", encoding=encoding) as f:
            for line_no, row in enumerate(csv.reader(f), start=1):
                if row and row[0].strip():
                    yield line_no, row[0]
    except FileNotFoundError:
        raise SourceError(f"file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not valid {encoding}: {exc}; pass --encoding gbk?") from None


def consent_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon consent`` action; returns the exit code."""
    store = SqliteStore(load_engine(args.engine).store_path)
    try:
        if args.consent_command == "import":
            return _import_file(
                args,
                console,
                lambda n, now: ConsentRecord(n, args.source, args.proof, now),
                store.add_consents,
            )
        return _check_numbers(
            args.numbers,
            console,
            store.consent_records,
            "no consent on record",
            lambda r: (
                f"consent given {_when(r.created_at)} (source {escape(r.source)}"
                + (f", proof {escape(r.proof)})" if r.proof else ")")
            ),
        )
    finally:
        store.close()


def optout_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon optout`` action; returns the exit code."""
    engine = load_engine(args.engine)
    store = SqliteStore(engine.store_path)
    try:
        action = args.optout_command
        if action == "import":
            return _import(store, args, console)
        if action == "export":
            return _export(store, args.file, console)
        if action == "add":
            return _add(store, args, console)
        if action == "remove":
            return _remove(store, args, console)
        return _check(store, args, console)
    finally:
        store.close()


def _import_file(
    args: argparse.Namespace, console: Console, make: Callable[[str, float], T], add: Callable[[list[T]], int]
) -> int:
    """Read numbers from ``args.file`` and ``add`` them in batches; report what happened."""
    started = time.perf_counter()
    now = time.time()
    read = added = 0
    bad: list[tuple[int, str]] = []
    pending: list[T] = []
    for line_no, raw in _file_numbers(args.file, args.encoding):
        read += 1
        e164 = _e164(raw)
        if e164 is None:
            if line_no == 1:
                read -= 1  # a header
                continue
            bad.append((line_no, raw))
            continue
        pending.append(make(e164, now))
        if len(pending) >= _BATCH:
            added += add(pending)
            pending.clear()
    added += add(pending)
    console.print(
        f"read {read:,} numbers from {escape(str(args.file))} in {time.perf_counter() - started:.1f}s: "
        f"{added:,} added, {read - added - len(bad):,} already on the list, {len(bad):,} not numbers"
    )
    for line_no, raw in bad[:10]:
        console.print(f"  line {line_no}: {escape(mask(raw.strip()))} is not a phone number")
    return 0 if not bad else 2


def _import(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    code = _import_file(
        args, console, lambda n, now: OptOutRecord(n, args.source, args.reason, now), store.add_optouts
    )
    console.print(f"{store.count_optouts():,} on the opt-out list now")
    return code


def _export(store: SqliteStore, file: Path | None, console: Console) -> int:
    out = file.open("w", newline="", encoding="utf-8") if file else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["number", "source", "reason", "created_at"])
        n = 0
        for r in store.iter_optouts():
            w.writerow([r.number, r.source, r.reason, datetime.fromtimestamp(r.created_at, UTC).isoformat()])
            n += 1
    finally:
        if file:
            out.close()
    if file:
        console.print(f"wrote {n:,} opt-outs to {escape(str(file))}")
    return 0


def _parse_all(numbers: list[str], console: Console) -> list[str] | None:
    out = []
    for raw in numbers:
        e164 = _e164(raw)
        if e164 is None:
            console.print(f"error: {escape(raw)} is not a phone number ({parse_phone(raw).detail})")
            return None
        out.append(e164)
    return out


def _add(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    numbers = _parse_all(args.numbers, console)
    if numbers is None:
        return 2
    added = store.add_optouts(OptOutRecord(n, args.source, args.reason) for n in numbers)
    console.print(f"{added} added, {len(numbers) - added} already on the list")
    return 0


def _remove(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    numbers = _parse_all(args.numbers, console)
    if numbers is None:
        return 2
    removed = store.remove_optouts(numbers)
    console.print(f"{removed} removed, {len(numbers) - removed} were not on the list")
    return 0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _check_numbers(
    raw_numbers: list[str],
    console: Console,
    lookup: Callable[[list[str]], Mapping[str, R]],
    absent: str,
    describe: Callable[[R], str],
) -> int:
    """Print what the store holds for each number; exit 1 if any has no record."""
    numbers = _parse_all(raw_numbers, console)
    if numbers is None:
        return 2
    found = lookup(numbers)
    for raw, n in zip(raw_numbers, numbers, strict=True):
        r = found.get(n)
        console.print(f"{escape(raw)}: {absent if r is None else describe(r)}")
    return 1 if len(found) != len(numbers) else 0


def _check(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    return _check_numbers(
        args.numbers,
        console,
        store.optout_records,
        "not opted out",
        lambda r: (
            f"opted out on {_when(r.created_at)} (source {escape(r.source)}"
            + (f", {escape(r.reason)})" if r.reason else ")")
        ),
    )
