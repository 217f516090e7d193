"""Filed provider templates: placeholders and their mapping checked up front, Pigeon's text derived from
them, per-row parameter rules in ``render``, and the parameters carried to the gateway."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.core.carriers import default_prefix_table
from engine.core.config import load_campaign
from engine.core.errors import ConfigError, TemplateError
from engine.core.messages import MessageBatch
from engine.core.provider_template import compile_provider_template, placeholders
from engine.core.template import compile_template
from engine.pipeline.runner import Batch, StageRunner
from engine.pipeline.stages import standard_stages

pytestmark = pytest.mark.usefixtures("kernels")


def _aliyun(**kw: object) -> object:
    args: dict[str, object] = {
        "provider": "aliyun",
        "code": "SMS_1",
        "text": "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R",
        "params": {"name": "name|顾客", "coupon": "coupon"},
    }
    args.update(kw)
    return compile_provider_template(**args)  # type: ignore[arg-type]


def test_aliyun_placeholders_become_pigeon_fields_in_order_of_first_use() -> None:
    pt = _aliyun()
    assert pt.names == ("name", "coupon")
    assert pt.fields == ("name", "coupon")
    assert pt.defaults == ("顾客", None)
    assert pt.body == "亲爱的{name|顾客}，您的{coupon}元券已到账，拒收请回复R"
    assert pt.limits == (35, 35)


def test_tencent_placeholders_are_taken_in_number_order_and_literal_braces_survive() -> None:
    pt = compile_provider_template(
        provider="tencent",
        code="1234567",
        text="{2}元券给{1}{{VIP}}，拒收请回复R",
        params={"1": "name", "2": "coupon"},
    )
    assert pt.names == ("1", "2")
    assert pt.fields == ("name", "coupon")
    # '{{VIP}}' is not a Tencent placeholder; its braces stay literal in Pigeon's syntax
    assert placeholders("a{1}b{{VIP}}", "tencent")[1] == ("1",)
    assert pt.body.startswith("{coupon}元券给{name}")
    assert pt.limits == (6, 6)


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"params": {"name": "name"}}, "${coupon} have no segment field"),
        ({"params": {"name": "n", "coupon": "c", "extra": "x"}}, "does not have: ${extra}"),
        ({"text": "您好${1abc}"}, "Aliyun names start with a letter"),
        ({"text": "${name}${coupon}元券"}, "follow each other"),
        ({"text": "【小鹅】${name}", "params": {"name": "n"}}, "【】"),
        ({"code": " "}, "code is empty"),
        ({"param_lengths": {"nope": 3}}, "unknown placeholder"),
        ({"params": {"name": "name|顾{客}", "coupon": "coupon"}}, "braces"),
        ({"params": {"name": "name|" + "长" * 40, "coupon": "coupon"}}, "over its 35-character limit"),
    ],
)
def test_a_template_that_cannot_be_sent_is_refused_with_what_to_change(
    kw: dict[str, object], says: str
) -> None:
    with pytest.raises(TemplateError, match=says.replace("$", r"\$").replace("{", r"\{").replace("}", r"\}")):
        _aliyun(**kw)


def test_tencent_placeholders_must_run_without_gaps() -> None:
    with pytest.raises(TemplateError, match="without gaps"):
        compile_provider_template(provider="tencent", code="1", text="a{1}b{3}", params={"1": "a", "3": "b"})


CAMPAIGN = """\
id = "c"
engine = "engine.toml"
[segment]
source = "csv"
path = "seg.csv"
[template]
signature = "小鹅优选"
{extra}
[template.provider]
provider = "aliyun"
code = "SMS_9"
text = "亲爱的${{name}}，您的${{coupon}}元券已到账，拒收请回复R"
params = {{ name = "name|顾客", coupon = "coupon" }}
"""


def test_a_campaign_with_a_provider_template_renders_the_filed_text_and_appends_nothing(
    write: Callable[[str, str | bytes], Path],
) -> None:
    path = write("c.toml", CAMPAIGN.format(extra=""))
    c = load_campaign(path)
    assert c.provider is not None and c.provider.code == "SMS_9"
    assert c.config.template.text == "亲爱的{name|顾客}，您的{coupon}元券已到账，拒收请回复R"
    assert c.config.opt_out_text == ""  # the filed text is sent as filed
    t = compile_template(c.config.template.text, signature="小鹅优选", opt_out_text=c.config.opt_out_text)
    assert (
        t.render_one({"name": "", "coupon": "20"}) == "【小鹅优选】亲爱的顾客，您的20元券已到账，拒收请回复R"
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [('text = "{name}"', "template.text"), ('opt_out_text = "回T退订"', "template.opt_out_text")],
)
def test_text_beside_a_provider_template_is_a_config_error(
    write: Callable[[str, str | bytes], Path], extra: str, key: str
) -> None:
    path = write("c.toml", CAMPAIGN.format(extra=extra))
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert info.value.path == key


def test_an_unmapped_placeholder_in_a_campaign_names_the_key(
    write: Callable[[str, str | bytes], Path],
) -> None:
    path = write("c.toml", CAMPAIGN.format(extra="").replace(', coupon = "coupon"', ""))
    with pytest.raises(ConfigError, match=r"template.provider: placeholder\(s\) \$\{coupon\}"):
        load_campaign(path)


def _run(pt: object, rows: list[tuple[str, ...]]) -> Batch:
    t = compile_template(pt.body, signature="小鹅优选")  # type: ignore[attr-defined]
    t.provider = pt  # type: ignore[assignment]
    bound = t.bind(["phone", "name", "coupon"])
    runner = StageRunner(standard_stages(bound, default_prefix_table(), {"cm", "cu", "ct", "cbn", "intl"}))
    return runner.run(Batch(list(range(2, 2 + len(rows))), rows, 0))


def test_render_carries_each_rows_parameters_and_drops_rows_breaking_the_rules() -> None:
    pt = _aliyun(param_lengths={"coupon": 4})
    rows = [
        ("13800138000", "张三", "20"),
        ("13900139000", "", "5"),  # default fills the name
        ("13700137000", "李四", "123456"),  # coupon over its 4 characters
        ("13600136000", "见 www.x.cn", "8"),  # a link in a parameter
        ("18600186000", "王五", ""),  # coupon has no default: missing field
        ("18900189000", "赵六", "9"),
    ]
    b = _run(pt, rows)
    assert [(r.row, r.reason) for r in sorted(b.rejects, key=lambda r: r.row)] == [
        (4, "param_too_long"),
        (5, "url_in_field"),
        (6, "missing_field"),
    ]
    assert [v for _, v in b.params] == [("张三", "20"), ("顾客", "5"), ("赵六", "9")]
    assert all(p is pt for p, _ in b.params)
    # the parameters reproduce exactly the text Pigeon rendered (what the provider will send)
    for (p, values), text in zip(b.params, b.texts, strict=True):
        filled = p.text
        for name, v in zip(p.names, values, strict=True):
            filled = filled.replace("${" + name + "}", v)
        assert text == "【小鹅优选】" + filled


def test_links_are_kept_when_the_template_allows_them() -> None:
    b = _run(_aliyun(links_in_params=True), [("13800138000", "见 www.x.cn", "8")])
    assert not b.rejects and b.params[0][1] == ("见 www.x.cn", "8")


def test_message_batches_carry_params_through_grouping_slicing_take_and_concat() -> None:
    pt = _aliyun()
    rows = [
        ("13800138000", "甲", "1"),
        ("13000130000", "乙", "2"),
        ("13300133000", "丙", "3"),
        ("13900139000", "丁", "4"),
    ]
    b = _run(pt, rows)
    groups = b.messages("c-")
    by_carrier = {c: [v for _, v in mb.params or []] for c, mb in groups.items()}
    assert by_carrier == {"cm": [("甲", "1"), ("丁", "4")], "cu": [("乙", "2")], "ct": [("丙", "3")]}
    cm = groups["cm"]
    assert [v for _, v in cm[1:].params or []] == [("丁", "4")]
    assert [v for _, v in cm.take([1]).params or []] == [("丁", "4")]
    free = MessageBatch("cm", rows=[9], numbers=["13800000000"], texts=["free"], parts=[1])
    mixed = MessageBatch.concat([cm, free])
    assert mixed.params is not None and mixed.params[-1] is None and mixed.params[0] is not None
    assert MessageBatch.concat([free, free]).params is None
