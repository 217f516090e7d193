"""Load test: the outcomes loop at the issue's scale — 1M customers, 5M orders, a planted lift.

Each step runs as an operator runs it, in a fresh process (its wall time and peak resident memory
from ``wait4``):

1. ``config/make_orders.py`` — the shop's history (``--customers``, ``--orders``; cached in
   ``loadtests/data``), with every customer's true totals;
2. ``pigeon segment rfm`` — one segment per RFM class; every customer's class checked against the
   plain-Python reference (:func:`loadtests.rfm_orders.check_classes`);
3. ``config/make_shop.py combine`` and ``pigeon send`` with ``[outcomes] holdout`` over the
   ``file`` gateway;
4. ``config/make_shop.py respond`` — the next days' orders, the planted lift per class;
5. ``pigeon orders import`` of the response and of the whole 5M-order history — beside a
   baseline in the same run: the same file read with ``csv`` and inserted with ``executemany``
   into a bare SQLite table (no normalizing, no hashing), what a merchant's script would do;
6. ``pigeon report ID --outcomes --format json`` — checked against the generator's truth (buyers,
   revenue exactly; the planted lift of the whole campaign inside the 95% interval).

    python -m loadtests.outcomes_shop --json loadtests/results-outcomes-shop.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests._report import emit
from loadtests._segment import DATA, ROOT

ENGINE = """\
runs_dir = "runs"
batch_size = 8192
[store]
path = "pigeon.db"
[carriers.cm]
price_per_part = 0.045
[carriers.cu]
price_per_part = 0.045
[carriers.ct]
price_per_part = 0.045
[carriers.cbn]
price_per_part = 0.045
[gateways.out]
plugin = "file"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
[gateways.out.options]
path = "sent.jsonl"
"""
CAMPAIGN = """\
id = "double11"
name = "双11 老客召回"
engine = "engine.toml"
[segment]
source = "csv"
path = "segment.csv"
[template]
signature = "小鹅优选"
text = "亲爱的{rfm_class_zh}，双11满200减30，今晚开抢"
[policy]
send_window = ""
[outcomes]
holdout = 0.05
window = "7d"
"""
BASELINE = """
import csv, sqlite3, sys
db = sqlite3.connect(sys.argv[2], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE o (id TEXT PRIMARY KEY, phone TEXT, paid_at TEXT, amount TEXT)")
with open(sys.argv[1], newline="", encoding="utf-8") as fh:
    r = csv.reader(fh)
    next(r)
    while True:
        chunk = [row[:4] for _, row in zip(range(50000), r)]
        if not chunk:
            break
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO o VALUES (?, ?, ?, ?)", chunk)
        db.execute("COMMIT")
print(db.execute("SELECT count(*) FROM o").fetchone()[0])
"""


def _run(argv: list[str], cwd: Path) -> tuple[str, float, int]:
    """Run ``argv``: its standard output, wall seconds and peak RSS in MB."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"{argv[:5]} failed ({code}): {err.read().decode()[-3000:]}")
        return out.read().decode(), wall, usage.ru_maxrss // 1024


def _step(name: str, wall: float, peak: int, **more: Any) -> dict[str, Any]:
    print(f"{name}: {wall:.1f} s, peak {peak} MB {more}", file=sys.stderr, flush=True)
    return {"wall_seconds": round(wall, 2), "peak_rss_mb": peak, **more}


def main(argv: list[str] | None = None) -> int:
    """Run the loop and print (and save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--orders", type=int, default=5_000_000)
    p.add_argument("--json", type=Path, dest="out", help="also save the report here")
    args = p.parse_args(argv)
    py = sys.executable
    steps: dict[str, Any] = {}
    history = DATA / f"orders-{args.customers}-{args.orders}.csv"
    customers = Path(str(history) + ".customers.csv")
    if not history.exists() or not customers.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        _, wall, peak = _run(
            [
                py,
                str(ROOT / "config" / "make_orders.py"),
                "-o",
                str(history),
                "--customers",
                str(args.customers),
                "--orders",
                str(args.orders),
                "--customer-truth",
                str(customers),
            ],
            ROOT,
        )
        steps["generate_history"] = _step("generate", wall, peak)
    rows = sum(1 for _ in history.open(encoding="utf-8")) - 1
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "engine.toml").write_text(ENGINE, encoding="utf-8")
        (tmp / "campaign.toml").write_text(CAMPAIGN, encoding="utf-8")
        text, wall, peak = _run(
            [
                py,
                "-m",
                "engine",
                "segment",
                "rfm",
                str(history),
                "--status-column",
                "status",
                "--paid",
                "交易成功",
                "--out",
                "rfm",
                "--json",
                "-q",
            ],
            tmp,
        )
        (tmp / "summary.json").write_text(text, encoding="utf-8")
        check = "import json,sys;from pathlib import Path;from loadtests.rfm_orders import check_classes;"
        check += "a=sys.argv;print(check_classes(json.loads(Path(a[1]).read_text()),Path(a[2]),Path(a[3])))"
        checked, _, _ = _run(
            [py, "-c", check, str(tmp / "summary.json"), str(tmp / "rfm"), str(customers)], tmp
        )
        steps["segment_rfm"] = _step(
            "segment rfm",
            wall,
            peak,
            rows=rows,
            orders_per_second=round(rows / wall),
            classes_checked=int(checked),
        )
        _run([py, str(ROOT / "config" / "make_shop.py"), "combine", "rfm", "-o", "segment.csv"], tmp)
        text, wall, peak = _run([py, "-m", "engine", "send", "campaign.toml", "--json", "-q"], tmp)
        run = json.loads(text)
        steps["send"] = _step(
            "send", wall, peak, sent=run["states"]["sent"], held_out=run["reasons"]["suppressed"]["held_out"]
        )
        (sent,) = (tmp / "runs" / "double11").glob("*/sent.jsonl")
        _, wall, peak = _run(
            [
                py,
                str(ROOT / "config" / "make_shop.py"),
                "respond",
                "segment.csv",
                "--sent",
                str(sent),
                "-o",
                "response.csv",
            ],
            tmp,
        )
        truth = json.loads((tmp / "response.csv.truth.json").read_text("utf-8"))
        steps["respond"] = _step("respond", wall, peak, orders=truth["orders"])
        text, wall, peak = _run(
            [py, "-m", "engine", "orders", "import", "response.csv", "--id-column", "order_id", "--json"], tmp
        )
        steps["import_response"] = _step("import response", wall, peak, **json.loads(text))
        text, wall, peak = _run(
            [py, "-m", "engine", "orders", "import", str(history), "--id-column", "order_id", "--json"], tmp
        )
        imported = json.loads(text)
        steps["import_history"] = _step(
            "import history", wall, peak, rows_per_second=round(rows / wall), **imported
        )
        text, wall, peak = _run([py, "-c", BASELINE, str(history), str(tmp / "baseline.db")], tmp)
        steps["baseline_csv_executemany"] = _step(
            "baseline import", wall, peak, rows=int(text), rows_per_second=round(rows / wall)
        )
        text, wall, peak = _run(
            [py, "-m", "engine", "report", "double11", "--outcomes", "--format", "json"], tmp
        )
        report = json.loads(text)
        steps["report"] = _step("report", wall, peak)
    groups = {g["group"]: g for g in report["groups"]}
    exact = all(
        groups[n]["buyers"] == t["buyers_sent"]
        and groups[n]["holdout_buyers"] == t["buyers_held"]
        and round(groups[n]["revenue"] * 100) == t["revenue_sent_cents"]
        for n, t in truth["groups"].items()
    )
    ts = truth["groups"].values()
    n1, n0 = sum(t["sent"] for t in ts), sum(t["held"] for t in ts)
    planted = (
        sum(t["sent"] * (truth["base"][t["class"]] + truth["lift"][t["class"]]) for t in ts) / n1
        - sum(t["held"] * truth["base"][t["class"]] for t in ts) / n0
    )
    total = report["total"]
    out = {
        "scenario": "outcomes_shop",
        "machine": "shared 2-core VM with other helpers' jobs running: figures are indicative",
        "customers": args.customers,
        "history_rows": rows,
        "steps": steps,
        "import_ratio_to_baseline": round(
            steps["import_history"]["rows_per_second"] / steps["baseline_csv_executemany"]["rows_per_second"],
            3,
        ),
        "realized_buyers_and_revenue_exact": exact,
        "planted_lift": round(planted, 5),
        "reported_lift": [total["lift_low"], total["lift"], total["lift_high"]],
        "planted_lift_inside_interval": total["lift_low"] <= planted <= total["lift_high"],
        "groups": {
            n: [g["lift_low"], g["lift"], g["lift_high"], truth["lift"][truth["groups"][n]["class"]]]
            for n, g in groups.items()
        },
    }
    emit(out, args.out)
    return 0 if exact and out["planted_lift_inside_interval"] else 1


if __name__ == "__main__":
    sys.exit(main())
