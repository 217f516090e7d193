"""The engine's layers as data, the import graph read from the source, and the checks on it.

A module may import from its own package and from packages of a lower rank; packages of the same
rank (``pipeline`` and ``sending``) do not import each other; no two modules import each other,
directly or round a longer loop. Every import counts: at module level, inside a function, and under
``TYPE_CHECKING`` (a type is a dependency too). ``tests/unit/test_layers.py`` runs :func:`violations`;
``python -m engine.layers --write docs/architecture.md`` draws the graph the docs show (``--check``
in the tests keeps it true). This module imports nothing from the engine.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYERS", "Import", "ImportGraph", "read_graph", "render_markdown", "violations"]

LAYERS: Mapping[str, int] = {
    "engine.core": 0,
    "engine.state": 1,
    "engine.observability": 2,
    "engine.pipeline": 3,
    "engine.sending": 3,
    "engine.coordination": 4,  # the plane workers share: wraps state's lease and sending's limiter
    "pigeon": 5,  # the public plugin API: re-exports core, sending and coordination, nothing above
    "plugins": 6,  # the built-in plugins: the public API and the layers up to coordination
    "engine.run": 7,
    "engine.outcomes": 7,  # order exports, RFM segments: beside run, neither imports the other
    "engine.flows": 7,  # triggered flows: events → timers → steps; beside run, sent by the service
    "engine.service": 8,
    "engine.cli": 9,
    "engine.__main__": 10,
}
"""Package → rank. A module imports only from its own package or from ranks below its own."""

JOBS: Mapping[str, str] = {
    "engine.core": "config, messages, errors, clock, phone, carriers, sms, templates, plugin host",
    "engine.state": "store, campaign ledger and leases, opt-out sets, caps",
    "engine.observability": "metrics, JSON logs, run reports",
    "engine.pipeline": "sources, stages, the batch runner",
    "engine.sending": "gateway contract, lanes, rate limits, retry, priority, webhooks, test kit",
    "engine.coordination": "coordinator contract: leases, shared rate budgets, recipient claims",
    "pigeon": "the public plugin API",
    "plugins": "built-in sources, gateways and coordinators",
    "engine.run": "plan, preview, send loop, signals, shards, workers",
    "engine.outcomes": "order exports, per-customer totals, RFM scores, classes and segment files",
    "engine.flows": "flow files, events in, the timers they schedule and the runner that fires them",
    "engine.service": "HTTP API, OpenAPI, keys, campaigns",
    "engine.cli": "the pigeon command",
    "engine.__main__": "python -m engine",
}
"""Package → its job, for the drawing."""

_ROOTS = ("engine", "pigeon", "plugins")
_FREE = frozenset({"engine", "engine.layers"})  # the package's own init and this module: import nothing


@dataclass(frozen=True)
class Import:
    """One import of a first-party module by another, where it is written."""

    importer: str
    imported: str
    path: str
    line: int


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


class ImportGraph:
    """First-party modules and the imports between them."""

    def __init__(self, modules: Iterable[str], imports: Iterable[Import]) -> None:
        self.modules = frozenset(modules)
        self.imports = tuple(imports)

    def package_of(self, module: str) -> str | None:
        """The layer package ``module`` belongs to (the longest match in :data:`LAYERS`)."""
        best = None
        for pkg in LAYERS:
            if (module == pkg or module.startswith(pkg + ".")) and (best is None or len(pkg) > len(best)):
                best = pkg
        return best

    def edges(self) -> dict[str, set[str]]:
        """Module → the first-party modules it imports (names resolved to modules, not objects)."""
        out: dict[str, set[str]] = defaultdict(set)
        for imp in self.imports:
            out[imp.importer].add(imp.imported)
        return out

    def cycles(self) -> list[list[str]]:
        """Strongly connected groups of two or more modules (Tarjan), each sorted."""
        edges = self.edges()
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on: set[str] = set()
        found: list[list[str]] = []
        counter = 0

        def visit(v: str) -> None:
            nonlocal counter
            index[v] = low[v] = counter
            counter += 1
            stack.append(v)
            on.add(v)
            for w in sorted(edges.get(v, ())):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

        # (a path through the graph is at most as deep as it has modules; the limit goes back after:
        # raised for the whole process, it once let a test's 5,000-deep JSON body decode)
        before = sys.getrecursionlimit()
        sys.setrecursionlimit(max(before, len(self.modules) + 100))
        try:
            for v in sorted(self.modules):
                if v not in index:
                    visit(v)
        finally:
            sys.setrecursionlimit(before)
        return sorted(found)

    def package_edges(self) -> dict[tuple[str, str], int]:
        """(importing package, imported package) → how many imports, between different packages."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for imp in self.imports:
            a, b = self.package_of(imp.importer), self.package_of(imp.imported)
            if a and b and a != b:
                out[a, b] += 1
        return dict(out)


def _imports_of(root: Path, path: Path, modules: frozenset[str]) -> Iterator[Import]:
    module = _module_name(root, path)
    is_package = path.name == "__init__.py"
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_bytes(), filename=rel)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = _resolve(module, is_package, node.level, node.module) if node.level else node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in dict.fromkeys(targets):  # one per module a statement names
            if target.split(".")[0] not in _ROOTS:
                continue
            # ``import a.b.c`` depends on the deepest first-party module named
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield Import(module, target, rel, node.lineno)


def read_graph(root: Path) -> ImportGraph:
    """The import graph of ``engine/``, ``pigeon/`` and ``plugins/`` under ``root``."""
    files = [p for r in _ROOTS for p in sorted((root / r).rglob("*.py"))]
    modules = frozenset(_module_name(root, p) for p in files)
    imports = [imp for p in files for imp in _imports_of(root, p, modules)]
    return ImportGraph(modules, imports)


def violations(graph: ImportGraph) -> list[str]:
    """Every upward or sideways import, every module outside a layer, and every cycle, one line each."""
    out = [
        f"{module}: in no layer (add its package to engine.layers.LAYERS)"
        for module in sorted(graph.modules)
        if module not in _FREE and graph.package_of(module) is None
    ]
    for imp in graph.imports:
        if imp.importer in _FREE:
            out.append(f"{imp.path}:{imp.line}: {imp.importer} must import nothing from the engine")
            continue
        a, b = graph.package_of(imp.importer), graph.package_of(imp.imported)
        if a is None or b is None or a == b:
            continue
        if LAYERS[b] >= LAYERS[a]:
            way = "sideways" if LAYERS[b] == LAYERS[a] else "upward"
            out.append(f"{imp.path}:{imp.line}: {imp.importer} imports {imp.imported} ({way}: {a} → {b})")
    out.extend("cycle: " + " → ".join(group) for group in graph.cycles())
    return out


MARK_START = "<!-- layer graph: made by `python -m engine.layers --write docs/architecture.md` -->"
MARK_END = "<!-- end of layer graph -->"


def render_markdown(graph: ImportGraph) -> str:
    """The layer graph as a Mermaid flowchart and a table of packages, modules and imports."""
    edges = graph.package_edges()
    ids = {pkg: pkg.replace(".", "_") for pkg in LAYERS}
    lines = ["```mermaid", "flowchart TD"]
    lines += [
        f'    {ids[p]}["{p}<br/><small>{JOBS[p]}</small>"]'
        for p in sorted(LAYERS, key=lambda p: (-LAYERS[p], p))
    ]
    for (a, b), n in sorted(edges.items(), key=lambda e: (-LAYERS[e[0][0]], e[0])):
        lines.append(f"    {ids[a]} -->|{n}| {ids[b]}")
    lines += ["```", "", "| rank | package | modules | imports from |", "|---:|---|---:|---|"]
    counts: dict[str, int] = defaultdict(int)
    for m in graph.modules:
        pkg = graph.package_of(m)
        if pkg:
            counts[pkg] += 1
    for pkg in sorted(LAYERS, key=lambda p: (LAYERS[p], p)):
        below = sorted({b for (a, b) in edges if a == pkg}, key=lambda p: (LAYERS[p], p))
        names = ", ".join(f"`{b}`" for b in below) or "—"
        lines.append(f"| {LAYERS[pkg]} | `{pkg}` | {counts[pkg]} | {names} |")
    return "\n".join(lines) + "\n"


def update_docs(text: str, graph: ImportGraph) -> str:
    """``text`` with the part between the markers made anew from ``graph``."""
    start, end = text.index(MARK_START), text.index(MARK_END)
    return text[: start + len(MARK_START)] + "\n\n" + render_markdown(graph) + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.layers [--write|--check] DOC``: list violations; draw or check the graph."""
    ap = argparse.ArgumentParser(prog="python -m engine.layers", description=__doc__.splitlines()[0])
    ap.add_argument("doc", type=Path, nargs="?", help="the Markdown file with the graph between its markers")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the graph into DOC")
    mode.add_argument("--check", action="store_true", help="exit 1 if DOC's graph is not the source's")
    args = ap.parse_args(argv)
    graph = read_graph(Path(__file__).resolve().parent.parent)
    found = violations(graph)
    for line in found:
        sys.stderr.write(line + "\n")
    if args.doc is None:
        return 1 if found else 0
    text = args.doc.read_text("utf-8")
    new = update_docs(text, graph)
    if args.check and new != text:
        sys.stderr.write(f"{args.doc}: the layer graph is out of date: python -m engine.layers --write DOC\n")
        return 1
    if args.write:
        args.doc.write_text(new, encoding="utf-8")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
