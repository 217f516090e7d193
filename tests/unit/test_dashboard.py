"""config/grafana-dashboard.json and config/prometheus-rules.yml are built on exactly the names and labels
engine.observability.metrics exports (and the per-bind series the SMPP/CMPP gateways add to the same
registry), every PromQL expression in them parses (promtool), group by bounded labels only, and the
coordinated workers' merged view sums every worker (promtool test rules: two workers beside a
pigeon serve)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from engine.observability.metric_names import NAMES
from engine.observability.metrics import Metrics
from plugins.session_core.metrics import FAMILIES as BIND_FAMILIES, BindCollector
from plugins.session_core.stats import LinkStats
from tests.conftest import promtool as find_promtool

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
RULES = Path(__file__).resolve().parents[2] / "config" / "prometheus-rules.yml"
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
"""A recording rule's name (level:metric:operations), used by a later rule."""
TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every scraped series (one value per scrape target: per process)."""
BOUNDED = {
    *("stage", "reason", "carrier", "gateway", "outcome", "status", "priority", "bind", "le"),
    *("worker", "answer", "call", "event"),
    *TARGET_LABELS,
}
"""Every label a panel or rule may keep: bounded sets (a worker, an instance: one per process)."""
MERGED_ROW = "Coordinated workers: one campaign, every worker"
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
    m.prepare(
        stages=["normalize", "dedupe", "route"],
        routes={"cm": ["a", "b"]},
        in_flight={"a": 2, "b": 1},
        rates={"cm": 1000},
    )
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


def rules() -> list[dict[str, str]]:
    doc = yaml.safe_load(RULES.read_text("utf-8"))
    found = [r for g in doc["groups"] for r in g["rules"]]
    assert found
    return found  # type: ignore[no-any-return]


def check_names_and_labels(exprs: list[str]) -> None:
    names = exported()
    for raw in exprs:
        expr = RECORDED.sub("", raw)  # (a rule using an earlier rule's result)
        used = METRIC.findall(expr)
        assert used or RECORDED.search(raw), f"no Pigeon metric in {raw!r}"
        labels: set[str] = set(TARGET_LABELS) | ({"le"} if "histogram_quantile" in expr else set())
        for name in used:
            assert name in names, f"{name} (in {expr!r}) is not exported"
            labels |= names[name]
        for name, matchers in SELECTOR.findall(expr):
            for label, _ in MATCHER.findall(matchers):
                assert label in names[name], f"{name} has no label {label!r} (in {expr!r})"
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in labels, f"grouping by {label!r}, which none of {used} has (in {expr!r})"
                assert label in BOUNDED, f"grouping by {label!r}, not a bounded label (in {expr!r})"


def test_every_metric_and_label_in_the_dashboard_exists_in_the_registry() -> None:
    check_names_and_labels(expressions())


def test_every_metric_and_label_in_the_recording_rules_exists_in_the_registry() -> None:
    check_names_and_labels([r["expr"] for r in rules()])


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


def test_the_recording_rules_parse() -> None:
    done = subprocess.run([find_promtool(), "check", "rules", str(RULES)], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout.decode()


def _series(instance: str, name: str, labels: str, per_15s: float) -> dict[str, str]:
    """A counter of one scrape target growing ``per_15s`` every 15 s for 10 minutes."""
    return {
        "series": f'{name}{{job="pigeon", instance="{instance}", {labels}}}',
        "values": f"0+{per_15s:g}x40",
    }


W1, W2, SERVE = "10.0.0.1:9464", "10.0.0.2:9464", "10.0.0.3:8080"
"""Two coordinated workers and a pigeon serve, scraped by one Prometheus (job ``pigeon``)."""


def fleet() -> list[dict[str, str]]:
    """Ten minutes of their series: the workers accept 10/s and 20/s of ``cm`` (2 parts each), the
    service 100/s; one worker's claim calls fail 1/s; the workers finish a range every 4 s and 2 s;
    everyone is configured at 100 parts/s for ``cm`` (the service, with another engine file: 999)."""
    acc = 'gateway="a", carrier="cm", outcome="accepted"'
    series = [
        _series(W1, "pigeon_messages_total", acc, 150),
        _series(W2, "pigeon_messages_total", acc, 300),
        _series(SERVE, "pigeon_messages_total", acc, 1500),
        _series(W1, "pigeon_message_parts_total", acc, 300),
        _series(W2, "pigeon_message_parts_total", acc, 600),
        _series(SERVE, "pigeon_message_parts_total", acc, 3000),
        _series(W1, "pigeon_coordinator_claims_total", 'worker="h1:aaaa", answer="new"', 150),
        _series(W2, "pigeon_coordinator_claims_total", 'worker="h2:bbbb", answer="new"', 300),
        _series(W2, "pigeon_coordinator_claims_total", 'worker="h2:bbbb", answer="taken"', 15),
        _series(
            W1, "pigeon_coordinator_calls_total", 'worker="h1:aaaa", call="claim", outcome="unavailable"', 15
        ),
        _series(
            W2, "pigeon_coordinator_calls_total", 'worker="h2:bbbb", call="claim", outcome="unavailable"', 0
        ),
        _series(W1, "pigeon_coordinator_ranges_total", 'worker="h1:aaaa", event="done"', 3.75),
        _series(W2, "pigeon_coordinator_ranges_total", 'worker="h2:bbbb", event="done"', 7.5),
    ]
    for instance, rate in ((W1, 100), (W2, 100), (SERVE, 999)):
        series.append(
            {
                "series": f'pigeon_carrier_rate_limit_parts_per_second{{job="pigeon", instance="{instance}", '
                'carrier="cm"}',
                "values": f"{rate}x40",
            }
        )
    return series


def run_promtool_test(tmp_path: Path, tests: list[dict[str, Any]], rule_files: list[str]) -> None:
    doc = {
        "rule_files": rule_files,
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": fleet(), "promql_expr_test": tests}],
    }
    path = tmp_path / "rules-test.yml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    done = subprocess.run([find_promtool(), "test", "rules", str(path)], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_the_recording_rules_sum_every_worker_and_leave_the_service_out(tmp_path: Path) -> None:
    """The merged rules count the workers only (not the service beside them), the configured rate
    once, and the per-worker rule names each worker as the coordinator does."""

    def sample(rule: str, value: float, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {
            "expr": rule,
            "eval_time": "5m",
            "exp_samples": [{"labels": _labels(rule, labels), "value": value}],
        }

    cm = {"carrier": "cm"}
    tests = [
        sample("carrier:pigeon_coordinated_messages_accepted:rate1m", 30, cm),
        sample("carrier:pigeon_coordinated_message_parts_accepted:rate1m", 60, cm),
        sample("carrier:pigeon_carrier_rate_limit_parts_per_second:max", 100, cm),
        sample("carrier:pigeon_coordinated_message_parts_of_rate_limit:ratio_rate1m", 0.6, cm),
        {
            "expr": "answer:pigeon_coordinator_claims:rate1m",
            "eval_time": "5m",
            "exp_samples": [
                {
                    "labels": _labels("answer:pigeon_coordinator_claims:rate1m", {"answer": "new"}),
                    "value": 30,
                },
                {
                    "labels": _labels("answer:pigeon_coordinator_claims:rate1m", {"answer": "taken"}),
                    "value": 1,
                },
            ],
        },
        sample("call:pigeon_coordinator_calls_unavailable:rate1m", 1, {"call": "claim"}),
        sample("event:pigeon_coordinator_ranges:rate1m", 0.75, {"event": "done"}),
        {
            "expr": "worker:pigeon_messages_accepted:rate1m",
            "eval_time": "5m",
            "exp_samples": [
                {
                    "labels": _labels(
                        "worker:pigeon_messages_accepted:rate1m",
                        {"job": "pigeon", "instance": inst, "worker": worker},
                    ),
                    "value": value,
                }
                for inst, worker, value in ((W1, "h1:aaaa", 10), (W2, "h2:bbbb", 20))
            ],
        },
    ]
    assert {t["expr"] for t in tests} == {r["record"] for r in rules()}, "a rule without a check"
    run_promtool_test(tmp_path, tests, [str(RULES)])


MERGED_EXPECTED: dict[str, list[tuple[dict[str, str], float]]] = {
    # panel title → refId A's, then B's… samples at 10 minutes (labels → value)
    "Workers reporting": [({}, 2)],
    "Sent / s, all workers": [({}, 30)],
    "Ranges done (time range)": [({}, 450)],
    "Coordinator calls failing / s": [({}, 1)],
    "Parts / s per carrier, all workers, against the configured rate": [
        ({"carrier": "cm"}, 60),
        ({"carrier": "cm"}, 100),
    ],
    "Claims by answer, all workers": [({"answer": "new"}, 30), ({"answer": "taken"}, 1)],
    "Coordinator call failures, all workers": [({"call": "claim"}, 1)],
    "Ranges per minute, all workers": [({"event": "done"}, 45)],
    "Sent / s per worker": [
        ({"job": "pigeon", "instance": W1, "worker": "h1:aaaa"}, 10),
        ({"job": "pigeon", "instance": W2, "worker": "h2:bbbb"}, 20),
    ],
    "Ranges done per worker (time range)": [
        ({"worker": "h1:aaaa", "event": "done"}, 150),
        ({"worker": "h2:bbbb", "event": "done"}, 300),
    ],
}


def test_the_merged_panels_sum_every_worker_and_leave_the_service_out(tmp_path: Path) -> None:
    """The merged row's expressions (Grafana's variables filled in: every carrier and gateway, a
    1 m rate interval, a 10 m time range) evaluated by promtool on the same two workers beside a
    service: the sums are the workers', the breakdown names each worker."""
    values = {**GRAFANA_VARS, "$__rate_interval": "1m", "$__range": "10m"}
    d = dashboard()
    row = next(p for p in d["panels"] if p["type"] == "row" and p["title"] == MERGED_ROW)
    titled = {p["title"]: p for p in d["panels"] if p["gridPos"]["y"] > row["gridPos"]["y"]}
    tests = []
    for title, expected in MERGED_EXPECTED.items():
        targets = titled[title]["targets"]
        if len(targets) == 1:
            groups = [expected]
        else:  # one sample each
            assert len(targets) == len(expected), title
            groups = [[e] for e in expected]
        for target, samples in zip(targets, groups, strict=True):
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            tests.append(
                {
                    "expr": expr,
                    "eval_time": "10m",
                    "exp_samples": [{"labels": _labels("", labels), "value": v} for labels, v in samples],
                }
            )
    run_promtool_test(tmp_path, tests, [])


def _labels(name: str, labels: dict[str, str] | None) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in (labels or {}).items())
    return f"{name}{{{inner}}}" if name or inner else "{}"


def test_the_merged_worker_view_sums_every_worker_and_breaks_them_down() -> None:
    """The coordinated workers' row: every family an SRE needs for one campaign across N workers,
    summed (no grouping by worker or instance), and per-worker panels grouped by worker."""
    d = dashboard()
    row = next(p for p in d["panels"] if p["type"] == "row" and p["title"] == MERGED_ROW)
    below = [p for p in d["panels"] if p["type"] != "row" and p["gridPos"]["y"] > row["gridPos"]["y"]]
    later_rows = [
        p["gridPos"]["y"]
        for p in d["panels"]
        if p["type"] == "row" and p["gridPos"]["y"] > row["gridPos"]["y"]
    ]
    if later_rows:
        below = [p for p in below if p["gridPos"]["y"] < min(later_rows)]
    merged = [p for p in below if "per worker" not in p["title"].lower()]
    per_worker = [p for p in below if "per worker" in p["title"].lower()]
    assert merged and per_worker
    merged_exprs = [t["expr"] for p in merged for t in p["targets"]]
    used = {n for e in merged_exprs for n in METRIC.findall(e)}
    for need in (
        "pigeon_messages_total",
        "pigeon_message_parts_total",
        "pigeon_carrier_rate_limit_parts_per_second",
        "pigeon_coordinator_claims_total",
        "pigeon_coordinator_calls_total",
        "pigeon_coordinator_ranges_total",
    ):
        assert need in used, f"the merged view shows no {need}"
    for expr in merged_exprs:
        # (the helper that says which targets are coordinated workers, or counts them, is no breakdown)
        outer = re.sub(r"group by \([^)]*\) \(pigeon_coordinator_claims_total\)", "", expr)
        for group in GROUPING.findall(outer):
            kept = {g.strip() for g in group.split(",")}
            assert not kept & {"worker", "instance", "job"}, f"not merged across workers: {expr!r}"
    for p in per_worker:
        for t in p["targets"]:
            assert "worker" in {g.strip() for grp in GROUPING.findall(t["expr"]) for g in grp.split(",")}, t
