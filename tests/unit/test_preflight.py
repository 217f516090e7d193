"""Preflight: signature, opt-out text and absolute terms are checked before anything is sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.core.errors import PreflightError
from engine.core.preflight import DEFAULT_ALLOWED_TERMS, check_campaign, errors
from engine.core.template import compile_template
from engine.run.plan import prepare


def findings(
    body: str,
    *,
    signature: str = "小鹅优选",
    opt_out: str = "拒收请回复R",
    kind: str = "marketing",
    allowed: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    t = compile_template(body, signature=signature, opt_out_text=opt_out)
    return [
        (f.key, f.message)
        for f in errors(check_campaign(t, kind=kind, allowed_terms=[*DEFAULT_ALLOWED_TERMS, *allowed]))
    ]


def test_a_clean_marketing_campaign_passes() -> None:
    assert findings("{name|亲}，您的20元券已到账") == []


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        ("鹅", "has 1 characters"),
        ("小鹅优选旗舰店官方直营店铺啊", "has 14 characters"),
        ("小鹅 优选", "no spaces or symbols"),
        ("小鹅-优选", "no spaces or symbols"),
    ],
)
def test_signature_rules(signature: str, problem: str) -> None:
    got = findings("hi", signature=signature)
    assert got and got[0][0] == "template.signature" and problem in got[0][1]


def test_marketing_needs_an_opt_out_but_transactional_does_not() -> None:
    assert findings("双11大促", opt_out="")[0][0] == "template.opt_out_text"
    assert findings("双11大促，回T退订", opt_out="") == []
    assert findings("您的订单已发货", opt_out="", kind="transactional") == []


def test_absolute_terms_are_refused_unless_allowed() -> None:
    got = findings("全网最低价，国家级品质")
    assert got[0][0] == "template.text"
    assert "最低" in got[0][1] and "国家级" in got[0][1]
    assert findings("本品最佳赏味期为7天") == []  # a built-in carve-out
    assert findings("第一品牌上新", allowed=("第一品牌",)) == []
    assert findings("{product}") == []  # values are data, not the merchant's claims in the template


def test_send_refuses_and_preview_shows_all_findings(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", "phone,name,coupon\n13800138000,张伟,20\n")
    campaign = campaign_file("seg.csv", text="全国最低价 {name} {coupon}", signature="鹅")
    with pytest.raises(PreflightError) as exc:
        prepare(campaign)
    msg = str(exc.value)
    assert "nothing was sent" in msg and "template.signature" in msg and "最低" in msg
    plan = prepare(campaign, strict=False)
    assert {f.key for f in plan.findings} == {"template.signature", "template.text"}


def test_a_fixed_text_over_the_maximum_is_one_finding_among_all_the_others(
    write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", "phone,name,coupon\n13800138000,张伟,20\n")
    campaign = campaign_file("seg.csv", text="全国最低价" + "券" * 520 + " {name}", signature="鹅")
    with pytest.raises(PreflightError) as exc:
        prepare(campaign)
    msg = str(exc.value)
    assert "breaks 3 rule(s)" in msg
    assert "template.signature" in msg and "最低" in msg
    assert "the fixed text alone is 535 characters" in msg and "over the maximum of 500" in msg
    plan = prepare(campaign, strict=False)  # pigeon preview shows them all as well
    assert [f.key for f in errors(plan.findings)] == ["template.text", "template.signature", "template.text"]


def test_the_length_finding_names_the_fixed_text_and_the_maximum() -> None:
    t = compile_template("券" * 95, signature="小鹅优选", opt_out_text="拒收请回复R", max_length=100)
    got = [(f.key, f.message) for f in errors(check_campaign(t, kind="marketing"))]
    assert got == [
        (
            "template.text",
            "the fixed text alone is 107 characters (signature and opt-out text included), over the "
            "maximum of 100: shorten the template or raise template.max_length",
        )
    ]
    assert (
        check_campaign(
            compile_template("券" * 80, signature="小鹅优选", max_length=100), kind="transactional"
        )
        == []
    )


def test_the_service_still_refuses_a_template_whose_fixed_text_is_too_long(tmp_path: Path) -> None:
    from engine.core.config import load_engine
    from engine.core.errors import ConfigError
    from engine.service.core import Service

    engine = tmp_path / "engine.toml"
    engine.write_text(
        '[gateways.sink]\nplugin = "blackhole"\n[service]\nsignature = "小鹅优选"\n'
        f'[service.templates.long]\ntext = "{"券" * 60}"\nmax_length = 60\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as exc:
        Service(load_engine(engine))
    assert "service.templates.long.text" in str(exc.value) and "over the maximum of 60" in str(exc.value)
