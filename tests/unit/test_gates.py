"""The gate pieces: the spend meter's refusal at the cap, the content hash, seed checks and the gate records."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from engine.core.config import CampaignConfig, load_campaign
from engine.core.errors import ConfigError
from engine.core.messages import MessageBatch
from engine.run.spend import SpendCapReached, SpendMeter
from engine.state.gates import Approval, GateClosed, Gates, TestRecord, content_hash

BASE = 'id = "c"\n[segment]\nsource = "csv"\npath = "s.csv"\n[template]\nsignature = "小鹅优选"\ntext = "hi {name}"\n'


def _batch(n: int, parts: int = 1, carrier: str = "cm") -> MessageBatch:
    return MessageBatch(
        carrier, rows=list(range(n)), numbers=["13800138000"] * n, texts=["x"] * n, parts=[parts] * n
    )


def test_the_meter_refuses_the_request_that_would_cross_the_cap_and_counts_nothing_for_it() -> None:
    meter = SpendMeter(1.0, {"cm": 0.05, "cu": 0.0}, spent=0.5, currency="CNY")
    meter.charge(_batch(5), "c")  # 0.25
    meter.charge(_batch(1000, carrier="cu"), "c")  # free carrier: never refused
    with pytest.raises(SpendCapReached, match=r"0\.75 CNY handed over of policy.spend_cap = 1\.00") as exc:
        meter.charge(_batch(3, parts=2), "c")  # 0.30 > 0.25 left
    assert exc.value.reason == "spend_cap" and meter.used == pytest.approx(0.25)
    meter.charge(_batch(5), "c")  # exactly what is left
    assert meter.used == pytest.approx(0.5)


def test_a_shard_gets_its_share_of_what_is_left() -> None:
    assert SpendMeter(10.0, {"cm": 1.0}, spent=4.0, share=0.25).limit == pytest.approx(1.5)


def _cfg(text: str) -> CampaignConfig:
    return msgspec.toml.decode(text.encode(), type=CampaignConfig)


def test_the_content_hash_follows_the_text_and_segment_not_the_seeds_or_caps() -> None:
    base = _cfg(BASE)
    assert content_hash(base) == content_hash(_cfg(BASE + '[review]\nseeds = ["13900139000"]\n'))
    assert content_hash(base) == content_hash(_cfg(BASE + "[policy]\nspend_cap = 5.0\n"))
    assert content_hash(base) != content_hash(_cfg(BASE.replace("hi {name}", "hello {name}")))
    assert content_hash(base) != content_hash(_cfg(BASE.replace("s.csv", "t.csv")))


@pytest.mark.parametrize(
    ("review", "key", "says"),
    [
        ('seeds = ["12345"]', "review.seeds[0]", "11 digits"),
        ('seeds = ["13900139000", "+86 139 0013 9000"]', "review.seeds[1]", "listed twice"),
        ("require_test = true", "review.seeds", "needs the seed numbers"),
    ],
)
def test_bad_seeds_fail_at_load_naming_the_key(tmp_path: Path, review: str, key: str, says: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE + "[review]\n" + review + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=says) as exc:
        load_campaign(path)
    assert key in str(exc.value) and "13900139000" not in str(exc.value)  # masked


def test_the_gates_open_only_for_the_content_tested_and_an_approval_is_used_up(tmp_path: Path) -> None:
    cfg = _cfg(BASE + '[review]\nseeds = ["13900139000"]\nrequire_approval = true\n')
    content = content_hash(cfg)
    with Gates(tmp_path / "p.db") as gates:
        with pytest.raises(GateClosed, match="no test send"):
            gates.check("c", cfg)
        failed = TestRecord(campaign="c", content=content, at=1.0, by="x", sent=2, accepted=1)
        gates.record_test(failed)
        with pytest.raises(GateClosed, match="accepted for 1 of 2"):
            gates.check("c", cfg)
        gates.record_test(TestRecord(campaign="c", content="other", at=2.0, by="x", sent=1, accepted=1))
        with pytest.raises(GateClosed, match="changed since its last test"):
            gates.check("c", cfg)
        gates.record_test(TestRecord(campaign="c", content=content, at=3.0, by="x", sent=1, accepted=1))
        with pytest.raises(GateClosed, match="requires approval"):
            gates.check("c", cfg)
        gates.approve(Approval(campaign="c", content=content, at=4.0, by="lead"))
        assert gates.check("c", cfg) is not None
        gates.bind("c", content, 100.0)  # a run started with it
        assert gates.approval("c", content, 100.0) is not None  # its resume
        assert gates.approval("c", content, None) is None  # a new run needs a new one
