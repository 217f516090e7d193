"""``pigeon completion bash|zsh|fish``: each script run in its own shell.

The candidates a script offers are asked from the shell itself — bash's completion function with
``COMP_WORDS`` set as readline sets them, fish's ``complete -C``, and zsh's completion system
driven through a pseudo-terminal (``zsh/zpty``) typing a line and Tab. The shells are Debian
packages (``apt-get install bash zsh fish``); CI installs them and sets PIGEON_REQUIRE_SHELLS, so
there a missing shell fails the test, while elsewhere its cases are skipped saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.cli.completion import script
from engine.cli.grammar import CommandParser
from engine.cli.main import parser

OPTOUT_ACTIONS = {"import", "export", "add", "remove", "check"}


def _shell(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        hint = f"{name} is not installed: apt-get install --no-install-recommends {name}"
        if os.environ.get("PIGEON_REQUIRE_SHELLS"):
            pytest.fail(hint)
        pytest.skip(hint)
    return found


def _tree_with_a_new_command() -> CommandParser:
    """The real tree plus a command no script was written for: it must complete like the others."""
    tree = parser()
    new = tree.add_command("zz-new", help="a command added after the scripts were written", exit_codes=(0,))
    new.add_argument("--flavour", choices=["salty", "sweet"], help="which")
    new.add_argument("--out", type=Path, help="where")
    return tree


def _write(tmp_path: Path, shell: str, tree: CommandParser | None = None) -> Path:
    path = tmp_path / f"pigeon.{shell}"
    path.write_text(script(shell, tree or parser()), encoding="utf-8")
    return path


def _run(argv: list[str], cwd: Path) -> list[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd.parent), "LANG": "C.UTF-8"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# (the words typed, the candidates for the last one); FILES: file names of the current directory
FILES = "FILES"
CASES: list[tuple[list[str], set[str] | str]] = [
    (["optout", ""], OPTOUT_ACTIONS),
    (["optout", "--engine", "e.toml", ""], OPTOUT_ACTIONS),  # an option's value is not a command
    (["optout", "import", "f.csv", "--en"], {"--engine", "--encoding"}),
    (["send", "--backend", ""], {"asyncio", "trio"}),
    (["send", "--engine", ""], FILES),
    (["send", ""], FILES),
    (["completion", ""], {"bash", "zsh", "fish"}),
    (["keys", ""], {"create", "list", "revoke"}),
    (["serve", "--c"], set()),  # --config is deprecated and hidden: not offered
    (["zz-new", "--flavour", ""], {"salty", "sweet"}),
    (["zz-new", "--out", ""], FILES),
]


def _expected(want: set[str] | str, cwd: Path) -> set[str]:
    return {p.name for p in cwd.iterdir()} if want == FILES else set(want)  # type: ignore[arg-type]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    here = tmp_path / "work"
    here.mkdir()
    (here / "campaign.toml").write_text("", "utf-8")
    (here / "engine.toml").write_text("", "utf-8")
    return here


def _prefix(words: list[str]) -> str:
    return words[-1]


def test_bash(tmp_path: Path, cwd: Path) -> None:
    bash = _shell("bash")
    path = _write(tmp_path, "bash", _tree_with_a_new_command())
    commands = _run([bash, "--norc", "-c", f"source {path}; _pigeon_candidates pigeon ''"], cwd)
    assert {"preview", "send", "resume", "status", "optout", "completion", "zz-new"} <= set(commands)
    for words, want in CASES:
        # as readline calls it: COMP_WORDS up to the cursor, COMP_CWORD the word being completed
        line = " ".join(f"'{w}'" for w in ["pigeon", *words])
        got = _run(
            [
                bash,
                "--norc",
                "-c",
                f"source {path}; complete -p pigeon > /dev/null; COMP_WORDS=({line}); "
                f"COMP_CWORD={len(words)}; _pigeon; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            ],
            cwd,
        )
        expected = {w for w in _expected(want, cwd) if w.startswith(_prefix(words))}
        assert set(got) - {""} == expected, words


def test_fish(tmp_path: Path, cwd: Path) -> None:
    fish = _shell("fish")
    path = _write(tmp_path, "fish", _tree_with_a_new_command())
    for words, want in CASES:
        line = " ".join(["pigeon", *words])
        got = _run([fish, "--no-config", "-c", f"source {path}; complete -C '{line}'"], cwd)
        names = {g.split("\t")[0] for g in got}
        expected = {w for w in _expected(want, cwd) if w.startswith(_prefix(words))}
        assert names - {""} == expected, (words, got)
    described = _run([fish, "--no-config", "-c", f"source {path}; complete -C 'pigeon opt'"], cwd)
    assert described == ["optout\tmanage the opt-out list (people who replied 退订/R or asked to stop)"]


_ZPTY = r"""
# zsh -f harness.zsh SETUP LINE...: type each LINE, Tab, Enter; print all the terminal showed
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "$1"
shift
out=''
# the setup (compinit) takes a while on a busy machine: type nothing until its prompt shows
for ((i = 0; i < 1500; i++)); do
    if zpty -r -t z chunk; then out+=$chunk; [[ $out == *$'\r> '* ]] && break; continue; fi
    sleep 0.02
done
read_until() {  # read for up to $2 seconds, until the output holds $1 answers (or, for 0, settles)
    local i chunk
    for ((i = 0; i < $2 * 50; i++)); do
        if zpty -r -t z chunk; then out+=$chunk; continue; fi
        (( $1 > 0 && ${#${(@s|ARGS:<|)out}} > $1 )) && return 0
        (( $1 == 0 && i > 5 )) && return 0
        sleep 0.02
    done
}
n=0
for line in "$@"; do
    zpty -w -n z "$line"$'\t'
    read_until 0 2
    zpty -w -n z $'\r'
    read_until $((++n)) 10
done
zpty -d z
print -r -- "$out"
"""


@pytest.mark.parametrize("install", ["fpath", "eval"])
def test_zsh(tmp_path: Path, cwd: Path, install: str) -> None:
    """zsh's completion system, on a pseudo-terminal: a line is typed, then Tab, then Enter, and
    the stand-in ``pigeon`` function prints the words it got. Installed as docs/cli.md says: a
    ``_pigeon`` file in ``$fpath`` before compinit, or ``eval`` after it."""
    zsh = _shell("zsh")
    fdir = tmp_path / "zfunc"
    fdir.mkdir()
    (fdir / "_pigeon").write_text(script("zsh", _tree_with_a_new_command()), "utf-8")
    harness = tmp_path / "harness.zsh"
    harness.write_text(_ZPTY, "utf-8")
    load = (
        f"fpath=({fdir} $fpath); autoload -U compinit; compinit -u -D"
        if install == "fpath"
        else f'autoload -U compinit; compinit -u -D; eval "$(< {fdir / "_pigeon"})"'
    )
    setup = f'PS1=\'> \'; cd {cwd}; {load}; pigeon() {{ print -r -- "AR""GS:<$*>" }}'
    # lines whose completion is unique, so Tab completes them in place
    cases = [
        ("pigeon optout ch", "optout check"),
        ("pigeon sta", "status"),
        ("pigeon send --backend tr", "send --backend trio"),
        ("pigeon send camp", "send campaign.toml"),
        ("pigeon optout --engine e.toml rem", "optout --engine e.toml remove"),
        ("pigeon zz-new --flavour sa", "zz-new --flavour salty"),
        ("pigeon completion fi", "completion fish"),
    ]
    out = subprocess.run(
        [zsh, "-f", str(harness), setup, *(typed for typed, _ in cases)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "dumb"},
    ).stdout.replace("\r", "")
    answers = [line for line in out.split("\n") if line.startswith("ARGS:<")]
    assert answers == [f"ARGS:<{args}>" for _, args in cases], out[-1500:]
    core = subprocess.run(
        [zsh, "-f", "-c", f"source {fdir / '_pigeon'}; _pigeon_candidates pigeon optout ''"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert {line.split(":")[0] for line in core} == OPTOUT_ACTIONS
    assert "check:is a number on the list, and since when" in core  # shown beside each in the menu
