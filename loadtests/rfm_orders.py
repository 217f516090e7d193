"""Load test: ``pigeon segment rfm`` over millions of orders — orders/s and peak memory, beside DuckDB.

A synthetic shop (``config/make_orders.py``: 1M customers, their orders in the written forms and
with the bad rows of a real export) is exported at two sizes, the same customers with about 5M and
10M orders, so memory can be seen to follow customers, not orders. On each file, every contender
runs in a fresh process (its own peak resident memory from ``wait4``), interleaved, ``--repeat``
times:

* **builder**: ``pigeon segment rfm FILE --status-column status --paid 交易成功`` — normalizing
  every number, reading the times and amounts, totalling, scoring, classing and writing one
  segment file per class (its own summary gives the reading phase apart);
* **duckdb group-by**: what a merchant would type first — ``SELECT phone, count(*), sum(amount),
  max(paid_at) … WHERE status = '交易成功' GROUP BY phone`` over the same CSV, written to a CSV;
  numbers are grouped as written (``+86 138-…`` and ``138…`` are two customers) and bad amounts
  or times are skipped with ``TRY_CAST``;
* **duckdb rfm**: the same plus quintile scores (``NTILE(5)``) and the eight classes by the mean
  score, in one SQL statement, written to one CSV.

DuckDB runs on every core of the machine (``threads`` in the report); the builder on one. The
builder's counts are checked against the generator's truth file on every run, and on each file's
first run every customer's class and scores against a plain-Python reference computed from the
generator's own per-customer totals (``--customer-truth``).

    pip install -e '.[load]'
    python -m loadtests.rfm_orders --json loadtests/results-rfm-orders.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests._report import emit
from loadtests._segment import DATA, ROOT

GROUP_BY = """
COPY (
  SELECT phone, count(*) AS orders, sum(TRY_CAST(amount AS DECIMAL(14,2))) AS spent,
         max(TRY_CAST(paid_at AS TIMESTAMP)) AS last_order
  FROM read_csv('{file}', header = true, all_varchar = true)
  WHERE status = '交易成功'
  GROUP BY phone
) TO '{out}' (HEADER, DELIMITER ',')
"""
RFM = """
COPY (
  WITH o AS (
    SELECT phone, TRY_CAST(paid_at AS TIMESTAMP) AS t, TRY_CAST(amount AS DECIMAL(14,2)) AS a
    FROM read_csv('{file}', header = true, all_varchar = true) WHERE status = '交易成功'
  ), c AS (
    SELECT phone, count(*) AS f, sum(a) AS m, max(t) AS last FROM o
    WHERE t IS NOT NULL AND a IS NOT NULL GROUP BY phone
  ), s AS (
    SELECT *, date_diff('day', last, (SELECT max(last) FROM c)) AS r_days,
           ntile(5) OVER (ORDER BY last) AS rs, ntile(5) OVER (ORDER BY f) AS fs,
           ntile(5) OVER (ORDER BY m) AS ms
    FROM c
  )
  SELECT phone, r_days, f, m, rs, fs, ms,
         CASE (rs > avg(rs) OVER ())::INT * 4 + (fs > avg(fs) OVER ())::INT * 2 + (ms > avg(ms) OVER ())::INT
           WHEN 7 THEN 'important_value' WHEN 3 THEN 'important_recall' WHEN 5 THEN 'important_develop'
           WHEN 1 THEN 'important_retain' WHEN 6 THEN 'promising' WHEN 4 THEN 'newcomer'
           WHEN 2 THEN 'general_maintain' ELSE 'churned' END AS rfm_class
  FROM s
) TO '{out}' (HEADER, DELIMITER ',')
"""
DUCK = """
import json, sys, time, duckdb
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
con.execute(sys.argv[1])
elapsed = time.perf_counter() - t
rows = con.execute("SELECT count(*) FROM read_csv(?, header = true)", [sys.argv[2]]).fetchone()[0]
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(json.dumps({"seconds": elapsed, "rows_out": rows, "threads": threads}))
"""

CHECK = """
import json, sys
from pathlib import Path
from loadtests.rfm_orders import check_classes
summary = json.loads(Path(sys.argv[1]).read_text("utf-8"))
print(check_classes(summary, Path(sys.argv[2]), Path(sys.argv[3])))
"""


def _run(argv: list[str]) -> tuple[str, float, int]:
    """Run ``argv`` in a fresh process: its standard output, wall seconds, and peak RSS in MB.

    The peak is the child's ``ru_maxrss`` from ``wait4``, which also counts what the child held
    before its ``exec`` — a copy of this process: so this process keeps nothing large."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:4]} failed: {err.read().decode()[-2000:]}")
        return out.read().decode(), wall, usage.ru_maxrss // 1024


def _orders_file(customers: int, orders: int) -> Path:
    path = DATA / f"orders-{customers}-{orders}.csv"
    if not path.exists() or not _customer_truth(path).exists():
        DATA.mkdir(parents=True, exist_ok=True)
        generate = [sys.executable, str(ROOT / "config" / "make_orders.py"), "-o", str(path)]
        generate += ["--customers", str(customers), "--orders", str(orders)]
        generate += ["--customer-truth", str(_customer_truth(path))]
        subprocess.run(generate, check=True)
    return path


def _customer_truth(path: Path) -> Path:
    return Path(str(path) + ".customers.csv")


CLASS_OF = {
    (True, True, True): "important_value",
    (False, True, True): "important_recall",
    (True, False, True): "important_develop",
    (False, False, True): "important_retain",
    (True, True, False): "promising",
    (True, False, False): "newcomer",
    (False, True, False): "general_maintain",
    (False, False, False): "churned",
}


def reference_classes(truth: Path, scores: int = 5) -> dict[str, tuple[str, str]]:
    """Each customer's class and ``rfm`` digits by the rules of docs/segments.md, in plain Python
    (sorted lists, dicts) from the generator's own per-customer totals — not from the export."""
    with truth.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    as_of = max(int(last or seen) for _, _, _, last, seen in rows)
    buyers = [(p, int(o), int(c), as_of - int(last)) for p, o, c, last, _ in rows if int(o)]

    def cuts(values: list[int]) -> list[int]:
        ordered = sorted(values)
        return [ordered[(k * (len(ordered) - 1)) // scores] for k in range(1, scores)]

    rc, fc, mc = cuts([b[3] for b in buyers]), cuts([b[1] for b in buyers]), cuts([b[2] for b in buyers])
    scored = {
        p: (scores - sum(q < d for q in rc), 1 + sum(q < o for q in fc), 1 + sum(q < c for q in mc))
        for p, o, c, d in buyers
    }
    means = [sum(s[i] for s in scored.values()) / len(scored) for i in range(3)]
    out = {p: ("potential", "000") for p, o, *_ in rows if not int(o)}
    for p, (r, f, m) in scored.items():
        out[p] = (CLASS_OF[(r > means[0], f > means[1], m > means[2])], f"{r}{f}{m}")
    return out


def check_classes(summary: dict[str, Any], out: Path, truth: Path) -> int:
    """Compare every customer's class and scores in the segment files with the reference;
    returns how many customers were compared (raises on any difference)."""
    expected = reference_classes(truth)
    got: dict[str, tuple[str, str]] = {}
    for g in summary["groups"]:
        for f in g["files"]:
            with (out / f["file"]).open(newline="", encoding="utf-8-sig") as fh:
                for r in csv.DictReader(fh):
                    got[r["phone"]] = (r["rfm_class"], r["rfm"])
    wrong = [p for p in expected if got.get(p) != expected[p]]
    if wrong or len(got) != len(expected):
        raise AssertionError(f"{len(wrong)} customers classed unlike the reference, e.g. {wrong[:3]}")
    return len(expected)


def builder(path: Path, tmp: Path, check: bool = False) -> dict[str, Any]:
    out = tmp / "rfm"
    shutil.rmtree(out, ignore_errors=True)
    text, wall, peak = _run(
        [
            sys.executable,
            "-m",
            "engine",
            "segment",
            "rfm",
            str(path),
            "--status-column",
            "status",
            "--paid",
            "交易成功",
            "--out",
            str(out),
            "--json",
            "-q",
        ]
    )
    s = json.loads(text)
    truth = json.loads(Path(str(path) + ".truth.json").read_text("utf-8"))
    matches = {
        "customers": s["customers"] == truth["customers"],
        "buyers": s["buyers"] == truth["buyers"],
        "paid_orders": s["orders"] == truth["paid_orders"],
        "revenue": round(s["revenue"] * 100) == truth["revenue_cents"],
        "rejected": s["rejected"] == truth["bad_rows"],
    }
    if not all(matches.values()):
        raise AssertionError(f"the builder disagrees with the generator's truth: {matches}")
    checked = 0
    if check:  # in its own process: this one stays small, so its children's peaks are their own
        (tmp / "summary.json").write_text(text, encoding="utf-8")
        said, _, _ = _run(
            [sys.executable, "-c", CHECK, str(tmp / "summary.json"), str(out), str(_customer_truth(path))]
        )
        checked = int(said)
    return {
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(s["rows"] / wall),
        "read_seconds": s["read_seconds"],
        "read_rows_per_second": round(s["orders_per_second"]),
        "peak_rss_mb": peak,
        "customers": s["customers"],
        "files": sum(len(g["files"]) for g in s["groups"]),
        "folds": s["folds"],
        "matches_truth": True,
        "classes_checked_against_reference": checked,
    }


def duck(sql: str, path: Path, tmp: Path, rows: int) -> dict[str, Any]:
    out = tmp / "duck.csv"
    text, wall, peak = _run([sys.executable, "-c", DUCK, sql.format(file=path, out=out), str(out)])
    d = json.loads(text.strip().splitlines()[-1])
    return {
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(rows / wall),
        "query_seconds": round(d["seconds"], 2),
        "peak_rss_mb": peak,
        "rows_out": d["rows_out"],
        "threads": d["threads"],
    }


def main(argv: list[str] | None = None) -> int:
    """Generate the exports (once, kept in loadtests/data), run the contenders, report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--orders", type=int, nargs="+", default=[5_000_000, 10_000_000])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import duckdb  # noqa: F401  - fail early, saying what to install: pip install -e '.[load]'

    report: dict[str, Any] = {
        "scenario": "rfm_orders",
        "customers": args.customers,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "duckdb": __import__("duckdb").__version__,
        "files": [],
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for orders in args.orders:
            path = _orders_file(args.customers, orders)
            truth = json.loads(Path(str(path) + ".truth.json").read_text("utf-8"))
            runs: dict[str, list[dict[str, Any]]] = {"builder": [], "duckdb_group_by": [], "duckdb_rfm": []}
            for rep in range(args.repeat):  # interleaved: a slow moment of the machine hits all alike
                runs["builder"].append(builder(path, tmp, check=rep == 0))
                runs["duckdb_group_by"].append(duck(GROUP_BY, path, tmp, truth["rows"]))
                runs["duckdb_rfm"].append(duck(RFM, path, tmp, truth["rows"]))
            report["files"].append(
                {
                    "file": path.name,
                    "bytes": path.stat().st_size,
                    "rows": truth["rows"],
                    "bad_rows": truth["bad_rows"],
                    "customers": truth["customers"],
                    "runs": runs,
                    "best": {name: min(r, key=lambda x: x["wall_seconds"]) for name, r in runs.items()},
                }
            )
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
