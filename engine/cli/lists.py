"""``pigeon optout`` and ``pigeon consent``: the number lists kept in the store, from the command line."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from rich.console import Console
from rich.markup import escape

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, emit_json, shared_options
from engine.core.config import load_engine
from engine.core.engine_file import find_engine
from engine.core.errors import SourceError
from engine.core.phone import mask, parse_phone
from engine.core.timestamps import iso_utc
from engine.state.store import ConsentRecord, OptOutRecord
from engine.state.store.sqlite import SqliteStore

__all__ = ["add_list_commands", "consent_command", "optout_command"]

_BATCH = 100_000
T = TypeVar("T")
R = TypeVar("R")


_CHECK_EXITS = (
    (EXIT_OK, "every number given has a record"),
    EXIT_NOT_FOUND,
    (EXIT_BAD_INPUT, "an argument is not a phone number, or the engine file or its store is unusable"),
)
_IMPORT_EXITS = (
    (EXIT_OK, "every line was a number (each is on the list now)"),
    (EXIT_BAD_INPUT, "some lines are not numbers (the others were added), or the file is unreadable"),
)
_CHANGE_EXITS = (
    (EXIT_OK, "done"),
    (EXIT_BAD_INPUT, "an argument is not a phone number: nothing was changed"),
)


def add_list_commands(sub: Any) -> None:
    """Register ``optout`` and ``consent`` (each with its actions) on the ``pigeon`` parser."""
    oo = sub.add_command(
        "optout", help="manage the opt-out list (people who replied 退订/R or asked to stop)"
    )
    oo.start_commands("optout_command", "ACTION")
    imp = oo.add_command(
        "import",
        help="add every number of a file (one per line, or the first CSV column)",
        exit_codes=_IMPORT_EXITS,
    )
    imp.add_argument("file", type=Path, help="the file (a header line is skipped)")
    imp.add_argument("--source", default="import", help="where the list came from (default: import)")
    imp.add_argument("--reason", default="", help="why (shown by `check`)")
    imp.add_argument("--encoding", default="utf-8-sig", help="file encoding (default utf-8, BOM accepted)")
    exp = oo.add_command(
        "export",
        help="write the whole list as CSV (number,source,reason,created_at), or JSON with --json",
        exit_codes=((EXIT_OK, "written"), (EXIT_BAD_INPUT, "the engine file or its store is unusable")),
    )
    exp.add_argument("file", type=Path, nargs="?", help="output file (default: standard output)")
    add = oo.add_command("add", help="add numbers", exit_codes=_CHANGE_EXITS)
    add.add_argument("numbers", nargs="+", metavar="NUMBER")
    add.add_argument("--source", default="manual", help="where it came from (default: manual)")
    add.add_argument("--reason", default="", help="why (shown by `check`)")
    rm = oo.add_command("remove", help="remove numbers (someone opted back in)", exit_codes=_CHANGE_EXITS)
    rm.add_argument("numbers", nargs="+", metavar="NUMBER")
    chk = oo.add_command("check", help="is a number on the list, and since when", exit_codes=_CHECK_EXITS)
    chk.add_argument("numbers", nargs="+", metavar="NUMBER")
    shared_options(oo, [imp, exp, add, rm, chk])

    cs = sub.add_command(
        "consent", help="record who agreed to marketing messages, with proof (kept 5+ months)"
    )
    cs.start_commands("consent_command", "ACTION")
    cimp = cs.add_command(
        "import", help="record consent for every number of a file", exit_codes=_IMPORT_EXITS
    )
    cimp.add_argument("file", type=Path, help="the file (one number per line, or the first CSV column)")
    cimp.add_argument("--source", required=True, help="where consent was given (checkout, member_signup…)")
    cimp.add_argument("--proof", default="", help="what shows it (form id, terms version…)")
    cimp.add_argument("--encoding", default="utf-8-sig", help="file encoding (default utf-8, BOM accepted)")
    cchk = cs.add_command("check", help="show the consent on record for numbers", exit_codes=_CHECK_EXITS)
    cchk.add_argument("numbers", nargs="+", metavar="NUMBER")
    shared_options(cs, [cimp, cchk])


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


def _store(args: argparse.Namespace) -> SqliteStore:
    return SqliteStore(load_engine(find_engine(args.engine).path).store_path)


def consent_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon consent`` action; returns the exit code."""
    store = _store(args)
    try:
        if args.consent_command == "import":
            return _import_file(
                args,
                console,
                lambda n, now: ConsentRecord(n, args.source, args.proof, now),
                store.add_consents,
            )
        return _check_numbers(
            args,
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
    store = _store(args)
    try:
        action = args.optout_command
        if action == "import":
            return _import(store, args, console)
        if action == "export":
            return _export(store, args.file, args.json, console)
        if action == "add":
            return _add(store, args, console)
        if action == "remove":
            return _remove(store, args, console)
        return _check(store, args, console)
    finally:
        store.close()


def _import_file(
    args: argparse.Namespace,
    console: Console,
    make: Callable[[str, float], T],
    add: Callable[[list[T]], int],
    extra: Callable[[], dict[str, Any]] | None = None,
) -> int:
    """Read numbers from ``args.file`` and ``add`` them in batches; report what happened (with
    ``extra()``'s keys in the JSON, or its lines after the summary)."""
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
    code = EXIT_OK if not bad else EXIT_BAD_INPUT
    more = extra() if extra else {}
    if args.json:
        emit_json(
            {
                "file": str(args.file),
                "read": read,
                "added": added,
                "already": read - added - len(bad),
                "not_numbers": len(bad),
                "bad_lines": [{"line": n, "number": mask(raw.strip())} for n, raw in bad[:100]],
                **more,
            }
        )
        return code
    console.print(
        f"read {read:,} numbers from {escape(str(args.file))} in {time.perf_counter() - started:.1f}s: "
        f"{added:,} added, {read - added - len(bad):,} already on the list, {len(bad):,} not numbers"
    )
    for line_no, raw in bad[:10]:
        console.print(f"  line {line_no}: {escape(mask(raw.strip()))} is not a phone number")
    if "on_list" in more:
        console.print(f"{more['on_list']:,} on the opt-out list now")
    return code


def _import(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    return _import_file(
        args,
        console,
        lambda n, now: OptOutRecord(n, args.source, args.reason, now),
        store.add_optouts,
        lambda: {"on_list": store.count_optouts()},
    )


def _iso(ts: float) -> str:
    return iso_utc(ts)


def _export(store: SqliteStore, file: Path | None, as_json: bool, console: Console) -> int:
    out = file.open("w", newline="", encoding="utf-8") if file else sys.stdout
    n = 0
    try:
        if as_json:  # one JSON array, written as it is read (the list may hold millions)
            enc = msgspec.json.Encoder().encode
            out.write("[")
            for r in store.iter_optouts():
                item = {
                    "number": r.number,
                    "source": r.source,
                    "reason": r.reason,
                    "created_at": _iso(r.created_at),
                }
                out.write(("\n  " if n == 0 else ",\n  ") + enc(item).decode())
                n += 1
            out.write("\n]\n" if n else "]\n")
        else:
            w = csv.writer(out)
            w.writerow(["number", "source", "reason", "created_at"])
            for r in store.iter_optouts():
                w.writerow([r.number, r.source, r.reason, _iso(r.created_at)])
                n += 1
    finally:
        if file:
            out.close()
    if file:  # the data went to the file: say where (on stderr with --json, stdout stays clean)
        print(f"wrote {n:,} opt-outs to {file}", file=sys.stderr if as_json else sys.stdout)
    return EXIT_OK


def _parse_all(numbers: list[str]) -> list[str] | None:
    out = []
    for raw in numbers:
        e164 = _e164(raw)
        if e164 is None:
            print(f"error: {raw} is not a phone number ({parse_phone(raw).detail})", file=sys.stderr)
            return None
        out.append(e164)
    return out


def _add(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    numbers = _parse_all(args.numbers)
    if numbers is None:
        return EXIT_BAD_INPUT
    added = store.add_optouts(OptOutRecord(n, args.source, args.reason) for n in numbers)
    if args.json:
        emit_json({"added": added, "already": len(numbers) - added})
    else:
        console.print(f"{added} added, {len(numbers) - added} already on the list")
    return EXIT_OK


def _remove(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    numbers = _parse_all(args.numbers)
    if numbers is None:
        return EXIT_BAD_INPUT
    removed = store.remove_optouts(numbers)
    if args.json:
        emit_json({"removed": removed, "absent": len(numbers) - removed})
    else:
        console.print(f"{removed} removed, {len(numbers) - removed} were not on the list")
    return EXIT_OK


def _when(ts: float) -> str:
    return iso_utc(ts, "%Y-%m-%d %H:%M UTC")


def _check_numbers(
    args: argparse.Namespace,
    console: Console,
    lookup: Callable[[list[str]], Mapping[str, R]],
    absent: str,
    describe: Callable[[R], str],
) -> int:
    """Print what the store holds for each number; exit 1 if any has no record."""
    raw_numbers: list[str] = args.numbers
    numbers = _parse_all(raw_numbers)
    if numbers is None:
        return EXIT_BAD_INPUT
    found = lookup(numbers)
    code = EXIT_NOT_FOUND if len(found) != len(numbers) else EXIT_OK
    if args.json:
        out = []
        for raw, n in zip(raw_numbers, numbers, strict=True):
            r = found.get(n)
            record = msgspec.to_builtins(r) if r is not None else None
            if record is not None:
                record["created_at"] = _iso(record["created_at"])
            out.append({"input": raw, "number": n, "found": r is not None, "record": record})
        emit_json(out)
        return code
    for raw, n in zip(raw_numbers, numbers, strict=True):
        r = found.get(n)
        console.print(f"{escape(raw)}: {absent if r is None else describe(r)}")
    return code


def _check(store: SqliteStore, args: argparse.Namespace, console: Console) -> int:
    return _check_numbers(
        args,
        console,
        store.optout_records,
        "not opted out",
        lambda r: (
            f"opted out on {_when(r.created_at)} (source {escape(r.source)}"
            + (f", {escape(r.reason)})" if r.reason else ")")
        ),
    )
