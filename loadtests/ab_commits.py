"""Runs one load test on two versions of the code in turn (before, after, before, after…), one report.

The code of ``--before`` (a commit) is laid out with ``git archive`` in a temporary directory (the
compiled speedups copied beside it); the "after" side is this working tree. Each round runs the
load-test module once per side, alternating which side goes first, in a fresh process whose
``PYTHONPATH`` puts that side first; each run's JSON report is kept, and the report adds the
median of every numeric leaf per side and the machine's load average before each run (the
machine is shared: alternating in one invocation is what makes the two comparable).

    python -m loadtests.ab_commits --before HEAD~3 --rounds 3 --json out.json -- \\
        loadtests.binary_blast --messages 50000 --protocols smpp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests._report import emit

ROOT = Path(__file__).resolve().parent.parent


def _leaves(report: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(report, dict):
        for k, v in report.items():
            out.update(_leaves(v, f"{prefix}{k}."))
    elif isinstance(report, (int, float)) and not isinstance(report, bool):
        out[prefix.rstrip(".")] = float(report)
    return out


def lay_out(commit: str, into: Path) -> None:
    """The tree of ``commit`` in ``into``, with this tree's compiled extension modules."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for so in ROOT.glob("engine/*.so"):
        if not (into / "engine" / so.name).exists():
            shutil.copy2(so, into / "engine" / so.name)


def run_once(tree: Path, module_args: list[str], out: Path) -> dict[str, Any]:
    """One run of the load test in ``tree``; its JSON report."""
    module, *args = module_args
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the commit to compare this working tree with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("load_test", nargs=argparse.REMAINDER, help="-- module [its arguments]")
    args = p.parse_args(argv)
    module_args = [a for a in args.load_test if a != "--"]
    if not module_args:
        p.error("name the load-test module after --")
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        lay_out(args.before, before)
        trees = {"before": before, "after": ROOT}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for side in order:
                load = os.getloadavg()[0]
                report = run_once(trees[side], module_args, Path(tmp) / f"{side}-{r}.json")
                report["ab_load_average_before_run"] = load
                report["ab_round"] = r
                runs[side].append(report)
                print(f"round {r} {side}: load {load:.2f}", file=sys.stderr)
    medians: dict[str, dict[str, float]] = {}
    for side, reports in runs.items():
        leaves = [_leaves(rep) for rep in reports]
        keys = sorted(set().union(*leaves))
        medians[side] = {
            k: round(statistics.median(v[k] for v in leaves if k in v), 3)
            for k in keys
            if not k.startswith("ab_round")
        }
    emit(
        {
            "before": args.before,
            "after": "working tree",
            "load_test": module_args,
            "rounds": args.rounds,
            "median": medians,
            "runs": runs,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
