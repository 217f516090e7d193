"""engine.observability.metrics on its own: names, pre-initialized series, bounded labels, exposition, promtool."""

from __future__ import annotations

import platform
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.core.errors import (
    EngineError,
    GatewayAuthError,
    GatewayProtocolError,
    GatewayTimeout,
    GatewayUnavailable,
)
from engine.core.messages import RejectReason, SuppressReason
from engine.observability.metric_names import (
    DELIVERY_STATUSES,
    MESSAGE_OUTCOMES,
    NAMES,
    REQUEST_OUTCOMES,
    STAGE_REASONS,
    request_outcome,
)
from engine.observability.metrics import NO_METRICS, Metrics
from engine.pipeline.stages.hold_quiet_hours import OUTSIDE_SEND_WINDOW
from tests.conftest import promtool as find_promtool

ROUTES = {"cm": ["primary", "backup"], "cu": ["primary"]}
ALLOWED_LABELS = {
    "stage", "reason", "carrier", "gateway", "outcome", "status", "priority", "shard", "worker", "answer", "call"
}  # fmt: skip


def prepared() -> Metrics:
    m = Metrics(version="9.9.9", backend="trio")
    m.prepare(stages=["normalize", "dedupe", "route"], routes=ROUTES, in_flight={"primary": 8, "backup": 2})
    return m


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back from the text (what a scraper sees)."""
    body, _ = m.exposition()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, f"no series {name}{labels}"
    return v


def test_every_name_follows_the_conventions() -> None:
    m = prepared()
    families = {f.name: f for f in m.registry.collect()}
    exposed = set()
    for f in families.values():
        exposed.add(f.name + ("_total" if f.type == "counter" else ""))
        assert f.name.startswith("pigeon_")
        if f.type == "histogram":
            assert f.name.endswith("_seconds")
        labels = {k for s in f.samples for k in s.labels if k != "le"}
        if f.name == "pigeon_build_info":
            assert labels == {"version", "python", "backend"}
        else:
            assert labels <= ALLOWED_LABELS, f.name
    assert exposed == set(NAMES.values())


def test_every_known_series_exists_at_zero_before_anything_is_counted() -> None:
    m = prepared()
    for stage in ("source", "normalize", "dedupe", "route"):
        assert value(m, "pigeon_stage_messages_in_total", stage=stage) == 0
        assert value(m, "pigeon_stage_batch_duration_seconds_count", stage=stage) == 0
        for reason in STAGE_REASONS[stage]:
            assert value(m, "pigeon_stage_messages_dropped_total", stage=stage, reason=reason) == 0
    for priority in ("marketing", "transactional"):
        for carrier in ROUTES:
            assert value(m, "pigeon_queued_messages", priority=priority, carrier=carrier) == 0
    for carrier, gateways in ROUTES.items():
        assert value(m, "pigeon_ratelimit_wait_seconds_count", carrier=carrier) == 0
        for g in gateways:
            assert value(m, "pigeon_failovers_total", carrier=carrier, gateway=g) == 0
            for outcome in MESSAGE_OUTCOMES:
                assert value(m, "pigeon_messages_total", gateway=g, carrier=carrier, outcome=outcome) == 0
    for g in ("primary", "backup"):
        assert value(m, "pigeon_gateway_in_flight_requests", gateway=g) == 0
        assert value(m, "pigeon_submit_to_delivery_seconds_count", gateway=g) == 0
        for outcome in REQUEST_OUTCOMES:
            assert value(m, "pigeon_gateway_request_duration_seconds_count", gateway=g, outcome=outcome) == 0
        for status in DELIVERY_STATUSES:
            assert value(m, "pigeon_delivery_reports_total", gateway=g, status=status) == 0
    assert value(m, "pigeon_gateway_in_flight_limit", gateway="primary") == 8
    assert value(m, "pigeon_gateway_in_flight_limit", gateway="backup") == 2
    for source in ("api", "mo", "import", "manual"):
        assert value(m, "pigeon_optouts_added_total", reason=source) == 0
    m.prepare_worker("host:1")  # a coordinated worker's own series, at zero once it knows its name
    for answer in ("new", "taken", "opted_out", "adopted", "capped", "same_content"):
        assert value(m, "pigeon_coordinator_claims_total", worker="host:1", answer=answer) == 0
    for call in ("claim", "charge", "range", "slow_down"):
        for outcome in ("ok", "unavailable"):
            assert (
                value(m, "pigeon_coordinator_calls_total", worker="host:1", call=call, outcome=outcome) == 0
            )
    assert (
        value(m, "pigeon_build_info", version="9.9.9", python=platform.python_version(), backend="trio") == 1
    )


def test_stage_reasons_cover_every_reason_the_engine_has() -> None:
    known = {r for reasons in STAGE_REASONS.values() for r in reasons}
    assert known == {*RejectReason, *SuppressReason, OUTSIDE_SEND_WINDOW}


def test_counts_add_up_per_batch() -> None:
    m = prepared()
    m.stage_batch("normalize", 100, 97, {"invalid_number": 2, "missing_phone": 1}, 0.0004)
    m.stage_batch("normalize", 50, 50, None, 0.0002)
    m.queued("marketing", "cm", 120)
    m.queued("marketing", "cm", -100)
    m.ratelimit_wait("cm", 0.0)
    m.ratelimit_wait("cm", 0.3)
    m.in_flight("primary", 1)
    m.request("primary", "ok", 0.02, 100)
    m.request("primary", "throttled", 0.01, 100)
    m.messages("primary", "cm", "accepted", 95, parts=190)
    m.messages("primary", "cm", "rejected", 5, parts=5)
    m.retries("primary", "throttled", 100)
    m.failover("cm", "backup", 40)
    m.delivery_reports({"delivered": 3, "failed": 1}, [1.5, 2.5, 4000.0], gateway="primary")
    m.optouts_added(2, "mo")
    assert value(m, "pigeon_stage_messages_in_total", stage="normalize") == 150
    assert value(m, "pigeon_stage_messages_out_total", stage="normalize") == 147
    assert value(m, "pigeon_stage_messages_dropped_total", stage="normalize", reason="invalid_number") == 2
    assert value(m, "pigeon_stage_batch_duration_seconds_count", stage="normalize") == 2
    assert value(m, "pigeon_stage_batch_duration_seconds_sum", stage="normalize") == pytest.approx(0.0006)
    assert value(m, "pigeon_queued_messages", priority="marketing", carrier="cm") == 20
    assert value(m, "pigeon_ratelimit_wait_seconds_bucket", carrier="cm", le="0.001") == 1
    assert value(m, "pigeon_ratelimit_wait_seconds_count", carrier="cm") == 2
    assert value(m, "pigeon_gateway_in_flight_requests", gateway="primary") == 1
    assert value(m, "pigeon_gateway_request_duration_seconds_count", gateway="primary", outcome="ok") == 1
    assert value(m, "pigeon_gateway_request_messages_total", gateway="primary", outcome="throttled") == 100
    assert value(m, "pigeon_messages_total", gateway="primary", carrier="cm", outcome="accepted") == 95
    assert value(m, "pigeon_message_parts_total", gateway="primary", carrier="cm", outcome="accepted") == 190
    assert value(m, "pigeon_retries_total", gateway="primary", outcome="throttled") == 100
    assert value(m, "pigeon_failovers_total", carrier="cm", gateway="backup") == 40
    assert value(m, "pigeon_delivery_reports_total", gateway="primary", status="delivered") == 3
    assert value(m, "pigeon_submit_to_delivery_seconds_count", gateway="primary") == 3
    assert value(m, "pigeon_submit_to_delivery_seconds_bucket", gateway="primary", le="2.0") == 1
    assert value(m, "pigeon_optouts_added_total", reason="mo") == 2


def test_labels_from_outside_are_folded_into_bounded_sets() -> None:
    """A webhook's gateway name, a report's status and an opt-out's source are outside input."""
    m = prepared()

    def hostile(tag: str) -> None:
        for i in range(50):
            m.delivery_reports({f"{tag}-{i}": 1, "delivered": 1}, [1.0], gateway=f"+86138001380{i:02d}{tag}")
            m.optouts_added(1, f"{tag}-campaign-{i}")

    hostile("a")
    series = len(samples(m))
    hostile("b")
    assert len(samples(m)) == series  # new names: no new series
    gateways = {dict(k[1]).get("gateway") for k in samples(m) if k[0] == "pigeon_delivery_reports_total"}
    assert gateways == {"primary", "backup", "other"}
    assert value(m, "pigeon_delivery_reports_total", gateway="other", status="unknown") == 100
    assert value(m, "pigeon_delivery_reports_total", gateway="other", status="delivered") == 100
    assert value(m, "pigeon_optouts_added_total", reason="other") == 100


def test_gateway_errors_map_to_bounded_request_outcomes() -> None:
    assert request_outcome(GatewayUnavailable("x")) == "unavailable"
    assert request_outcome(GatewayTimeout("x")) == "timeout"
    assert request_outcome(GatewayAuthError("x")) == "auth"
    assert request_outcome(GatewayProtocolError("x")) == "protocol"

    class PluginOwn(GatewayTimeout):
        pass

    assert request_outcome(PluginOwn("x")) == "timeout"
    assert request_outcome(ValueError("x")) == "error"
    assert set(map(request_outcome, [GatewayUnavailable("")])) <= set(REQUEST_OUTCOMES)


def test_no_metrics_counts_nothing() -> None:
    NO_METRICS.prepare(stages=["normalize"], routes=ROUTES)
    NO_METRICS.stage_batch("normalize", 1, 1, {"x": 1}, 0.1)
    NO_METRICS.messages("g", "cm", "accepted", 1, parts=1)
    NO_METRICS.delivery_reports({"delivered": 1}, [1.0], gateway="g")
    assert NO_METRICS.exposition()[0] == b""
    assert not NO_METRICS.enabled


def test_two_engines_in_one_process_do_not_share_counts() -> None:
    a, b = prepared(), prepared()
    a.messages("primary", "cm", "accepted", 7)
    assert value(a, "pigeon_messages_total", gateway="primary", carrier="cm", outcome="accepted") == 7
    assert value(b, "pigeon_messages_total", gateway="primary", carrier="cm", outcome="accepted") == 0


def test_serve_answers_scrapes_and_releases_its_port() -> None:
    m = prepared()
    m.messages("primary", "cu", "accepted", 3)
    with m.serve("127.0.0.1", 0) as server:
        host, port = server.address
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'pigeon_messages_total{carrier="cu",gateway="primary",outcome="accepted"} 3.0' in body
        with pytest.raises(EngineError, match="choose another --metrics-port"):
            m.serve("127.0.0.1", port)
    again = m.serve(host, port)  # the port is free again
    again.close()


def test_promtool_finds_the_exposition_clean() -> None:
    """Skipped without promtool, except in CI (:func:`tests.conftest.promtool`)."""
    promtool = find_promtool()
    m = prepared()
    m.stage_batch("dedupe", 10, 9, {"duplicate": 1}, 0.001)
    m.request("backup", "timeout", 30.0, 7)
    m.delivery_reports({"expired": 2}, [86400.0 * 2], gateway="backup")
    body, _ = m.exposition()
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert done.stdout.strip() == b"" and done.stderr.strip() == b""  # not even a lint warning


def test_docs_list_every_metric() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text("utf-8")
    for name in NAMES.values():
        assert f"| `{name}` |" in docs, f"docs/metrics.md has no row for {name}"


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """Prometheus buckets are "less than or equal"."""
    m = prepared()
    m.ratelimit_wait("cu", 0.001)
    m.ratelimit_wait("cu", 0.0010001)
    assert value(m, "pigeon_ratelimit_wait_seconds_bucket", carrier="cu", le="0.001") == 1
    assert value(m, "pigeon_ratelimit_wait_seconds_bucket", carrier="cu", le="0.0025") == 2
    assert value(m, "pigeon_ratelimit_wait_seconds_bucket", carrier="cu", le="+Inf") == 2


def test_scrapes_from_another_thread_while_counting_stay_consistent() -> None:
    """The scrape thread reads while the loop thread counts and creates series."""
    import threading

    m = prepared()
    stop = threading.Event()
    problems: list[str] = []
    scrapes = [0]

    def scrape() -> None:
        while not stop.is_set():
            try:
                body, _ = m.exposition()
                for fam in text_string_to_metric_families(body.decode()):
                    if fam.type != "histogram":
                        continue
                    by_series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
                    for s in fam.samples:
                        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                        by_series.setdefault(key, {})[s.name.rsplit("_", 1)[1] + s.labels.get("le", "")] = (
                            s.value
                        )
                    for key, v in by_series.items():
                        if v["count"] != v["bucket+Inf"]:
                            problems.append(f"{fam.name}{key}: count {v['count']} != +Inf {v['bucket+Inf']}")
                scrapes[0] += 1
            except Exception as exc:
                problems.append(repr(exc))

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(20_000):
            m.stage_batch(f"plugin_stage_{i % 200}", 10, 9, {f"reason_{i % 7}": 1}, 0.0001 * (i % 50))
            m.request("primary", "ok", 0.001 * (i % 100), 10)
    finally:
        stop.set()
        t.join()
    assert scrapes[0] > 0
    assert problems == []
    assert (
        value(m, "pigeon_gateway_request_duration_seconds_count", gateway="primary", outcome="ok") == 20_000
    )
