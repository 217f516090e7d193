"""The issue's drill at its full size in CI: 500,000 recipients, 4 ``pigeon worker`` processes, 2 SIGKILLed, Redis restarted.

``loadtests/worker_drill.py`` with ``--restart-redis``: three workers start on a 500,000-row segment
against one HTTP simulator (idempotency keys on) with China Mobile shared at 20,000 parts/s; two are
SIGKILLed once a third of the messages arrived and a fourth joins; at half, the drill's own Redis
(AOF, fsync every second) is SIGKILLed and started again 2 s later. Judged on the simulator's log:
every recipient exactly once, none missing, nothing arriving while Redis is down, the busiest 1 s
window within the rate (``margin = 0.1``: beside the rest of the suite on 2 cores a request can
take over 50 ms from its charge to its arrival), the late worker finishing ranges. About 40 s here.
asyncio only: the workers use redis-py's asyncio client (docs/scale-out.md says how trio users run it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("redis")

from loadtests import worker_drill

ROWS = 500_000
RATE = 20_000


@pytest.mark.slow
def test_500000_recipients_four_workers_two_killed_and_a_redis_restart_everyone_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    out = tmp_path / "drill.json"
    code = worker_drill.main(
        [
            "--rows",
            str(ROWS),
            "--rate",
            str(RATE),
            "--margin",
            "0.1",
            "--restart-redis",
            "2",
            "--json",
            str(out),
        ]
    )
    capsys.readouterr()
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["received_twice_or_more"] == 0, report
    assert report["missing"] == 0, report
    assert report["received_once"] == ROWS
    assert report["busiest_second_parts"] <= RATE, report
    assert report["arrived_at_kill"] < report["arrived_at_redis_kill"] < ROWS, "both faults came mid-run"
    assert report["arrived_while_redis_down"] == 0, report
    assert report["arrived_later_than_0.5s_into_the_outage"] == 0, report
    assert len(report["ranges_done_by"]) >= 2, "the survivor and the late worker finished ranges"
    assert sum(report["ranges_done_by"].values()) == report["ranges"]
    assert code == 0
