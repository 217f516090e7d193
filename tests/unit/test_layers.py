"""The engine's layers hold: no upward or sideways import, no cycle, the drawing in the docs is true."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.layers import LAYERS, Import, ImportGraph, read_graph, render_markdown, update_docs, violations

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return read_graph(ROOT)


def test_the_source_has_no_violation(graph: ImportGraph) -> None:
    assert violations(graph) == []


def test_every_module_is_in_a_layer(graph: ImportGraph) -> None:
    loose = [m for m in graph.modules if graph.package_of(m) is None and m not in ("engine", "engine.layers")]
    assert loose == []
    assert {graph.package_of(m) for m in graph.modules} - {None} == set(LAYERS)


def test_the_architecture_page_is_the_source_s_graph(graph: ImportGraph) -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    assert update_docs(doc, graph) == doc, "run: python -m engine.layers --write docs/architecture.md"


def _graph(edges: dict[str, list[str]]) -> ImportGraph:
    imports = [Import(a, b, a.replace(".", "/") + ".py", 1) for a, bs in edges.items() for b in bs]
    return ImportGraph(set(edges) | {b for bs in edges.values() for b in bs}, imports)


def test_an_upward_import_is_found() -> None:
    g = _graph({"engine.core.messages": ["engine.run.plan"], "engine.run.plan": []})
    assert violations(g) == [
        "engine/core/messages.py:1: engine.core.messages imports engine.run.plan "
        "(upward: engine.core → engine.run)"
    ]


def test_a_sideways_import_between_peers_is_found() -> None:
    g = _graph({"engine.pipeline.runner": ["engine.sending.sender"], "engine.sending.sender": []})
    (line,) = violations(g)
    assert "sideways: engine.pipeline → engine.sending" in line


def test_a_cycle_inside_one_package_is_found() -> None:
    g = _graph(
        {"engine.run.a": ["engine.run.b"], "engine.run.b": ["engine.run.c"], "engine.run.c": ["engine.run.a"]}
    )
    assert violations(g) == ["cycle: engine.run.a → engine.run.b → engine.run.c"]


def test_a_downward_import_passes() -> None:
    g = _graph(
        {
            "engine.cli.main": ["engine.run.send", "engine.core.config"],
            "engine.run.send": ["engine.core.config"],
        }
    )
    assert violations(g) == []


def test_the_check_reads_imports_in_functions_and_under_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "engine"
    (pkg / "core").mkdir(parents=True)
    (pkg / "run").mkdir()
    for f in ("__init__.py", "core/__init__.py", "run/__init__.py", "run/plan.py"):
        (pkg / f).write_text("")
    (pkg / "core" / "config.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from engine.run.plan import Plan\n"
        "def f():\n    from ..run import plan\n"
    )
    lines = violations(read_graph(tmp_path))
    assert [line.split(":")[1] for line in lines] == ["3", "5"]


def test_the_drawing_names_every_layer(graph: ImportGraph) -> None:
    text = render_markdown(graph)
    assert text.startswith("```mermaid\nflowchart TD\n")
    for pkg in LAYERS:
        assert f"`{pkg}`" in text
