"""The grammar every ``pigeon`` command shares: its parser class, the common options and the exit codes.

Every command and subcommand is a :class:`CommandParser` (``add_subparsers`` hands the class on),
declares the exit codes it can end with (listed in its ``--help`` from one table, :data:`EXITS`),
and takes its common options from here, so they are spelled and placed the same everywhere:

* ``--engine PATH``: the engine file (:mod:`engine.core.engine_file` finds it when not given);
* ``--json``: print the data as JSON instead of for people.

A command with actions (``pigeon optout import``) accepts both before or after its action: they are
declared on both parsers with no default, so the one given wins and an absent one leaves no trace
(:func:`finish` fills those in after parsing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "EXITS",
    "EXIT_BAD_INPUT",
    "EXIT_BUSY",
    "EXIT_FAILED_MESSAGES",
    "EXIT_HALTED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_NOW",
    "EXIT_OK",
    "EXIT_STOPPED",
    "CommandParser",
    "FileOrAddress",
    "commands",
    "emit_json",
    "engine_option",
    "exit_codes_text",
    "finish",
    "json_option",
    "shared_options",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED_MESSAGES = 3
EXIT_NOT_NOW = 4
EXIT_STOPPED = 5
EXIT_HALTED = 6
EXIT_BUSY = 7
EXIT_INTERRUPTED = 130

EXITS: dict[int, str] = {
    EXIT_OK: "done: every row is in a final state (sent, failed by the gateway, rejected, suppressed…)",
    EXIT_NOT_FOUND: "checked: some number has no record (`optout check`, `consent check`)",
    EXIT_BAD_INPUT: (
        "bad input: a config, template, segment, file or argument to fix (the message says what);\n"
        "nothing was sent, unless the message says the whole run judged its segment unusable"
    ),
    EXIT_FAILED_MESSAGES: "done, but some messages failed at a gateway (see the summary's reasons)",
    EXIT_NOT_NOW: "outside the sending hours, with --no-wait: nothing was sent",
    EXIT_STOPPED: (
        "stopped on request (Ctrl-C / SIGTERM / pigeon cancel) after what was in flight was recorded"
    ),
    EXIT_HALTED: (
        "stopped by a fault outside Pigeon: a gateway unreachable past outage.limit, a gateway that\n"
        "refused its credentials or template, gateways that stopped answering, a store that cannot be\n"
        "written (disk full), the campaign taken over: everyone not sent is pending — fix the cause,\n"
        "then `pigeon resume ID`"
    ),
    EXIT_BUSY: "the campaign is being sent by another process (its lease is held): nothing was sent",
    EXIT_INTERRUPTED: "abandoned on a second Ctrl-C (interrupted): what was in flight was not waited for",
}
"""What each exit code means across the ``pigeon`` commands (``pigeon --help`` lists them all)."""

ExitCodes = Sequence[int | tuple[int, str]]
"""A command's exit codes: a code (its meaning from :data:`EXITS`) or (code, its meaning here)."""


def exit_codes_text(codes: ExitCodes) -> str:
    """The ``exit codes:`` block of a ``--help`` (the meaning's later lines indented under its first)."""
    lines = ["exit codes:"]
    for entry in codes:
        code, meaning = entry if isinstance(entry, tuple) else (entry, EXITS[entry])
        first, *rest = meaning.split("\n")
        pad = " " * (2 + len(str(code)) + 2)
        lines.append(f"  {code}  {first}")
        lines.extend(pad + line for line in rest)
    return "\n".join(lines)


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that lists its command's exit codes in its ``--help`` and
    keeps its own record of its options and subcommands (for completion and the docs' table).

    ``exit_codes``: what the command can end with (see :data:`ExitCodes`).
    """

    def __init__(self, *args: Any, exit_codes: ExitCodes = (), **kwargs: Any) -> None:
        self.exit_codes: tuple[int, ...] = tuple(e[0] if isinstance(e, tuple) else e for e in exit_codes)
        """The exit codes this command can end with (empty for a command with actions)."""
        self.arguments: list[argparse.Action] = []
        """Every option and positional argument, in the order they were added (``-h`` first)."""
        self.commands: dict[str, tuple[CommandParser, str]] = {}
        """Subcommands: name → (parser, one-line help), in the order they were added."""
        self._subparsers: Any = None
        self.commands_metavar = ""
        """How ``--help`` names the subcommand (``COMMAND``, ``ACTION``)."""
        if exit_codes:
            epilog = kwargs.get("epilog")
            kwargs["epilog"] = (epilog + "\n\n" if epilog else "") + exit_codes_text(exit_codes)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """:meth:`argparse.ArgumentParser.add_argument`, recorded in :attr:`arguments`."""
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def start_commands(self, dest: str, metavar: str) -> None:
        """Make this a command with subcommands, chosen into ``args.<dest>`` (one is required)."""
        self.commands_metavar = metavar
        self._subparsers = self.add_subparsers(
            dest=dest, required=True, metavar=metavar, parser_class=CommandParser
        )

    def add_command(self, name: str, help: str, **kwargs: Any) -> CommandParser:
        """A subcommand ``name`` (``help``: its line in this command's ``--help``); ``kwargs`` go
        to its :class:`CommandParser` (``exit_codes``, ``description``…)."""
        if self._subparsers is None:
            raise TypeError(f"{self.prog}: call start_commands() before add_command()")
        kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
        parser: CommandParser = self._subparsers.add_parser(name, help=help, **kwargs)
        self.commands[name] = (parser, help)
        return parser


class FileOrAddress(str):
    """An argument that is a file name or an address (``postgresql://…``): kept as written (a
    :class:`~pathlib.Path` would fold the ``//``), completed as a file name."""

    __slots__ = ()


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one and notes it (``finish`` warns)."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.deprecated_options = [*getattr(namespace, "deprecated_options", []), self]


def engine_option(
    parser: argparse.ArgumentParser, help: str | None = None, *, config_alias: bool = False
) -> None:
    """``--engine PATH`` (and, for ``serve`` and ``keys``, the deprecated hidden ``--config``)."""
    parser.add_argument(
        "--engine",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=help or "engine file (default: $PIGEON_ENGINE, else ./engine.toml or ./config/engine.toml)",
    )
    if config_alias:
        parser.add_argument(
            "--config",
            dest="engine",
            type=Path,
            default=argparse.SUPPRESS,
            metavar="PATH",
            help=argparse.SUPPRESS,
            action=_DeprecatedAlias,
            new="--engine",
        )


def json_option(parser: argparse.ArgumentParser, help: str = "print the data as JSON") -> None:
    """``--json``: the command's data as JSON on standard output."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=help)


def emit_json(data: Any) -> None:
    """Write ``data`` (builtins or msgspec structs) to standard output as indented JSON, one document."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(data)).decode() + "\n")
    sys.stdout.flush()


def shared_options(
    group: argparse.ArgumentParser,
    actions: Sequence[argparse.ArgumentParser],
    *,
    engine_help: str | None = None,
    config_alias: bool = False,
) -> None:
    """``--engine`` and ``--json`` on a command with actions and on each action, so either is accepted
    before or after the action (``pigeon optout --engine e.toml import f.csv`` and
    ``pigeon optout import f.csv --engine e.toml``)."""
    for p in (group, *actions):
        engine_option(p, engine_help, config_alias=config_alias)
        json_option(p)


def finish(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the common options a command line left out (``engine`` None, ``json`` False), and
    list in ``args.deprecations`` a sentence for each deprecated spelling it used (the caller says
    them: on standard error, or in ``serve``'s JSON log)."""
    if not hasattr(args, "engine"):
        args.engine = None
    if not hasattr(args, "json"):
        args.json = False
    args.deprecations = [
        f"{action.option_strings[0]} is deprecated: use {action.new} (same meaning)"
        for action in getattr(args, "deprecated_options", [])
    ]
    return args


def commands(
    parser: CommandParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], CommandParser]]:
    """Every command of ``parser``'s tree, depth first: (its words after ``pigeon``, its parser);
    the root itself comes first with ``()``."""
    yield path, parser
    for name, (sub, _) in parser.commands.items():
        yield from commands(sub, (*path, name))


OUTPUT_OPTIONS = ("--json", "--format", "--quiet")
"""Options that choose how a command prints (the docs table's "output" column)."""
TABLE_START = "<!-- grammar table: made by `python -m engine.cli.grammar_doc --write docs/cli.md` -->"
TABLE_END = "<!-- end of grammar table -->"


def _spelling(action: argparse.Action) -> str:
    """``--engine PATH``, ``-n/--samples N``, ``--backend {asyncio,trio}``, ``FILE``, ``[NUMBER…]``."""
    if not action.option_strings:
        name = str(action.metavar or action.dest).upper()
        if action.choices:
            name = "{" + ",".join(str(c) for c in action.choices) + "}"
        if action.nargs == "?":
            return f"[{name}]"
        return f"{name}…" if action.nargs in ("+", "*") else name
    flags = "/".join(action.option_strings)
    if action.nargs == 0:
        return flags
    if action.choices:
        return f"{flags} {{{','.join(str(c) for c in action.choices)}}}"
    return f"{flags} {action.metavar or action.dest.upper()}"


def grammar_table(tree: CommandParser) -> str:
    """The whole grammar as one Markdown table: command, what it does, its options, its output
    options, its exit codes (one row per command and action, made from the parser tree)."""
    rows = ["| command | what it does | options | output | exit codes |", "|---|---|---|---|---|"]
    helps: dict[tuple[str, ...], str] = {}
    for path, cmd in commands(tree):
        for name, (_, help) in cmd.commands.items():
            helps[(*path, name)] = help
    for path, cmd in commands(tree):
        shown = [a for a in cmd.arguments if a.help != argparse.SUPPRESS and "-h" not in a.option_strings]
        words = " ".join(["pigeon", *path, *(_spelling(a) for a in shown if not a.option_strings)])
        if cmd.commands:
            words += " " + cmd.commands_metavar
        opts = [a for a in shown if a.option_strings]
        options = [_spelling(a) for a in opts if not set(a.option_strings) & set(OUTPUT_OPTIONS)]
        output = [_spelling(a) for a in opts if set(a.option_strings) & set(OUTPUT_OPTIONS)]
        what = helps.get(path, "the command")
        if cmd.commands:
            what += f"; {cmd.commands_metavar.lower()}s: " + ", ".join(f"`{a}`" for a in cmd.commands)
        codes = " ".join(str(c) for c in cmd.exit_codes) or "those of its action"
        cells = [
            f"`{words}`",
            what.replace("|", "\\|"),
            ", ".join(f"`{o}`" for o in options) or "—",
            ", ".join(f"`{o}`" for o in output) or "—",
            codes,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def update_docs(text: str, tree: CommandParser) -> str:
    """``text`` (docs/cli.md) with the grammar table between its markers made anew."""
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    return text[: start + len(TABLE_START)] + "\n\n" + grammar_table(tree) + "\n" + text[end:]
