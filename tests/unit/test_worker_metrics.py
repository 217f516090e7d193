"""MergedMetrics: the service's series plus its blast workers', summed series by series."""

from __future__ import annotations

import re
import subprocess

from engine.observability.metrics import Metrics
from engine.observability.worker_metrics import MergedMetrics
from tests.conftest import promtool as find_promtool


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m is not None, series
    return float(m.group(1))


def _worker(accepted: int, in_flight_limit: int = 4) -> str:
    w = Metrics()
    w.prepare(routes={"cm": ["sim"]}, in_flight={"sim": in_flight_limit}, stages=["normalize"])
    if accepted:
        w.messages("sim", "cm", "accepted", accepted, accepted)
    return w.exposition()[0].decode()


ACCEPTED = 'pigeon_messages_total{carrier="cm",gateway="sim",outcome="accepted"}'
LIMIT = 'pigeon_gateway_in_flight_limit{gateway="sim"}'


def test_live_workers_add_to_the_service_and_build_info_stays_one() -> None:
    svc = Metrics()
    svc.prepare(routes={"cm": ["sim"]}, in_flight={"sim": 4}, stages=["normalize"])
    svc.messages("sim", "cm", "accepted", 5, 5)
    merged = MergedMetrics(svc.registry)
    text = merged.render([_worker(100), _worker(20)]).decode()
    assert _value(text, ACCEPTED) == 125
    assert _value(text, LIMIT) == 12  # the in-flight windows of the three processes
    assert text.count("# TYPE pigeon_messages_total counter") == 1
    assert len(re.findall(r"^pigeon_build_info\{", text, re.M)) == 1
    assert _value(merged.render([]).decode(), ACCEPTED) == 5  # a live worker's counts are not kept


def test_the_configured_carrier_rate_is_kept_once_not_added_up() -> None:
    """Every process reports the same setting: the service and two blasts at 500 parts/s are 500."""
    rate = 'pigeon_carrier_rate_limit_parts_per_second{carrier="cm"}'

    def process() -> Metrics:
        m = Metrics()
        m.prepare(routes={"cm": ["sim"]}, in_flight={"sim": 4}, rates={"cm": 500})
        return m

    merged = MergedMetrics(process().registry)
    text = merged.render([process().exposition()[0].decode(), process().exposition()[0].decode()]).decode()
    assert _value(text, rate) == 500
    assert _value(text, LIMIT) == 12  # (an in-flight window is per process: those add up)


def test_a_retired_workers_counters_stay_and_its_gauges_go() -> None:
    svc = Metrics()
    svc.prepare(routes={"cm": ["sim"]}, in_flight={"sim": 4}, stages=["normalize"])
    merged = MergedMetrics(svc.registry)
    merged.retire(_worker(300))
    merged.retire(_worker(7))
    text = merged.render([_worker(1)]).decode()
    assert _value(text, ACCEPTED) == 308  # never down after a blast ends
    assert _value(text, LIMIT) == 8  # the service's window and the live worker's only


def test_the_merged_exposition_passes_promtool() -> None:
    """What the service serves with workers running is still a clean Prometheus exposition."""
    promtool = find_promtool()
    svc = Metrics()
    svc.prepare(routes={"cm": ["sim"]}, in_flight={"sim": 4}, stages=["normalize"])
    merged = MergedMetrics(svc.registry)
    merged.retire(_worker(3))
    text = merged.render([_worker(100)])
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
