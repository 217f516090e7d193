"""Shell completion scripts for ``pigeon`` (bash, zsh, fish), made from the command's parser tree.

``pigeon completion SHELL`` prints one. Nothing is hand-listed: every command, action, option and
option value (choices, or file names for path options) comes from :func:`engine.cli.main.parser`, so a
new command or option completes as soon as it exists. Each script has two parts: a core that, given
the words of a command line, prints the candidates for its last word (testable without a terminal:
``_pigeon_candidates pigeon optout ''``), and the shell's own glue around it. Options marked
hidden in ``--help`` (deprecated spellings) are not offered.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.cli.grammar import CommandParser, FileOrAddress, commands

__all__ = ["Node", "nodes", "script"]

FILES = "@files"
"""The candidate that means "complete file names here"."""
NONE = "@none"
"""The candidate that means "a value goes here, nothing to offer"."""


@dataclass(frozen=True)
class Option:
    """One option of a command: its spellings, and what its value is (``""`` for a flag, :data:`FILES`,
    :data:`NONE`, or the choices separated by spaces)."""

    flags: tuple[str, ...]
    value: str
    help: str


@dataclass
class Node:
    """A command of the tree (``""`` for ``pigeon`` itself, ``"optout import"``…)."""

    path: str
    help: str = ""
    subs: dict[str, str] = field(default_factory=dict)
    """Subcommand → its one-line help."""
    options: list[Option] = field(default_factory=list)
    args: str = NONE
    """What its positional arguments are: :data:`FILES`, :data:`NONE` or choices."""


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices:
        return " ".join(str(c) for c in action.choices)
    if action.type is Path or action.type is FileOrAddress:
        return FILES
    return NONE


def nodes(tree: CommandParser) -> list[Node]:
    """The tree's commands, depth first, each with what completes after it."""
    out = []
    for path, cmd in commands(tree):
        node = Node(" ".join(path), help=(cmd.description or "").split("\n")[0])
        node.subs = {name: help for name, (_, help) in cmd.commands.items()}
        for action in cmd.arguments:
            if action.help == argparse.SUPPRESS:
                continue
            if action.option_strings:
                node.options.append(Option(tuple(action.option_strings), _value(action), action.help or ""))
            elif not node.subs and _value(action) != NONE:
                node.args = _value(action)
        out.append(node)
    return out


def _q(text: str) -> str:
    return shlex.quote(text)


def _case(arms: list[tuple[list[str], str]], default: str) -> list[str]:
    """A POSIX ``case`` over ``$1`` setting ``_pigeon_r`` (bash and zsh read it alike)."""
    lines = ['    case "$1" in']
    for patterns, value in arms:
        lines.append(f"        {'|'.join(_q(p) for p in patterns)}) _pigeon_r={_q(value)} ;;")
    lines.append(f"        *) _pigeon_r={_q(default)} ;;")
    lines.append("    esac")
    return lines


def _tables(tree: list[Node], describe: bool) -> list[str]:
    """The shell functions that hold the tree: ``_pigeon_subs NODE``, ``_pigeon_opts NODE``,
    ``_pigeon_value "NODE|OPTION"``, ``_pigeon_args NODE`` (each sets ``_pigeon_r``); with
    ``describe``, subcommands and options come as ``name:help`` lines, else as words."""

    def entries(items: list[tuple[str, str]]) -> str:
        if describe:
            return "\n".join(f"{name}:{' '.join(help.split())}" for name, help in items)
        return " ".join(name for name, _ in items)

    valued: dict[str, list[str]] = {}
    for n in tree:
        for o in n.options:
            if o.value:
                valued.setdefault(o.value, []).extend(f"{n.path}|{f}" for f in o.flags)
    lines = ["_pigeon_subs() {"]
    lines += _case([([n.path], entries(list(n.subs.items()))) for n in tree if n.subs], "")
    lines += ["}", "_pigeon_opts() {"]
    lines += _case([([n.path], entries([(f, o.help) for o in n.options for f in o.flags])) for n in tree], "")
    lines += ["}", "_pigeon_value() {"]
    lines += _case([(patterns, value) for value, patterns in valued.items()], "")
    lines += ["}", "_pigeon_args() {"]
    lines += _case([([n.path], n.args) for n in tree if n.args != NONE], NONE)
    lines += ["}"]
    return lines


_HEADER = """\
# pigeon {shell} completion, made by `pigeon completion {shell}` from pigeon's own parser.
# Install (docs/cli.md): {install}
"""


def _bash(tree: list[Node]) -> str:
    head = _HEADER.format(
        shell="bash",
        install='eval "$(pigeon completion bash)" in ~/.bashrc, or\n#   pigeon completion bash > '
        "~/.local/share/bash-completion/completions/pigeon",
    )
    core = """
# _pigeon_candidates WORD...: the candidates for the last WORD (the first is `pigeon`), one a line,
# already filtered by what the last word starts with; @files: complete file names.
_pigeon_candidates() {
    local -a words=("$@")
    local n=${#words[@]} node="" expect="" word i _pigeon_r
    local cur=${words[n-1]}
    for ((i = 1; i < n - 1; i++)); do
        word=${words[i]}
        if [[ -n $expect ]]; then expect=""; continue; fi
        case $word in
            --*=*) ;;
            -*) _pigeon_value "$node|$word"; expect=$_pigeon_r ;;
            *) _pigeon_subs "$node"
               if [[ " $_pigeon_r " == *" $word "* ]]; then node=${node:+$node }$word; fi ;;
        esac
    done
    if [[ -n $expect ]]; then
        case $expect in
            @files|@none) echo "$expect" ;;
            *) compgen -W "$expect" -- "$cur" ;;
        esac
        return 0
    fi
    if [[ $cur == -* ]]; then
        _pigeon_opts "$node"; compgen -W "$_pigeon_r" -- "$cur"; return 0
    fi
    _pigeon_subs "$node"
    if [[ -n $_pigeon_r ]]; then compgen -W "$_pigeon_r" -- "$cur"; return 0; fi
    _pigeon_args "$node"
    case $_pigeon_r in
        @files|@none) echo "$_pigeon_r" ;;
        *) compgen -W "$_pigeon_r" -- "$cur" ;;
    esac
}

_pigeon() {
    local -a found
    mapfile -t found < <(_pigeon_candidates "${COMP_WORDS[@]:0:COMP_CWORD+1}")
    case ${found[0]} in
        @files) compopt -o filenames 2> /dev/null
                mapfile -t COMPREPLY < <(compgen -f -- "${COMP_WORDS[COMP_CWORD]}") ;;
        @none) COMPREPLY=() ;;
        *) COMPREPLY=("${found[@]}") ;;
    esac
}
complete -F _pigeon pigeon
"""
    return head + "\n".join(_tables(tree, describe=False)) + "\n" + core


def _zsh(tree: list[Node]) -> str:
    head = "#compdef pigeon\n" + _HEADER.format(
        shell="zsh",
        install="pigeon completion zsh > ~/.zfunc/_pigeon, with fpath=(~/.zfunc $fpath) before compinit\n"
        '#   in ~/.zshrc (or eval "$(pigeon completion zsh)" after compinit)',
    )
    core = """
# _pigeon_candidates WORD...: the candidates for the last WORD (the first is `pigeon`), one a line
# (name:description for commands and options), unfiltered; @files: complete file names.
_pigeon_candidates() {
    local -a words=("$@")
    local n=$# node="" expect="" word i _pigeon_r
    for ((i = 2; i < n; i++)); do
        word=$words[i]
        if [[ -n $expect ]]; then expect=""; continue; fi
        case $word in
            --*=*) ;;
            -*) _pigeon_value "$node|$word"; expect=$_pigeon_r ;;
            *) _pigeon_subs "$node"
               if [[ -n ${(M)${(f)_pigeon_r}:#$word:*} ]]; then node=${node:+$node }$word; fi ;;
        esac
    done
    if [[ -n $expect ]]; then
        case $expect in
            @files|@none) print -r -- $expect ;;
            *) print -rl -- ${=expect} ;;
        esac
        return 0
    fi
    if [[ $words[n] == -* ]]; then _pigeon_opts "$node"; print -r -- $_pigeon_r; return 0; fi
    _pigeon_subs "$node"
    if [[ -n $_pigeon_r ]]; then print -r -- $_pigeon_r; return 0; fi
    _pigeon_args "$node"
    case $_pigeon_r in
        @files|@none) print -r -- $_pigeon_r ;;
        *) print -rl -- ${=_pigeon_r} ;;
    esac
}

_pigeon() {
    local -a found
    found=("${(@f)$(_pigeon_candidates "${(@)words[1,CURRENT]}")}")
    case $found[1] in
        @files) _files ;;
        @none) return 1 ;;
        *:*) _describe -t pigeon pigeon found ;;
        *) compadd -a found ;;
    esac
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then  # autoloaded from fpath: complete now
    _pigeon "$@"
elif (( $+functions[compdef] )); then  # sourced or eval'd after compinit
    compdef _pigeon pigeon
fi
"""
    return head + "\n".join(_tables(tree, describe=True)) + "\n" + core


def _fish(tree: list[Node]) -> str:
    head = _HEADER.format(
        shell="fish", install="pigeon completion fish > ~/.config/fish/completions/pigeon.fish"
    )
    subs = [f"{n.path}|{s}" for n in tree for s in n.subs]
    valued = [f"{n.path}|{f}" for n in tree for o in n.options if o.value for f in o.flags]
    lines = [
        "set -g __pigeon_subs " + " ".join(_q(s) for s in subs),
        "set -g __pigeon_valued " + " ".join(_q(v) for v in valued),
        """
# __pigeon_node: the command the line is at ("" for pigeon itself, "optout import"…)
function __pigeon_node
    set -l node ""
    set -l skip 0
    for word in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        switch $word
            case '--*=*'
            case '-*'
                if contains -- "$node|$word" $__pigeon_valued
                    set skip 1
                end
            case '*'
                if contains -- "$node|$word" $__pigeon_subs
                    set node (string trim -- "$node $word")
                end
        end
    end
    echo $node
end

function __pigeon_at
    test (__pigeon_node) = "$argv[1]"
end

complete -c pigeon -f""",
    ]
    for n in tree:
        at = f"-n {_q('__pigeon_at ' + _q(n.path))}"
        for name, help in n.subs.items():
            lines.append(f"complete -c pigeon {at} -a {_q(name)} -d {_q(_short(help))}")
        for o in n.options:
            spell = " ".join(f"-l {_q(f[2:])}" if f.startswith("--") else f"-s {_q(f[1:])}" for f in o.flags)
            if o.value == FILES:
                spell += " -r -F"
            elif o.value == NONE:
                spell += " -x"
            elif o.value:
                spell += f" -x -a {_q(o.value)}"
            lines.append(f"complete -c pigeon {at} {spell} -d {_q(_short(o.help))}")
        if not n.subs and n.args == FILES:
            lines.append(f"complete -c pigeon {at} -F")
        elif not n.subs and n.args != NONE:
            lines.append(f"complete -c pigeon {at} -a {_q(n.args)}")
    return head + "\n".join(lines) + "\n"


def _short(help: str) -> str:
    """One line of help for a completion menu."""
    return " ".join(help.split())


_SHELLS: dict[str, Callable[[list[Node]], str]] = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def script(shell: str, tree: CommandParser) -> str:
    """The completion script for ``shell`` (``bash``, ``zsh`` or ``fish``) of the ``pigeon`` tree."""
    return _SHELLS[shell](nodes(tree))
