"""Generate a synthetic shop's order export (CSV or JSON Lines) for trying ``pigeon segment rfm``.

Customers come in habits — one-off buyers, occasional ones, regulars and fans, plus a few who never
paid (closed orders only) — each with a recency, a number of orders and a typical basket; their
orders are sorted by time as an export lists them. Numbers follow the real carrier mix and are
written the ways exports write them (plain, ``+86 138-0013-8000``, ``0086…``, ``86…``); a share of
rows is bad on purpose (bad numbers, times or amounts), and some orders are closed (not paid).
Deterministic for a given ``--seed``. Beside the export it writes ``<output>.truth.json``: what a
correct build must find (customers, buyers, paid orders, revenue in cents, bad rows).

    python config/make_orders.py --customers 100000 --orders 500000 -o orders.csv
    python config/make_orders.py --chinese-headers --encoding gbk -o 订单导出.csv   # as Taobao exports
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from datetime import date, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_segment import SHARES, _prefixes

HEADER = ["order_id", "phone", "paid_at", "amount", "status"]
HEADER_ZH = ["订单编号", "收货人手机号", "订单付款时间", "买家实际支付金额", "订单状态"]
PAID, CLOSED = "交易成功", "交易关闭"
# habit: share of customers, mean extra orders (before scaling to --orders), mean recency (days)
HABITS = {
    "one_off": (0.52, 0.0, 330.0),
    "occasional": (0.26, 2.0, 160.0),
    "regular": (0.15, 7.0, 60.0),
    "fan": (0.05, 22.0, 20.0),
    "never_paid": (0.02, 0.0, 90.0),
}
BAD_PHONES = ["", "n/a", "021-62345678", "1380013800", "无"]
BAD_TIMES = ["", "n/a", "2025-02-30 10:00:00"]
BAD_AMOUNTS = ["", "面议", "-20.00"]
CHUNK = 200_000


def _numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct sendable Chinese mobiles (as ints), in the carrier mix."""
    prefixes = _prefixes()
    carriers = list(SHARES)
    shares = np.array([SHARES[c] for c in carriers])
    found = np.empty(0, dtype=np.int64)
    while len(found) < n:
        want = (n - len(found)) * 11 // 10 + 100
        pick = rng.choice(len(carriers), size=want, p=shares / shares.sum())
        prefix = np.array(
            [
                int(prefixes[carriers[c]][i % len(prefixes[carriers[c]])])
                for c, i in zip(pick.tolist(), rng.integers(0, 10**6, size=want).tolist(), strict=True)
            ],
            dtype=np.int64,
        )
        found = np.unique(np.concatenate((found, prefix * 10**6 + rng.integers(0, 10**6, size=want))))
    return rng.permutation(found)[:n]


def generate(
    customers: int, orders: int, seed: int, bad_rate: float, closed_rate: float, as_of: date
) -> dict[str, np.ndarray]:
    """The shop as aligned arrays, sorted by time: customer number, seconds, cents, paid, bad kind
    (0 good, 1 phone, 2 time, 3 amount), bad variant."""
    rng = np.random.default_rng(seed)
    names = list(HABITS)
    share = np.array([HABITS[h][0] for h in names])
    habit = rng.choice(len(names), size=customers, p=share / share.sum())
    extra_mean = np.array([HABITS[h][1] for h in names])[habit]
    scale = max(0.0, (orders - customers) / extra_mean.sum()) if extra_mean.sum() else 0.0
    count = 1 + rng.poisson(extra_mean * scale)
    numbers = _numbers(rng, customers)
    recency = np.minimum(rng.exponential(np.array([HABITS[h][2] for h in names])[habit]), 1000).astype(
        np.int64
    )
    basket = rng.lognormal(np.log(120), 0.7, size=customers)
    never = habit == names.index("never_paid")

    who = np.repeat(np.arange(customers), count)
    first_of = np.concatenate(([0], np.cumsum(count)[:-1]))
    is_last = np.zeros(len(who), dtype=bool)
    is_last[first_of] = True
    as_of_day = (as_of - date(1970, 1, 1)).days
    back = np.where(is_last, 0, rng.integers(1, 730, size=len(who)))
    day = as_of_day - recency[who] - back
    seconds = day * 86_400 + rng.integers(8 * 3600, 23 * 3600, size=len(who))
    cents = np.maximum(100, np.rint(basket[who] * rng.lognormal(0, 0.35, size=len(who)) * 100)).astype(
        np.int64
    )
    paid = ~never[who] & (rng.random(len(who)) >= closed_rate)
    bad = np.where(rng.random(len(who)) < bad_rate, rng.integers(1, 4, size=len(who)), 0)
    order = np.argsort(seconds, kind="stable")
    return {
        "number": numbers[who][order],
        "seconds": seconds[order],
        "cents": cents[order],
        "paid": paid[order],
        "bad": bad[order],
        "variant": rng.integers(0, 1000, size=len(who)),
        "form": rng.random(len(who)),
    }


def truth(shop: dict[str, np.ndarray]) -> dict[str, int]:
    """What a correct build finds: the good rows' customers, buyers, paid orders and revenue."""
    good = shop["bad"] == 0
    paid = good & shop["paid"]
    return {
        "rows": len(good),
        "bad_rows": int((~good).sum()),
        "customers": len(np.unique(shop["number"][good])),
        "buyers": len(np.unique(shop["number"][paid])),
        "paid_orders": int(paid.sum()),
        "unpaid_orders": int((good & ~shop["paid"]).sum()),
        "revenue_cents": int(shop["cents"][paid].sum()),
    }


def customer_truth(shop: dict[str, np.ndarray], path: Path) -> None:
    """Each customer's true totals over the good rows, summed in plain Python from the generated
    values (never from the written file): ``phone,orders,cents,last_day,seen_day`` (days since
    1970-01-01; ``last_day`` empty without a paid order). A load test classes them independently."""
    per: dict[int, list[int]] = {}
    for n, s, c, p, b in zip(
        shop["number"].tolist(),
        (shop["seconds"] // 86_400).tolist(),
        shop["cents"].tolist(),
        shop["paid"].tolist(),
        shop["bad"].tolist(),
        strict=True,
    ):
        if b:
            continue
        t = per.setdefault(n, [0, 0, -1, -1])
        t[3] = max(t[3], s)
        if p:
            t[0] += 1
            t[1] += c
            t[2] = max(t[2], s)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("phone,orders,cents,last_day,seen_day\n")
        fh.writelines(
            f"{n},{o},{c},{'' if last < 0 else last},{seen}\n" for n, (o, c, last, seen) in per.items()
        )


def _phone(n: int, form: float) -> str:
    s = str(n)
    if form < 0.82:
        return s
    if form < 0.88:
        return f"+86 {s[:3]}-{s[3:7]}-{s[7:]}"
    if form < 0.94:
        return "0086" + s
    return "86" + s


def rows(shop: dict[str, np.ndarray], start: int, stop: int) -> list[list[str]]:
    """The export's rows ``start:stop``: id, phone as written, time, amount, status."""
    out = []
    times = shop["seconds"][start:stop].astype("datetime64[s]").astype(str).tolist()
    for i, (n, t, c, p, b, v, f) in enumerate(
        zip(
            shop["number"][start:stop].tolist(),
            times,
            shop["cents"][start:stop].tolist(),
            shop["paid"][start:stop].tolist(),
            shop["bad"][start:stop].tolist(),
            shop["variant"][start:stop].tolist(),
            shop["form"][start:stop].tolist(),
            strict=True,
        ),
        start=start + 1,
    ):
        phone = BAD_PHONES[v % len(BAD_PHONES)] if b == 1 else _phone(n, f)
        when = BAD_TIMES[v % len(BAD_TIMES)] if b == 2 else t.replace("T", " ")
        amount = BAD_AMOUNTS[v % len(BAD_AMOUNTS)] if b == 3 else f"{c // 100}.{c % 100:02d}"
        out.append([str(i), phone, when, amount, PAID if p else CLOSED])
    return out


def _csv_line(row: list[str]) -> str:
    return ",".join(f'"{v}"' if "," in v or '"' in v else v for v in row) + "\r\n"


def main(argv: list[str] | None = None) -> int:
    """Write the order export and its truth file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=100_000, help="customers (default 100000)")
    p.add_argument("--orders", type=int, default=500_000, help="about this many order rows (default 500000)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("orders.csv"), help=".jsonl for JSON Lines; .gz compresses"
    )
    p.add_argument("--encoding", default="utf-8", help="CSV encoding, e.g. gbk (default utf-8)")
    p.add_argument("--chinese-headers", action="store_true", help="Taobao-style column names (订单付款时间…)")
    p.add_argument(
        "--bad-rate", type=float, default=0.005, help="share of rows bad on purpose (default 0.005)"
    )
    p.add_argument(
        "--closed-rate", type=float, default=0.03, help="share of orders closed, not paid (default 0.03)"
    )
    p.add_argument(
        "--as-of", type=date.fromisoformat, default=date(2025, 11, 30), help="the export's last day"
    )
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument(
        "--customer-truth", type=Path, help="also write each customer's true totals here (CSV), for checking"
    )
    args = p.parse_args(argv)
    if args.orders < args.customers:
        p.error("--orders must be at least --customers (every customer has an order)")

    started = datetime.now()
    shop = generate(args.customers, args.orders, args.seed, args.bad_rate, args.closed_rate, args.as_of)
    out = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    gz = out.suffix == ".gz"
    kind = Path(out.stem).suffix if gz else out.suffix
    header = HEADER_ZH if args.chinese_headers else HEADER
    total = len(shop["number"])
    with (
        gzip.open(out, "wb", compresslevel=3) if gz else out.open("wb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8" if kind == ".jsonl" else args.encoding, newline="") as text,
    ):
        if kind != ".jsonl":
            text.write(",".join(header) + "\r\n")
        for start in range(0, total, CHUNK):
            chunk = rows(shop, start, min(total, start + CHUNK))
            if kind == ".jsonl":
                text.write(
                    "".join(
                        json.dumps(dict(zip(header, r, strict=True)), ensure_ascii=False) + "\n"
                        for r in chunk
                    )
                )
            else:
                text.write("".join(map(_csv_line, chunk)))
    facts = truth(shop) | {"as_of": args.as_of.isoformat(), "seed": args.seed}
    Path(str(out) + ".truth.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    if args.customer_truth:
        customer_truth(shop, args.customer_truth)
    took = (datetime.now() - started).total_seconds()
    print(f"wrote {total:,} orders of {args.customers:,} customers to {out} in {took:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
