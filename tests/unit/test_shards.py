"""Sharding's pure parts: every row in exactly one shard, budgets split exactly, counts that add up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from engine.core.config import load_engine
from engine.core.errors import ConfigError
from engine.core.messages import MessageBatch, Outcome, SubmitResult
from engine.observability.report import RunRecorder
from engine.pipeline.runner import Batch
from engine.pipeline.stages import Normalize
from engine.run.shards import check_shards, shard_config

PHONES = st.one_of(
    st.integers(13_000_000_000, 19_999_999_999).map(str),  # clean
    st.integers(13_000_000_000, 19_999_999_999).map(lambda n: f"+86 {str(n)[:3]}-{str(n)[3:7]}-{str(n)[7:]}"),
    st.sampled_from(["12345", "", "abc", "+44 20 7946 0958", "+1 202-555-0143", "13800138000.0"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(PHONES, max_size=60), st.integers(2, 5))
def test_every_row_ends_in_exactly_one_shard(phones: list[str], count: int) -> None:
    nums = list(range(2, len(phones) + 2))
    whole = Batch(list(nums), [(p,) for p in phones], 0)
    Normalize().process(whole)
    kept: list[int] = []
    rejected: list[int] = []
    owner: dict[str, int] = {}
    for index in range(count):
        b = Batch(list(nums), [(p,) for p in phones], 0)
        Normalize((index, count)).process(b)
        assert len(b.nums) == len(b.numbers) == len(b.rows)
        kept += b.nums
        rejected += [r.row for r in b.rejects]
        for n in b.numbers:
            assert owner.setdefault(n, index) == index  # a number belongs to one shard only
        assert [whole.numbers[whole.nums.index(r)] for r in b.nums] == b.numbers  # normalized alike
    assert sorted(kept) == whole.nums  # each valid row once, in one shard
    assert sorted(rejected) == [r.row for r in whole.rejects]  # each bad row once
    assert set(kept).isdisjoint(rejected)


def test_a_shard_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="shard 3 of 3"):
        Normalize((3, 3))


ENGINE = """
[carriers.cm]
rate_per_second = 1001
[gateways.a]
plugin = "blackhole"
in_flight = 5
rate_per_second = 7
[gateways.b]
plugin = "blackhole"
"""


def test_rates_and_windows_split_exactly(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "engine.toml"  # type: ignore[operator]
    path.write_text(ENGINE, encoding="utf-8")
    cfg = load_engine(path).config
    parts = [shard_config(cfg, k, 3) for k in range(3)]
    assert [p.carriers["cm"].rate_per_second for p in parts] == [334, 334, 333]
    assert [p.gateways["a"].rate_per_second for p in parts] == [3, 2, 2]
    assert [p.gateways["a"].in_flight for p in parts] == [2, 2, 1]
    assert [p.gateways["b"].rate_per_second for p in parts] == [None] * 3  # unlimited stays so
    assert all(p.gateways["b"].in_flight >= 1 for p in parts)
    check_shards(cfg, str(path), 7)
    for bad in (0, -1, 65):
        with pytest.raises(ConfigError, match=r"not a number of shards: use 1 to 64"):
            check_shards(cfg, str(path), bad)
    with pytest.raises(ConfigError, match=r"gateways\.a\.rate_per_second.*at most 7 shards"):
        check_shards(cfg, str(path), 8)


def test_shard_counts_add_up_to_one_recorders() -> None:
    def feed(rec: RunRecorder, batches: list[MessageBatch]) -> None:
        for b in batches:  # what happens to a request depends on the request only
            first = b.rows[0]
            if first % 3 == 2:
                rec.failed("gw", b, "http_503")
            else:
                answers = [SubmitResult(Outcome.ACCEPTED, "p")] * (len(b) - 1)
                rec.results("gw", b, [*answers, SubmitResult(Outcome.REJECTED, code="bad")])
            rec.observe("gw", 0.001 * (first + 1), retry=first % 2 == 0)

    batches = [
        MessageBatch(c, rows=[i, i + 1], numbers=["13800138000"] * 2, texts=["t"] * 2, parts=[1, 2])
        for i, c in enumerate(["cm", "cu", "cm", "ct", "cm", "cu"])
    ]
    prices = {"cm": 0.05, "cu": 0.04}
    one = RunRecorder(prices)
    feed(one, batches)
    left, right = RunRecorder(prices), RunRecorder(prices)
    feed(left, batches[::2])
    feed(right, batches[1::2])
    total = RunRecorder(prices)
    total.add(left.state())
    total.add(right.state())
    kw = {"campaign": "c", "name": "", "kind": "marketing", "mode": "send", "currency": "CNY", "elapsed": 1.0}
    a, b = one.summary(**kw), total.summary(**kw)  # type: ignore[arg-type]
    assert a.states == b.states and a.reasons == b.reasons
    assert a.carriers == b.carriers and a.total_cost == b.total_cost
    assert a.gateways == b.gateways  # requests, retries and latency percentiles too
