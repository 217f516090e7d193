"""A/B splits: shares held on 1M recipients, each number's variant stable whatever the batch, and
campaign files whose variants are wrong refused with what to change."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.core.config import load_campaign
from engine.core.errors import ConfigError
from engine.core.template import compile_template
from engine.core.variants import Split


def numbers(n: int, seed: int = 1) -> list[int]:
    """``n`` distinct Chinese mobile numbers as number keys, in a random order."""
    rng = random.Random(seed)
    return rng.sample(range(13000000000, 19999999999), n)


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.7, 0.3), (0.5, 0.3, 0.2), (0.9, 0.05, 0.05)])
def test_shares_hold_within_one_percent_on_a_million_recipients(shares: tuple[float, ...]) -> None:
    split = Split("double11", [f"v{i}" for i in range(len(shares))], shares)
    keys = numbers(1_000_000)
    got = np.bincount(split.indices(keys), minlength=len(shares)) / len(keys)
    assert np.all(np.abs(got - np.array(shares)) < 0.01 * np.array(shares)), got


def test_consecutive_numbers_split_as_evenly_as_random_ones() -> None:
    """Segments are often runs of adjacent numbers: the hash must not map them to one variant."""
    split = Split("c", ["a", "b"], [0.5, 0.5])
    got = np.bincount(split.indices(range(13800000000, 13801000000)), minlength=2) / 1_000_000
    assert abs(got[0] - 0.5) < 0.005


def test_a_numbers_variant_depends_on_nothing_but_campaign_and_number() -> None:
    split = Split("double11", ["a", "b", "c"], [0.5, 0.3, 0.2])
    keys = numbers(50_000)
    whole = dict(zip(keys, split.assign(keys), strict=True))
    # in another order, in batches of other sizes, and by a new Split of the same campaign
    again = Split("double11", ["a", "b", "c"], [0.5, 0.3, 0.2])
    shuffled = keys[::-1]
    for start in range(0, len(shuffled), 7_919):
        part = shuffled[start : start + 7_919]
        assert dict(zip(part, again.assign(part), strict=True)) == {k: whole[k] for k in part}
    # another campaign splits the same customers afresh: agreement as chance would have it
    other = Split("double12", ["a", "b", "c"], [0.5, 0.3, 0.2]).assign(keys)
    same = sum(o == whole[k] for k, o in zip(keys, other, strict=True)) / len(keys)
    assert abs(same - (0.5**2 + 0.3**2 + 0.2**2)) < 0.01


def test_bench_assign(benchmark: BenchmarkFixture) -> None:
    """Variant names for a 5,000-row batch (the render that follows costs about as much again)."""
    split = Split("double11", ["a", "b"], [0.5, 0.5])
    keys = numbers(5_000)
    out = benchmark(split.assign, keys)
    assert Counter(out).keys() == {"a", "b"}


def test_bench_render_baseline(benchmark: BenchmarkFixture) -> None:
    """The baseline beside ``test_bench_assign``: rendering the same 5,000 rows from one template."""
    bound = compile_template("{name}，您的{coupon}元券已到账", signature="小鹅优选").bind(
        ["phone", "name", "coupon"]
    )
    rows = [(str(k), "张三", "20") for k in numbers(5_000)]
    out = benchmark(bound.render_rows, rows)
    assert len(out) == 5_000


CAMPAIGN = """id = "ab"
[segment]
source = "csv"
path = "seg.csv"
[template]
signature = "小鹅优选"
{template}
"""


def variant(name: str, share: float, text: str = "双11券已到账") -> str:
    return f'[[template.variants]]\nname = "{name}"\nshare = {share}\ntext = "{text}"\n'


@pytest.mark.parametrize(
    ("template", "key", "says"),
    [
        (variant("a", 0.5) + variant("b", 0.4), "template.variants", "add up to 0.9 (0.5 + 0.4)"),
        (variant("a", 0.5) + variant("a", 0.5), "template.variants", "a repeated"),
        (variant("a", 1.0), "template.variants", "needs two variants"),
        ('text = "x"\n' + variant("a", 0.5) + variant("b", 0.5), "template.text", "either template.text"),
        (variant("a", 0.5) + variant("b", 0.5, " "), "template.variants[1].text", "has no text"),
        (variant("a", 0.5) + variant("b", 0.0), "template.variants[1].share", ""),
    ],
)
def test_a_campaign_with_wrong_variants_is_refused_with_what_to_change(
    tmp_path: Path, template: str, key: str, says: str
) -> None:
    path = tmp_path / "ab.toml"
    path.write_text(CAMPAIGN.format(template=template), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    assert key in str(err.value) and says in str(err.value)


def test_a_ledger_file_from_before_ab_tests_gets_the_column_when_opened(tmp_path: Path) -> None:
    import sqlite3

    from engine.state.ledger.encoding import _SCHEMA
    from engine.state.ledger.store import Ledger

    old = _SCHEMA.replace(
        "    sends_last INTEGER NOT NULL DEFAULT 0,", "    sends_last INTEGER NOT NULL DEFAULT 0"
    )
    old = "\n".join(
        line for line in old.splitlines() if "variants" not in line and "per row], or NULL" not in line
    )
    path = tmp_path / "pigeon.db"
    db = sqlite3.connect(path)
    db.executescript(old)
    assert "variants" not in {r[1] for r in db.execute("PRAGMA table_info(ledger_records)")}
    db.close()
    for _ in range(2):  # (a second open finds it there)
        ledger = Ledger(path)
        cols = [r[1] for r in ledger.db.execute("PRAGMA table_info(ledger_records)")]
        ledger.close()
        assert cols[-1] == "variants" and cols.count("variants") == 1
