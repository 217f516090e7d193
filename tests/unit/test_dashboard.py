"""config/grafana-dashboard.json is built on exactly the names and labels engine.observability.metrics exports
(and the per-bind series the SMPP/CMPP gateways add to the same registry), and every PromQL
expression in it parses (promtool)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.observability.metric_names import NAMES
from engine.observability.metrics import Metrics
from plugins.session_core.metrics import FAMILIES as BIND_FAMILIES, BindCollector
from plugins.session_core.stats import LinkStats
from tests.conftest import promtool as find_promtool

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(pigeon_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(pigeon_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"[^\"]*\"\s*")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$carrier": ".*",
    "$gateway": ".*",
    "$bind": ".*",
}


def exported() -> dict[str, set[str]]:
    """Every sample name a scrape can show (``_total``, ``_bucket``/``_sum``/``_count``…) → its labels."""
    m = Metrics(backend="asyncio")
    m.prepare(stages=["normalize", "dedupe", "route"], routes={"cm": ["a", "b"]}, in_flight={"a": 2, "b": 1})
    m.delivery_reports({"delivered": 1}, [1.0], gateway="a")
    m.prepare_worker("host:0123456789")  # a coordinated worker's series (pigeon worker)
    stats = LinkStats()  # a bind of an smpp/cmpp gateway, registered as the service and sends do
    stats.answered(0.004)
    stats.receipts["delivered"] = 1
    m.registry.register(BindCollector("a", lambda: {"0": (stats, 3, 10)}))
    out: dict[str, set[str]] = {}
    for fam in m.registry.collect():
        assert fam.samples, f"{fam.name} has no series after prepare()"
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text("utf-8"))  # type: ignore[no-any-return]


def expressions() -> list[str]:
    d = dashboard()
    exprs = [t["expr"] for p in panels(d["panels"]) for t in p.get("targets", [])]
    assert exprs
    return exprs


def test_every_metric_and_label_in_the_dashboard_exists_in_the_registry() -> None:
    names = exported()
    for expr in expressions():
        used = METRIC.findall(expr)
        assert used, f"no Pigeon metric in {expr!r}"
        labels: set[str] = {"le"} if "histogram_quantile" in expr else set()
        for name in used:
            assert name in names, f"{name} (in {expr!r}) is not exported"
            labels |= names[name]
        for name, matchers in SELECTOR.findall(expr):
            for label, _ in MATCHER.findall(matchers):
                assert label in names[name], f"{name} has no label {label!r} (in {expr!r})"
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in labels, f"grouping by {label!r}, which none of {used} has (in {expr!r})"


def test_template_variables_query_existing_labels() -> None:
    names = exported()
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((pigeon_[a-z0-9_]+),\s*([a-z_]+)\)", var["query"]["query"])
        assert found, var["query"]
        assert found.group(2) in names[found.group(1)]


def test_the_dashboard_shows_every_metric_family() -> None:
    used = {n for expr in expressions() for n in METRIC.findall(expr)}
    for full in [*NAMES.values(), *BIND_FAMILIES]:
        shown = {full, f"{full}_bucket", f"{full}_count", f"{full}_sum"} & used
        assert shown, f"{full} is on no panel"


def test_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    d = dashboard()
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids))
    for p in panels(d["panels"]):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["title"] and p["description"]


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    """Each expression, Grafana's variables filled in, as a recording rule: promtool parses them."""
    promtool = find_promtool()
    rules = []
    for i, expr in enumerate(expressions()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"pigeon:dashboard_expr_{i}", "expr": expr})
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout.decode()


def test_the_bind_panels_are_split_by_bind_and_filtered_by_the_variable() -> None:
    for expr in expressions():
        if "pigeon_bind_" in expr:
            assert 'bind=~"$bind"' in expr, expr
            for group in GROUPING.findall(expr):
                assert {"gateway", "bind"} <= {g.strip() for g in group.split(",")}, expr
