"""Carrier routing: every range of the shipped prefix table, checked against the reference's table."""

from __future__ import annotations

import random
from pathlib import Path

import phonenumbers
import pytest
from phonenumbers import carrier as pn_carrier

from engine.core.carriers import default_prefix_table, load_prefix_table
from engine.core.errors import ConfigError
from engine.core.messages import RejectReason

# Typed in from reference/protocols-carriers-compliance.md §1.1, independently of the data file.
EXPECTED: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        [
            "135",
            "136",
            "137",
            "138",
            "139",
            "150",
            "151",
            "152",
            "157",
            "158",
            "159",
            "172",
            "178",
            "182",
            "183",
            "184",
            "187",
            "188",
            "195",
            "197",
            "198",
        ],
        ("cm", "mobile"),
    ),
    **{f"134{d}": ("cm", "mobile") for d in range(9)},
    "147": ("cm", "data"),
    **dict.fromkeys(
        ["130", "131", "132", "155", "156", "166", "175", "176", "185", "186", "196"], ("cu", "mobile")
    ),
    "145": ("cu", "data"),
    **dict.fromkeys(
        ["133", "153", "173", "177", "180", "181", "189", "190", "191", "193", "199"], ("ct", "mobile")
    ),
    "149": ("ct", "data"),
    "192": ("cbn", "mobile"),
    "1610": ("cbn", "mobile"),
    **dict.fromkeys(["162", "1700", "1701", "1702"], ("ct", "vno")),
    **dict.fromkeys(["165", "1703", "1705", "1706"], ("cm", "vno")),
    **dict.fromkeys(["167", "1704", "1707", "1708", "1709", "171"], ("cu", "vno")),
}
SATELLITE = ["1349", "17400", "17401", "17402", "17403", "17404", "17405"]
SPECIAL = ["17406", "17407", "17408", "17409", "17410", "17411", "17412", "1749"]
UNALLOCATED = [
    "100",
    "110",
    "120",
    "140",
    "141",
    "142",
    "143",
    "144",
    "146",
    "148",
    "154",
    "160",
    "1611",
    "1619",
    "163",
    "164",
    "168",
    "169",
    "174130",
    "1742",
    "1748",
    "179",
    "194",
]


def _number(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choice("0123456789") for _ in range(11 - len(prefix)))


@pytest.mark.parametrize(("prefix", "expected"), sorted(EXPECTED.items()))
def test_every_sendable_range_routes_to_its_carrier(prefix: str, expected: tuple[str, str]) -> None:
    table = default_prefix_table()
    rng = random.Random(prefix)
    for _ in range(20):
        n = _number(prefix, rng)
        assert table.route.get(n[:5]) == expected[0], n
        info = table.lookup(n)
        assert info is not None
        assert (info.carrier, info.kind) == expected
        assert (n[:5] in table.vno) == (expected[1] == "vno")


@pytest.mark.parametrize(
    ("prefixes", "reason"),
    [
        (SATELLITE, RejectReason.SATELLITE_NUMBER),
        (SPECIAL, RejectReason.SPECIAL_NUMBER),
        (UNALLOCATED, RejectReason.UNALLOCATED_PREFIX),
    ],
)
def test_unsendable_ranges_are_rejected_with_their_reason(prefixes: list[str], reason: RejectReason) -> None:
    table = default_prefix_table()
    for prefix in prefixes:
        n = _number(prefix[:5], random.Random(prefix))
        assert n[:5] not in table.route, n
        got, detail = table.reject_reason(n)
        assert got == reason, (n, got)
        assert detail


def test_the_table_covers_exactly_the_expected_sendable_prefixes() -> None:
    table = default_prefix_table()
    expected_keys = {
        f"{n}"
        for n in range(10000, 20000)
        if any(str(n).startswith(p) for p in EXPECTED)
        and not any(str(n).startswith(p[:5]) for p in SATELLITE + SPECIAL)
    }
    assert set(table.route) == expected_keys


def test_mobile_ranges_agree_with_phonenumbers_where_it_knows_the_carrier() -> None:
    """Cross-check with libphonenumber's carrier data (it lacks 162/165/1349 and rejects 149)."""
    names = {"China Mobile": "cm", "China Unicom": "cu", "China Telecom": "ct", "China Broadnet": "cbn"}
    rng = random.Random(7)
    checked = 0
    for prefix, (carrier, kind) in EXPECTED.items():
        if kind == "vno":
            continue  # libphonenumber names the VNO brand or nothing; we route to the host
        n = _number(prefix, rng)
        num = phonenumbers.parse(n, "CN")
        if not phonenumbers.is_valid_number(num):
            continue
        name = pn_carrier.name_for_number(num, "en")
        if name in names:
            assert names[name] == carrier, (n, name)
            checked += 1
    assert checked >= 40


def test_table_has_a_version_and_source_per_row() -> None:
    table = default_prefix_table()
    assert table.version and table.updated
    info = table.lookup("13800138000")
    assert info is not None and "README" in info.source


def test_broken_table_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "t.toml"
    bad.write_text(
        'version = "x"\nupdated = "y"\n[[ranges]]\nkind = "mobile"\nprefixes = ["138"]\nsource = "s"\n'
    )
    with pytest.raises(ConfigError, match="needs a carrier"):
        load_prefix_table(bad)
    bad.write_text(
        'version = "x"\nupdated = "y"\n[[ranges]]\ncarrier = "cm"\nkind = "mobile"\n'
        'prefixes = ["138", "138"]\nsource = "s"\n'
    )
    with pytest.raises(ConfigError, match="listed twice"):
        load_prefix_table(bad)
    bad.write_text(
        'version = "x"\nupdated = "y"\n[[ranges]]\ncarrier = "cm"\nkind = "mobile"\n'
        'prefixes = ["38"]\nsource = "s"\n'
    )
    with pytest.raises(ConfigError, match="3-5 digits"):
        load_prefix_table(bad)
