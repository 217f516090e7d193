"""Two checkouts' pytest-benchmark suites side by side, rounds interleaved: is a change within noise?

    python -m loadtests.bench_compare --base ../pigeon-before --head . [--rounds 3] [-k EXPR]

Each checkout runs its own ``tests/benchmarks`` with its own ``.venv`` (so each imports its own
engine and compiled kernels). Rounds alternate base, head, base, head… so both see the same
machine load; per benchmark the best round's median is kept (the least disturbed). A ratio
head/base over ``--noise`` (default 1.10) is flagged. Bounded: at most ``--rounds`` runs of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(checkout: Path, out: Path, expr: str | None) -> dict[str, float]:
    python = checkout / ".venv" / "bin" / "python"
    cmd = [str(python), "-m", "pytest", "-q", "tests/benchmarks", "--benchmark-enable", "--benchmark-only"]
    cmd += [f"--benchmark-json={out}", "-p", "no:randomly"]
    if expr:
        cmd += ["-k", expr]
    subprocess.run(cmd, cwd=checkout, check=True, capture_output=True, timeout=1800)
    data = json.loads(out.read_text())
    return {b["fullname"].split("::", 1)[1]: b["stats"]["median"] for b in data["benchmarks"]}


def main(argv: list[str] | None = None) -> int:
    """Run both suites ``--rounds`` times, interleaved; print a table; 1 if any benchmark is over noise."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the checkout before (with its .venv)")
    ap.add_argument("--head", type=Path, required=True, help="the checkout after it (with its .venv)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--noise", type=float, default=1.10, help="head/base ratio above which a row is flagged")
    ap.add_argument("-k", dest="expr", help="pytest -k expression to pick benchmarks")
    ap.add_argument("--json", type=Path, help="write the table as JSON here")
    args = ap.parse_args(argv)
    best: dict[str, dict[str, float]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(max(1, min(args.rounds, 10))):
            for side in ("base", "head"):
                got = _run(getattr(args, side).resolve(), Path(tmp) / f"{side}-{r}.json", args.expr)
                for name, median in got.items():
                    best[side][name] = min(median, best[side].get(name, float("inf")))
    rows = []
    for name in sorted(set(best["base"]) & set(best["head"])):
        b, h = best["base"][name], best["head"][name]
        rows.append({"benchmark": name, "base_us": b * 1e6, "head_us": h * 1e6, "ratio": h / b})
    width = max((len(r["benchmark"]) for r in rows), default=10)
    print(f"{'benchmark':<{width}}  {'base µs':>10}  {'head µs':>10}  ratio")
    for r in rows:
        flag = "  ← over noise" if r["ratio"] > args.noise else ""
        figures = f"{r['base_us']:>10.1f}  {r['head_us']:>10.1f}  {r['ratio']:.3f}"
        print(f"{r['benchmark']:<{width}}  {figures}{flag}")
    only = sorted(set(best["base"]) ^ set(best["head"]))
    if only:
        print("in one checkout only:", ", ".join(only))
    if args.json:
        table = {"rounds": args.rounds, "noise": args.noise, "rows": rows}
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 1 if any(r["ratio"] > args.noise for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
