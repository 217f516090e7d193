"""``pigeon segment rfm`` end to end: a generated shop, read from CSV, GBK CSV, JSON Lines, PostgreSQL and
MariaDB, gives every customer the class, stages and scores a plain-Python reference computes.

The shop is made here (its customers, their orders in the ways exports write numbers, a share of
rows bad on purpose, closed orders that do not count); the reference reads the shop's own records —
never the files — and applies the rules as docs/segments.md states them, with sorted lists and
dicts. The databases are the PostgreSQL and MariaDB on loopback: each test creates its own database
and drops it. CI sets PIGEON_REQUIRE_DATABASES (.ci/run), so there a server that does not answer
fails the test; elsewhere its cases are skipped, saying so.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from engine.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PG = os.environ.get("PIGEON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The PostgreSQL server (an address without a database; trust auth on loopback)."""
MARIADB = os.environ.get("PIGEON_TEST_MARIADB", "mysql://root@127.0.0.1:3306")
"""The MariaDB server (an address without a database)."""
AS_OF_DAY = date(2025, 11, 30)

# The eight classes by (R high, F high, M high), as the seed lists them (shared/seeds 003).
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

CLASS_ZH = {
    "important_value": "重要价值客户",
    "important_recall": "重要唤回客户",
    "important_develop": "重要深耕客户",
    "important_retain": "重要挽留客户",
    "promising": "潜力客户",
    "newcomer": "新客户",
    "general_maintain": "一般维持客户",
    "churned": "流失客户",
    "potential": "潜在客户",
}


@dataclass
class Order:
    order_id: int
    phone: str
    """As written in the export."""
    customer: str | None
    """The customer's 11-digit number; None for a row whose phone is bad."""
    paid_at: datetime | None
    """None: the time is bad."""
    amount: str
    cents: int | None
    """None: the amount is bad."""
    paid: bool
    reason: str | None = None
    """Why the row is rejected, if it is."""


@dataclass
class Shop:
    orders: list[Order] = field(default_factory=list)


def _written(national: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.7:
        return national
    if r < 0.8:
        return f"+86 {national[:3]}-{national[3:7]}-{national[7:]}"
    if r < 0.9:
        return "0086" + national
    return "86" + national


def make_shop(customers: int, seed: int) -> Shop:
    """Customers of four kinds of habit, their orders sorted by time, a share of rows bad."""
    rng = random.Random(seed)
    numbers = rng.sample(range(10**8), customers)
    prefixes = ["138", "139", "186", "133", "177"]
    shop = Shop()
    rows: list[tuple[datetime, str, str | None, str, int | None, bool, str | None, str]] = []
    for i, n in enumerate(numbers):
        national = f"{prefixes[i % 5]}{n:08d}"
        habit = rng.random()
        if habit < 0.55:
            count, span = 1, 600
        elif habit < 0.8:
            count, span = rng.randint(2, 4), 400
        elif habit < 0.97:
            count, span = rng.randint(5, 15), 200
        else:
            count, span = 0, 300  # only closed orders: potential
        last = rng.randint(0, span)
        for k in range(max(count, 1)):
            day = AS_OF_DAY - timedelta(days=last + (rng.randint(0, 300) if k else 0))
            at = datetime(
                day.year, day.month, day.day, rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
            )
            cents = rng.randint(100, 80000)
            paid = count > 0
            rows.append(
                (
                    at,
                    _written(national, rng),
                    national,
                    f"{cents // 100}.{cents % 100:02d}",
                    cents,
                    paid,
                    None,
                    "",
                )
            )
        for _ in range(rng.randint(0, 1) if count else 1):  # closed orders: customers known, not buyers
            day = AS_OF_DAY - timedelta(days=rng.randint(last, last + 100))
            at = datetime(day.year, day.month, day.day, 12, 0, 0)
            rows.append((at, national, national, "59.00", 5900, False, None, ""))
    bad = [
        ("", "missing_phone", "phone"),
        ("n/a", "invalid_number", "phone"),
        ("021-62345678", "not_mobile", "phone"),
        ("n/a", "bad_time", "time"),
        ("free", "bad_amount", "amount"),
    ]
    for j in range(len(rows) // 80):
        at = datetime(2025, 6, 1, 12, 0, 0) + timedelta(hours=j)
        value, reason, where = bad[j % len(bad)]
        phone = value if where == "phone" else f"137{j:08d}"
        rows.append((at, phone, None, value if where == "amount" else "10.00", None, True, reason, where))
        if where == "time":
            rows[-1] = (at, phone, None, "10.00", None, True, reason, "time")
    rows.sort(key=lambda r: (r[0], r[1]))
    for oid, (at, phone, customer, amount, cents, paid, reason, where) in enumerate(rows, start=1):
        shop.orders.append(
            Order(
                order_id=oid,
                phone=phone,
                customer=customer,
                paid_at=None if where == "time" else at,
                amount=amount,
                cents=cents,
                paid=paid,
                reason=reason,
            )
        )
    return shop


# ---- the reference: the rules of docs/segments.md in plain Python ------------------------------------


def reference(shop: Shop, scores: int = 5) -> dict[str, dict[str, object]]:
    """Every customer's expected segment row (the fields compared), by 11-digit number."""
    per: dict[str, dict[str, object]] = {}
    for o in shop.orders:
        if o.reason is not None:
            continue
        assert o.customer is not None and o.paid_at is not None and o.cents is not None
        c = per.setdefault(o.customer, {"orders": 0, "cents": 0, "first": None, "last": None, "seen": None})
        day = o.paid_at.date()
        c["seen"] = max(c["seen"] or day, day)  # type: ignore[type-var]
        if o.paid:
            c["orders"] = int(c["orders"]) + 1  # type: ignore[call-overload]
            c["cents"] = int(c["cents"]) + o.cents  # type: ignore[call-overload]
            c["first"] = min(c["first"] or day, day)  # type: ignore[type-var]
            c["last"] = max(c["last"] or day, day)  # type: ignore[type-var]
    as_of = max((c["last"] or c["seen"]) for c in per.values())  # type: ignore[type-var]
    buyers = {p: c for p, c in per.items() if c["orders"]}
    recency = {p: (as_of - (c["last"] or c["seen"])).days for p, c in per.items()}  # type: ignore[operator]

    def cuts(values: list[int]) -> list[int]:
        s = sorted(values)
        return [s[(k * (len(s) - 1)) // scores] for k in range(1, scores)]

    r_cuts = cuts([recency[p] for p in buyers])
    f_cuts = cuts([int(c["orders"]) for c in buyers.values()])  # type: ignore[call-overload]
    m_cuts = cuts([int(c["cents"]) for c in buyers.values()])  # type: ignore[call-overload]
    score: dict[str, tuple[int, int, int]] = {}
    for p, c in buyers.items():
        r = scores - sum(1 for q in r_cuts if q < recency[p])  # one less for each cut it is older than
        f = 1 + sum(1 for q in f_cuts if q < c["orders"])  # type: ignore[operator]
        m = 1 + sum(1 for q in m_cuts if q < c["cents"])  # type: ignore[operator]
        score[p] = (r, f, m)
    means = [sum(s[i] for s in score.values()) / len(score) for i in range(3)]
    out: dict[str, dict[str, object]] = {}
    for p, c in per.items():
        d = recency[p]
        r_stage = "active" if d <= 90 else "using" if d <= 180 else "dormant" if d <= 365 else "lost"
        n = int(c["orders"])  # type: ignore[call-overload]
        f_stage = "potential" if n == 0 else "new" if n == 1 else "old" if n < 5 else "fan"
        if n:
            r, f, m = score[p]
            klass = CLASS_OF[(r > means[0], f > means[1], m > means[2])]
        else:
            r = f = m = 0
            klass = "potential"
        cents = int(c["cents"])  # type: ignore[call-overload]
        out[p] = {
            "rfm_class": klass,
            "r_stage": r_stage,
            "f_stage": f_stage,
            "recency_days": str(d),
            "orders": str(n),
            "spent": f"{cents // 100}.{cents % 100:02d}",
            "avg_order": f"{cents // n // 100}.{cents // n % 100:02d}" if n else "",
            "first_order": c["first"].isoformat() if c["first"] else "",  # type: ignore[attr-defined]
            "last_order": c["last"].isoformat() if c["last"] else "",  # type: ignore[attr-defined]
            "r_score": str(r),
            "f_score": str(f),
            "m_score": str(m),
            "rfm": f"{r}{f}{m}",
            "rfm_class_zh": CLASS_ZH[klass],
        }
    return out


# ---- the shop written as exports ---------------------------------------------------------------------

HEADER = ["order_id", "phone", "paid_at", "amount", "status"]
HEADER_ZH = ["订单编号", "收货人手机号", "订单付款时间", "买家实际支付金额", "订单状态"]


def _cells(o: Order) -> list[str]:
    when = o.paid_at.strftime("%Y-%m-%d %H:%M:%S") if o.paid_at else "n/a"
    return [str(o.order_id), o.phone, when, o.amount, "交易成功" if o.paid else "交易关闭"]


def write_csv(shop: Shop, path: Path, *, encoding: str = "utf-8", header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow(header)
        w.writerows(_cells(o) for o in shop.orders)
    return path


def write_jsonl(shop: Shop, path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for o in shop.orders:
            fh.write(json.dumps(dict(zip(HEADER, _cells(o), strict=True)), ensure_ascii=False) + "\n")
    return path


def _require(what: str, connect: Callable[[], object]) -> None:
    try:
        conn = connect()
    except Exception as exc:
        hint = f"{what} does not answer on loopback ({exc}); start it, or set the test's address variable"
        if os.environ.get("PIGEON_REQUIRE_DATABASES"):
            pytest.fail(hint)
        pytest.skip(hint)
    conn.close()  # type: ignore[attr-defined]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A new PostgreSQL database (its address); dropped afterwards."""
    import psycopg

    _require("PostgreSQL", lambda: psycopg.connect(PG + "/postgres", connect_timeout=5))
    name = "pigeon_rfm_" + secrets.token_hex(4)
    with psycopg.connect(PG + "/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with psycopg.connect(PG + "/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _mariadb_connect(database: str | None = None) -> object:
    import pymysql

    from engine.outcomes.sql import _mariadb_params

    params = _mariadb_params(MARIADB + "/" + (database or ""))
    return pymysql.connect(**params, connect_timeout=5, autocommit=True)


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """A new MariaDB database (its address); dropped afterwards."""
    _require("MariaDB", _mariadb_connect)
    name = "pigeon_rfm_" + secrets.token_hex(4)
    admin = _mariadb_connect()
    admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # type: ignore[attr-defined]
    admin.close()  # type: ignore[attr-defined]
    try:
        yield f"{MARIADB}/{name}"
    finally:
        admin = _mariadb_connect()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]


def _db_rows(shop: Shop) -> list[tuple[object, ...]]:
    """The shop as typed columns: a bad time or amount is NULL (a typed column cannot hold "n/a")."""
    return [
        (
            o.order_id,
            o.phone,
            o.paid_at,
            None if o.reason == "bad_amount" else o.amount,
            "交易成功" if o.paid else "交易关闭",
        )
        for o in shop.orders
    ]


def load_postgres(shop: Shop, address: str) -> None:
    import psycopg

    with psycopg.connect(address) as conn:
        conn.execute(
            "CREATE TABLE orders (order_id bigint PRIMARY KEY, mobile text, paid_at timestamp, "
            "amount numeric(12,2), status text)"
        )
        with conn.cursor() as cur, cur.copy("COPY orders FROM STDIN") as copy:
            for row in _db_rows(shop):
                copy.write_row(row)


def load_mariadb(shop: Shop, address: str) -> None:
    conn = _mariadb_connect(address.rsplit("/", 1)[1])
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute(
        "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, phone VARCHAR(40), paid_at DATETIME NULL, "
        "amount DECIMAL(12,2) NULL, status VARCHAR(20)) ENGINE=InnoDB"
    )
    rows = _db_rows(shop)
    for i in range(0, len(rows), 2000):
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s, %s)", rows[i : i + 2000])
    conn.close()  # type: ignore[attr-defined]


# ---- running the command and reading what it wrote ---------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["segment", "rfm", *argv, "--json", "-q"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out else {})


def read_segments(out: Path) -> dict[str, dict[str, str]]:
    """Every segment row by phone, from every group file the summary lists (each customer once)."""
    summary = json.loads((out / "rfm.json").read_text("utf-8"))
    rows: dict[str, dict[str, str]] = {}
    for g in summary["groups"]:
        for f in g["files"]:
            with (out / f["file"]).open(newline="", encoding="utf-8-sig") as fh:
                got = list(csv.DictReader(fh))
            assert len(got) == f["customers"]
            for r in got:
                assert r["group"] == f["group"]
                assert r["phone"] not in rows, "a customer in two files"
                rows[r["phone"]] = r
    return rows


def check_against_reference(
    shop: Shop, out: Path, summary: dict[str, object], *, max_size: int, row_offset: int | None
) -> None:
    expected = reference(shop)
    got = read_segments(out)
    assert set(got) == set(expected)
    fields = list(next(iter(expected.values())))
    mismatched = [p for p, e in expected.items() if {k: got[p][k] for k in fields} != e]
    assert mismatched == [], (
        mismatched[:3],
        [expected[p] for p in mismatched[:3]],
        [got[p] for p in mismatched[:3]],
    )
    # groups: every class a file or more, none over max_size, split into the fewest alike parts
    sizes = Counter(e["rfm_class"] for e in expected.values())
    groups = {g["name"]: g for g in summary["groups"]}  # type: ignore[attr-defined]
    assert {n: g["customers"] for n, g in groups.items()} == dict(sizes)
    for name, g in groups.items():
        parts = [f["customers"] for f in g["files"]]
        assert len(parts) == -(-sizes[name] // max_size)
        assert max(parts) <= max_size and max(parts) - min(parts) <= 1
    assert summary["classes"] == {**dict.fromkeys(CLASS_OF.values(), 0), "potential": 0, **sizes}
    # every bad row rejected with its reason (and its row number, when the source has a fixed order)
    bad = [(o.order_id, o.reason) for o in shop.orders if o.reason is not None]
    with (out / "rejects.csv").open(newline="", encoding="utf-8") as fh:
        rejects = [(int(r["row"]), r["reason"]) for r in csv.DictReader(fh)]
    if row_offset is None:
        assert Counter(r for _, r in rejects) == Counter(r for _, r in bad)
    else:
        assert rejects == [(oid + row_offset, reason) for oid, reason in bad]
    assert summary["rejected"] == len(bad)
    assert summary["orders"] == sum(1 for o in shop.orders if o.reason is None and o.paid)
    assert summary["unpaid"] == sum(1 for o in shop.orders if o.reason is None and not o.paid)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return make_shop(3100, seed=19)


def test_csv_export(shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orders = write_csv(shop, tmp_path / "orders.csv")
    code, summary = run(
        capsys,
        str(orders),
        "--status-column",
        "status",
        "--paid",
        "交易成功",
        "--out",
        str(tmp_path / "rfm"),
        "--max-size",
        "400",
    )
    assert code == 0
    check_against_reference(shop, tmp_path / "rfm", summary, max_size=400, row_offset=1)  # header is row 1


def test_gbk_excel_export_with_chinese_headers(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = write_csv(shop, tmp_path / "订单导出.csv", encoding="gbk", header=HEADER_ZH)
    code, summary = run(
        capsys,
        str(orders),
        "--encoding",
        "gbk",
        "--phone-column",
        "收货人手机号",
        "--time-column",
        "订单付款时间",
        "--amount-column",
        "买家实际支付金额",
        "--status-column",
        "订单状态",
        "--paid",
        "交易成功",
        "--out",
        str(tmp_path / "rfm"),
        "--max-size",
        "1000",
    )
    assert code == 0
    check_against_reference(shop, tmp_path / "rfm", summary, max_size=1000, row_offset=1)


def test_jsonl_export(shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orders = write_jsonl(shop, tmp_path / "orders.jsonl.gz")
    code, summary = run(
        capsys,
        str(orders),
        "--status-column",
        "status",
        "--paid",
        "交易成功",
        "--out",
        str(tmp_path / "rfm"),
        "--max-size",
        "30000",
    )
    assert code == 0
    check_against_reference(shop, tmp_path / "rfm", summary, max_size=30000, row_offset=0)  # line numbers


def test_postgresql_through_a_server_side_cursor(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_database: str
) -> None:
    load_postgres(shop, pg_database)
    code, summary = run(
        capsys,
        pg_database,
        "--query",
        "SELECT mobile, paid_at, amount, status FROM orders ORDER BY order_id",
        "--phone-column",
        "mobile",
        "--status-column",
        "status",
        "--paid",
        "交易成功",
        "--out",
        str(tmp_path / "rfm"),
        "--max-size",
        "500",
    )
    assert code == 0
    check_against_reference(shop, tmp_path / "rfm", summary, max_size=500, row_offset=0)
    # --table reads the same (in the table's order: reasons compared, not row numbers)
    code, summary = run(
        capsys,
        pg_database,
        "--table",
        "public.orders",
        "--phone-column",
        "mobile",
        "--status-column",
        "status",
        "--paid",
        "交易成功",
        "--out",
        str(tmp_path / "rfm2"),
        "--max-size",
        "500",
    )
    assert code == 0
    check_against_reference(shop, tmp_path / "rfm2", summary, max_size=500, row_offset=None)


def test_mariadb_through_an_unbuffered_cursor(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str], mariadb_database: str
) -> None:
    load_mariadb(shop, mariadb_database)
    code, summary = run(
        capsys,
        mariadb_database,
        "--table",
        "orders",
        "--status-column",
        "status",
        "--paid",
        "交易成功",
        "--out",
        str(tmp_path / "rfm"),
        "--max-size",
        "500",
    )
    assert code == 0
    check_against_reference(shop, tmp_path / "rfm", summary, max_size=500, row_offset=None)


def test_postgresql_times_with_zones_are_read_in_the_shop_s_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_database: str
) -> None:
    import psycopg

    with psycopg.connect(pg_database) as conn:
        conn.execute("CREATE TABLE o (phone text, paid_at timestamptz, amount numeric)")
        # 16:30 UTC is 00:30 the next day in Shanghai: two orders on two different shop days
        conn.execute(
            "INSERT INTO o VALUES ('13800138000', '2025-11-10 16:30:00+00', 10), "
            "('13800138000', '2025-11-09 12:00:00+00', 5), ('13900139000', '2025-11-11 00:00:00+08', 1)"
        )
    code, summary = run(
        capsys, pg_database, "--table", "o", "--time-column", "paid_at", "--out", str(tmp_path / "r")
    )
    assert code == 0 and summary["as_of"] == "2025-11-11"
    rows = read_segments(tmp_path / "r")
    assert (
        rows["13800138000"]["last_order"] == "2025-11-11"
        and rows["13800138000"]["first_order"] == "2025-11-09"
    )
    assert rows["13800138000"]["recency_days"] == "0" and rows["13800138000"]["spent"] == "15.00"


def test_database_errors_say_what_is_wrong_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_database: str
) -> None:
    secret_address = pg_database.replace("postgres@", "postgres:s3cret@")
    code = main(["segment", "rfm", secret_address, "--table", "no_such_table", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_table" in err and "s3cret" not in err and "***" in err
    import psycopg

    with psycopg.connect(pg_database) as conn:
        conn.execute("CREATE TABLE o (tel text, paid_at timestamp, amount numeric)")
    code = main(["segment", "rfm", pg_database, "--table", "o", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no column 'phone'" in err and "tel" in err


def test_the_files_are_segments_pigeon_send_takes(
    shop: Shop,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    orders = write_csv(shop, tmp_path / "orders.csv")
    code, summary = run(capsys, str(orders), "--out", str(tmp_path / "rfm"), "--max-size", "30000")
    assert code == 0
    campaign = campaign_file(
        "rfm/important_value.csv",
        text="{rfm_class_zh}您好，您已在本店下单{orders}次、共{spent}元，送您回馈券",
    )
    done = subprocess.run(
        [sys.executable, "-m", "engine", "preview", str(campaign), "--json", "-n", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    preview = json.loads(done.stdout)
    group = next(g for g in summary["groups"] if g["name"] == "important_value")  # type: ignore[union-attr]
    assert preview["rows"] == group["customers"] and preview["states"].get("rejected", 0) == 0
    with (tmp_path / "rfm" / "important_value.csv").open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert len(preview["samples"]) == 3
    for sample in preview["samples"]:
        row = rows[sample["row"] - 2]  # the header is row 1
        assert f"重要价值客户您好，您已在本店下单{row['orders']}次、共{row['spent']}元" in sample["text"]


def test_a_tab_separated_export_needs_no_delimiter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = tmp_path / "orders.tsv"
    orders.write_text("phone\tpaid_at\tamount\n13800138000\t2025-11-11 10:00\t1,299.00\n", "utf-8")
    code, summary = run(capsys, str(orders), "--out", str(tmp_path / "rfm"))
    assert code == 0 and summary["revenue"] == 1299.0 and summary["rejected"] == 0


def test_a_rebuild_replaces_its_own_files_and_refuses_other_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text(
        "phone,paid_at,amount\n"
        + "".join(f"1380013{i:04d},2025-11-{1 + i % 28:02d} 10:00:00,{i}\n" for i in range(300)),
        "utf-8",
    )
    out = tmp_path / "rfm"
    assert run(capsys, str(orders), "--out", str(out), "--max-size", "20")[0] == 0
    many = {p.name for p in out.iterdir()}
    assert run(capsys, str(orders), "--out", str(out), "--max-size", "0")[0] == 0
    few = {p.name for p in out.iterdir()}
    assert len(few) < len(many) and all("-" not in n for n in few if n.endswith(".csv"))
    # a rebuild that cannot read its export leaves the last build as it was
    assert main(["segment", "rfm", str(orders), "--out", str(out), "--phone-column", "mobile"]) == 2
    assert "no column 'mobile'" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == few
    # a build that finds no order leaves its rejects; the next build into that directory goes ahead
    failed = tmp_path / "failed"
    assert main(["segment", "rfm", str(orders), "--out", str(failed), "--as-of", "2020-01-01"]) == 2
    assert "--as-of" in capsys.readouterr().err and {p.name for p in failed.iterdir()} == {"rejects.csv"}
    assert run(capsys, str(orders), "--out", str(failed))[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine", "utf-8")
    assert main(["segment", "rfm", str(orders), "--out", str(other)]) == 2
    assert "not empty" in capsys.readouterr().err and (other / "keep.txt").exists()


@pytest.mark.slow
def test_a_million_customers_and_five_million_orders_match_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's scale: config/make_orders.py's shop of 1M customers and about 5M orders (written
    forms, bad and closed rows), classed by the builder, and by plain Python from the generator's
    own per-customer totals (not from the file); every customer's class, scores, recency, orders
    and spend agree."""
    orders, truth = tmp_path / "orders.csv", tmp_path / "customers.csv"
    made = subprocess.run(
        [
            sys.executable,
            str(ROOT / "config" / "make_orders.py"),
            "--customers",
            "1000000",
            "--orders",
            "5000000",
            "-o",
            str(orders),
            "--customer-truth",
            str(truth),
            "--seed",
            "19",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    code, summary = run(
        capsys, str(orders), "--status-column", "status", "--paid", "交易成功", "--out", str(tmp_path / "rfm")
    )
    assert code == 0
    orders.unlink()  # 300 MB: not needed any more

    with truth.open(encoding="utf-8") as fh:
        rows = [
            (p, int(o), int(c), int(last) if last else None, int(seen))
            for p, o, c, last, seen in list(csv.reader(fh))[1:]
        ]
    as_of = max(last if last is not None else seen for _, _, _, last, seen in rows)
    buyers = [(p, o, c, as_of - last) for p, o, c, last, _ in rows if o and last is not None]

    def cuts(values: list[int]) -> list[int]:
        s = sorted(values)
        return [s[(k * (len(s) - 1)) // 5] for k in range(1, 5)]

    rc, fc, mc = cuts([b[3] for b in buyers]), cuts([b[1] for b in buyers]), cuts([b[2] for b in buyers])
    scored = {
        p: (5 - sum(q < d for q in rc), 1 + sum(q < o for q in fc), 1 + sum(q < c for q in mc))
        for p, o, c, d in buyers
    }
    means = [sum(s[i] for s in scored.values()) / len(scored) for i in range(3)]
    expected = {}
    for p, o, c, last, seen in rows:
        if p in scored:
            r, f, m = scored[p]
            klass = CLASS_OF[(r > means[0], f > means[1], m > means[2])]
        else:
            r = f = m = 0
            klass = "potential"
        days = as_of - (last if last is not None else seen)
        expected[p] = (klass, f"{r}{f}{m}", str(days), str(o), f"{c // 100}.{c % 100:02d}")
    got = {
        p: (r["rfm_class"], r["rfm"], r["recency_days"], r["orders"], r["spent"])
        for p, r in read_segments(tmp_path / "rfm").items()
    }
    assert len(got) == len(expected) == summary["customers"] > 990_000
    wrong = [p for p, e in expected.items() if got.get(p) != e]
    assert wrong == [], (len(wrong), [(expected[p], got.get(p)) for p in wrong[:3]])
    assert summary["classes"] == dict(Counter(e[0] for e in expected.values())) | {
        k: 0 for k in [*CLASS_OF.values(), "potential"] if k not in {e[0] for e in expected.values()}
    }
