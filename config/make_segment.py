"""Generate a realistic synthetic RFM segment export (CSV or JSON Lines) for trying Pigeon out.

The numbers follow the real carrier mix and are written the ways merchants' exports write them
(plain, ``+86 138-0013-8000``, ``0086…``, full-width digits, Excel's ``…0.0``); a small share of rows
is bad on purpose (empty or short numbers, landlines, unallocated prefixes, empty names), so the
rejects report has something to show. Deterministic for a given ``--seed``.

    python config/make_segment.py --rows 100000 -o config/segment.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from engine.core.carriers import default_prefix_table

# Share of each carrier in the mix (roughly the national subscriber split); the prefixes come
# from the shipped table, so generated numbers are always sendable unless made bad on purpose.
SHARES = {"cm": 0.58, "cu": 0.23, "ct": 0.17, "cbn": 0.01, "vno": 0.01}


def _prefixes() -> dict[str, list[str]]:
    """Sendable 5-digit prefixes per carrier (virtual operators apart), from the prefix table."""
    table = default_prefix_table()
    out: dict[str, list[str]] = {k: [] for k in SHARES}
    for prefix, carrier in sorted(table.route.items()):
        out["vno" if prefix in table.vno else carrier].append(prefix)
    return out


SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍鹏辉玲建国建华红梅晨曦子涵浩然雨桐欣怡"
CITIES = ["上海", "北京", "广州", "深圳", "杭州", "成都", "武汉", "南京", "重庆", "西安", "苏州", "长沙"]
SEGMENTS = [
    ("高价值活跃", 0.15),
    ("沉睡高价值", 0.20),
    ("新客首单", 0.25),
    ("流失预警", 0.25),
    ("普通活跃", 0.15),
]
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _number(rng: random.Random, prefixes: dict[str, list[str]]) -> str:
    r = rng.random()
    acc = 0.0
    for carrier, share in SHARES.items():
        acc += share
        if r <= acc:
            return rng.choice(prefixes[carrier]) + f"{rng.randrange(10**6):06d}"
    return "13800" + f"{rng.randrange(10**6):06d}"


def _written(n: str, rng: random.Random, bad_rate: float) -> str:
    r = rng.random()
    if r < bad_rate:
        return rng.choice(["", n[:10], "021-" + n[3:11], "154" + n[3:], "1440" + n[2:11], "n/a"])
    r = rng.random()
    if r < 0.80:
        return n
    if r < 0.86:
        return f"+86 {n[:3]}-{n[3:7]}-{n[7:]}"
    if r < 0.90:
        return "0086" + n
    if r < 0.94:
        return "86" + n
    if r < 0.97:
        return n + ".0"
    return n.translate(FULL_WIDTH)


def rows(count: int, seed: int, bad_rate: float) -> Iterator[list[str]]:
    """Yield header then rows: phone, name, city, segment, last_order, orders, spent, coupon."""
    rng = random.Random(seed)
    prefixes = _prefixes()
    yield ["phone", "name", "city", "segment", "last_order", "orders", "spent", "coupon"]
    weights = [w for _, w in SEGMENTS]
    names = [s for s, _ in SEGMENTS]
    for _ in range(count):
        seg = rng.choices(names, weights)[0]
        name = (
            ""
            if rng.random() < 0.08
            else rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.randint(1, 2)))
        )
        orders = rng.randint(1, 40)
        spent = round(orders * rng.uniform(30, 600), 2)
        coupon = {"高价值活跃": 50, "沉睡高价值": 80, "新客首单": 20, "流失预警": 30, "普通活跃": 10}[seg]
        day = f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}"
        yield [
            _written(_number(rng, prefixes), rng, bad_rate),
            name,
            rng.choice(CITIES),
            seg,
            day,
            str(orders),
            f"{spent:.2f}",
            str(coupon),
        ]


def main(argv: list[str] | None = None) -> int:
    """Write the segment file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="data rows (default 100000)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("config/segment.csv"),
        help="output file; .jsonl for JSON Lines, a .gz suffix compresses",
    )
    p.add_argument("--encoding", default="utf-8", help="CSV text encoding, e.g. gbk (default utf-8)")
    p.add_argument("--bad-rate", type=float, default=0.01, help="share of deliberately bad numbers")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)

    out = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    gz = out.suffix == ".gz"
    kind = Path(out.stem).suffix if gz else out.suffix
    gen = rows(args.rows, args.seed, args.bad_rate)
    header = next(gen)
    with (
        gzip.open(out, "wb", compresslevel=5) if gz else out.open("wb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8" if kind == ".jsonl" else args.encoding, newline="") as text,
    ):
        if kind == ".jsonl":
            for row in gen:
                text.write(json.dumps(dict(zip(header, row, strict=True)), ensure_ascii=False) + "\n")
        else:
            w = csv.writer(text, lineterminator="\r\n")  # as Excel writes it
            w.writerow(header)
            w.writerows(gen)
    print(f"wrote {args.rows:,} rows to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
