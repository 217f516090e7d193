"""Which engine file a ``pigeon`` command uses, found the same way by every command, and said in its hints.

The order (the first that gives one wins):

1. ``--engine PATH`` (``--config`` too for ``serve`` and ``keys``, deprecated);
2. ``$PIGEON_ENGINE``;
3. the campaign file's ``engine`` key (relative to the campaign file), for a command given a
   campaign file (``preview``, ``send``, ``resume FILE``);
4. the ledger's record of the campaign — the engine file it was sent with — for a command given a
   campaign id (``resume``, ``status``, ``report``, ``cancel``): looked up in the store of the
   engine file of step 5;
5. ``./engine.toml``, else ``./config/engine.toml``, in the current directory.

Any hint that suggests a follow-up command (```pigeon resume X```) says ``--engine PATH`` when the
engine file is not the one step 5 finds, so it can be pasted as it is (:func:`with_engine`).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import ConfigError

__all__ = ["DEFAULT_FILES", "ENV", "EngineFile", "default_engine", "find_engine", "with_engine"]

ENV = "PIGEON_ENGINE"
"""The environment variable naming the engine file."""
DEFAULT_FILES = (Path("engine.toml"), Path("config") / "engine.toml")
"""Where the engine file is looked for in the current directory, in this order."""

_COMMANDS_WITH_ENGINE = frozenset(
    {"preview", "send", "resume", "status", "report", "cancel", "optout", "consent", "serve", "keys"}
)
_HINT = re.compile(r"`pigeon ([a-z]+)([^`]*)`")


@dataclass(frozen=True, slots=True)
class EngineFile:
    """The engine file a command uses, and where that choice came from."""

    path: Path
    source: str
    """``--engine``, ``$PIGEON_ENGINE``, ``campaign file``, ``ledger`` or ``current directory``."""

    @property
    def is_default(self) -> bool:
        """Whether it is the file a command run here with no ``--engine`` would find on its own
        (:func:`default_engine`, ignoring ``$PIGEON_ENGINE``)."""
        found = default_engine()
        return found is not None and _same(found, self.path)

    def describe(self) -> str:
        """``/abs/engine.toml (from $PIGEON_ENGINE)``: for error messages."""
        return f"{self.path} (from {self.source})"

    def flag(self) -> str:
        """`` --engine /abs/engine.toml`` when a follow-up command needs it said, else ``""``."""
        if self.is_default:
            return ""
        return " --engine " + shlex.quote(str(self.path.resolve()))


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - a path that cannot be resolved is not the same
        return False


def default_engine(cwd: Path | None = None) -> Path | None:
    """``engine.toml`` or ``config/engine.toml`` in ``cwd`` (the current directory), whichever
    exists first; None if neither does."""
    base = Path.cwd() if cwd is None else cwd
    for name in DEFAULT_FILES:
        if (base / name).is_file():
            return name if cwd is None else base / name
    return None


def from_flags(explicit: Path | None) -> EngineFile | None:
    """Steps 1 and 2: ``--engine`` or ``$PIGEON_ENGINE``, if either says."""
    if explicit is not None:
        return EngineFile(Path(explicit), "--engine")
    env = os.environ.get(ENV)
    if env:
        return EngineFile(Path(env), f"${ENV}")
    return None


def find_engine(explicit: Path | None, *, campaign_key: Path | None = None) -> EngineFile:
    """The engine file by steps 1, 2, 3 (``campaign_key``: the campaign file's ``engine`` key,
    already made relative to the current directory) and 5; the ledger's step is
    :func:`engine.cli.ledger.campaign_engine`'s. Raises :class:`ConfigError` when none is found."""
    chosen = from_flags(explicit)
    if chosen is not None:
        return chosen
    if campaign_key is not None:
        return EngineFile(campaign_key, "campaign file")
    found = default_engine()
    if found is not None:
        return EngineFile(found, "current directory")
    raise ConfigError(
        "engine file",
        "",
        "none found: pass --engine PATH, set $PIGEON_ENGINE=PATH"
        + (', or set `engine = "…"` in the campaign file' if campaign_key is None else "")
        + f", or run pigeon where {' or '.join(str(p) for p in DEFAULT_FILES)} is",
    )


def with_engine(text: str, engine: EngineFile | None) -> str:
    """``text`` with ``--engine PATH`` added to every ```pigeon COMMAND …``` hint in it whose
    command uses an engine file, when ``engine`` is not the default one (see :meth:`EngineFile.flag`)."""
    if engine is None or "`pigeon " not in text:
        return text
    flag = engine.flag()
    if not flag:
        return text

    def add(m: re.Match[str]) -> str:
        command, rest = m.group(1), m.group(2)
        if command not in _COMMANDS_WITH_ENGINE or "--engine" in rest:
            return m.group(0)
        return f"`pigeon {command}{rest.rstrip()}{flag}`"

    return _HINT.sub(add, text)
