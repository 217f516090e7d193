"""A synthetic shop's response to a campaign: orders that follow messages, with a known planted lift.

The walk-through (docs/outcomes.md) and the tests run a whole loop on made-up data:

1. ``python config/make_orders.py …`` — the shop's order history (what ``pigeon segment rfm`` reads);
2. ``pigeon segment rfm orders.csv --out rfm`` — one segment file per RFM class;
3. ``python config/make_shop.py combine rfm -o segment.csv`` — the files as one segment (the
   ``group`` column keeps each row's group), for one campaign over every group;
4. ``pigeon send campaign.toml`` with ``[outcomes] holdout = 0.1``;
5. ``python config/make_shop.py respond segment.csv --sent runs/…/sent.jsonl -o response.csv`` —
   the next days' orders: each customer buys with probability ``BASE[class]``, plus
   ``LIFT[class]`` when the campaign reached them (their number is in the file gateway's
   ``sent.jsonl``); a buyer places one order (a fifth of them two), paid at a uniform time in
   ``[--after, --after + --days]``, amounts log-normal around the class's basket;
6. ``pigeon orders import response.csv --id-column order_id`` and ``pigeon report ID --outcomes``;
   ``python config/make_shop.py receipts STORE ID`` first records delivery receipts the ``file``
   gateway cannot give (a share delivered after an exponential delay, the rest failed).

Beside ``response.csv`` it writes ``response.csv.truth.json``: the planted rates, and per group
the recipients reached and not reached and how many of each bought, and their revenue in cents —
what the report must find. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

BASE = {
    "important_value": 0.060,
    "important_develop": 0.045,
    "important_retain": 0.035,
    "important_recall": 0.030,
    "promising": 0.030,
    "newcomer": 0.020,
    "general_maintain": 0.015,
    "churned": 0.006,
    "potential": 0.010,
}
"""Share of a class that buys in the window anyway (the holdout's conversion)."""
LIFT = {
    "important_value": 0.050,
    "important_develop": 0.040,
    "important_retain": 0.035,
    "important_recall": 0.045,
    "promising": 0.030,
    "newcomer": 0.020,
    "general_maintain": 0.012,
    "churned": 0.006,
    "potential": 0.010,
}
"""What a message adds to that share (the planted lift)."""
BASKET = 150.0
"""Median order amount in yuan when a customer's own average is unknown."""


def combine(rfm_dir: Path, out: Path) -> int:
    """Concatenate every segment file of ``rfm_dir`` (one header, UTF-8 without BOM); returns rows."""
    files = sorted(p for p in rfm_dir.glob("*.csv") if p.name not in ("groups.csv", "rejects.csv"))
    rows = 0
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        header: list[str] | None = None
        for f in files:
            with f.open(newline="", encoding="utf-8-sig") as src:
                r = csv.reader(src)
                head = next(r)
                if header is None:
                    header = head
                    w.writerow(header)
                elif head != header:
                    raise SystemExit(f"{f}: other columns than the first file's")
                for row in r:
                    w.writerow(row)
                    rows += 1
    return rows


def _reached(sent: Path) -> set[str]:
    """The national numbers the file gateway wrote (``to`` is E.164)."""
    out: set[str] = set()
    with sent.open(encoding="utf-8") as fh:
        for line in fh:
            to = json.loads(line)["to"]
            out.add(to[3:] if to.startswith("+86") else to)
    return out


def _wall(ts: float) -> str:
    """Asia/Shanghai wall-clock text of epoch seconds (UTC+8, no daylight saving)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts + 8 * 3600))


def respond(
    segment: Path, sent: Path, out: Path, *, after: float, days: float, seed: int
) -> dict[str, object]:
    """Write the response orders and their truth file; returns the truth."""
    rng = np.random.default_rng(seed)
    reached = _reached(sent)
    groups: dict[str, dict[str, object]] = {}
    order_no = 0
    with (
        segment.open(newline="", encoding="utf-8-sig") as src,
        out.open("w", newline="", encoding="utf-8") as fh,
    ):
        w = csv.writer(fh)
        w.writerow(["order_id", "phone", "paid_at", "amount", "group_code"])
        for row in csv.DictReader(src):
            cls = row["rfm_class"]
            g = groups.setdefault(
                row["group"],
                {
                    "class": cls,
                    "sent": 0,
                    "held": 0,
                    "buyers_sent": 0,
                    "buyers_held": 0,
                    "revenue_sent_cents": 0,
                    "revenue_held_cents": 0,
                    "orders_sent": 0,
                },
            )
            got = row["phone"] in reached
            g["sent" if got else "held"] += 1  # type: ignore[operator]
            p = BASE[cls] + (LIFT[cls] if got else 0.0)
            if rng.random() >= p:
                continue
            g["buyers_sent" if got else "buyers_held"] += 1  # type: ignore[operator]
            avg = float(row.get("avg_order") or 0) or BASKET
            for _ in range(2 if rng.random() < 0.2 else 1):
                cents = max(100, round(avg * math.exp(float(rng.normal(0, 0.3))) * 100))
                paid = after + rng.random() * days * 86400
                order_no += 1
                w.writerow(
                    [f"R{order_no:08d}", row["phone"], _wall(paid), f"{cents / 100:.2f}", row["group"]]
                )
                if got:
                    g["revenue_sent_cents"] += cents  # type: ignore[operator]
                    g["orders_sent"] += 1  # type: ignore[operator]
                else:
                    g["revenue_held_cents"] += cents  # type: ignore[operator]
    truth: dict[str, object] = {
        "base": BASE,
        "lift": LIFT,
        "after": after,
        "days": days,
        "orders": order_no,
        "groups": groups,
    }
    Path(str(out) + ".truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return truth


def receipts(store: Path, campaign: str, *, delivered: float, mean_seconds: float, seed: int) -> int:
    """Delivery receipts for a campaign sent through the ``file`` gateway (which has none): a share
    ``delivered`` of its sent messages delivered an exponential time (``mean_seconds``) after the
    hand-over, the rest failed. Recorded in the ledger as a gateway's webhook would; returns how many."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from engine.core.messages import DeliveryReport, DeliveryStatus
    from engine.state.ledger.store import Ledger

    rng = np.random.default_rng(seed)
    ledger = Ledger(store)
    try:
        rows = ledger.row_outcomes(campaign)
        sent = np.flatnonzero(rows.submitted_at > 0)
        wait = rng.exponential(mean_seconds, size=sent.size)
        ok = rng.random(sent.size) < delivered
        reports = [
            DeliveryReport(
                provider_id="",
                message_id=f"{campaign}-{r}",
                status=DeliveryStatus.DELIVERED if good else DeliveryStatus.FAILED,
                code="" if good else "UNDELIV",
                done_at=float(rows.submitted_at[r]) + w,
            )
            for r, w, good in zip(sent.tolist(), wait.tolist(), ok.tolist(), strict=True)
        ]
        for k in range(0, len(reports), 10_000):
            ledger.apply_reports(reports[k : k + 10_000])
    finally:
        ledger.close()
    return len(reports)


def main() -> None:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("combine", help="one segment from the files of `pigeon segment rfm --out DIR`")
    c.add_argument("rfm_dir", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True)
    r = sub.add_parser("respond", help="the orders customers place after the campaign, with a planted lift")
    r.add_argument("segment", type=Path, help="the campaign's segment (with group and rfm_class columns)")
    r.add_argument("--sent", type=Path, required=True, help="the file gateway's sent.jsonl of the run")
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("--after", type=float, help="first order time, epoch seconds (default: now + 60 s)")
    r.add_argument("--days", type=float, default=5.0, help="orders spread over this many days (default 5)")
    r.add_argument("--seed", type=int, default=7)
    d = sub.add_parser("receipts", help="delivery receipts for a campaign sent through the file gateway")
    d.add_argument("store", type=Path, help="the engine's store file (store.path)")
    d.add_argument("campaign")
    d.add_argument("--delivered", type=float, default=0.96, help="share delivered (default 0.96)")
    d.add_argument("--mean-seconds", type=float, default=90.0, help="mean delivery delay (default 90 s)")
    d.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.what == "receipts":
        n = receipts(
            args.store,
            args.campaign,
            delivered=args.delivered,
            mean_seconds=args.mean_seconds,
            seed=args.seed,
        )
        print(f"recorded {n:,} delivery receipts")
        return
    if args.what == "combine":
        n = combine(args.rfm_dir, args.output)
        print(f"wrote {args.output}: {n:,} rows")
        return
    after = args.after if args.after is not None else time.time() + 60
    truth = respond(args.segment, args.sent, args.output, after=after, days=args.days, seed=args.seed)
    print(f"wrote {args.output}: {truth['orders']:,} orders; truth in {args.output}.truth.json")


if __name__ == "__main__":
    main()
