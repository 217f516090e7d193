"""Templates: compile errors that say what to change, defaults, signature and opt-out text, binding."""

from __future__ import annotations

import pytest

from engine.core.errors import TemplateError
from engine.core.template import DEFAULT_OPT_OUT, compile_template


def test_signature_body_and_opt_out_make_the_full_text() -> None:
    t = compile_template("{name}，您好", signature="京东", opt_out_text=DEFAULT_OPT_OUT)
    b = t.bind(["phone", "name"])
    assert b.render_rows([("138", "张伟")]) == ["【京东】张伟，您好拒收请回复R"]


def test_signature_given_with_brackets_is_not_doubled() -> None:
    t = compile_template("hi", signature="【京东】")
    assert t.prefix == "【京东】"


def test_opt_out_already_in_the_body_is_not_appended_twice() -> None:
    t = compile_template("双11大促拒收请回复R", signature="S", opt_out_text="拒收请回复R")
    assert t.render_one({}) == "【S】双11大促拒收请回复R"


def test_opt_out_after_a_link_is_kept_apart_from_it() -> None:
    t = compile_template("戳 https://x.cn/a", signature="S", opt_out_text="拒收请回复R")
    assert t.render_one({}).endswith("https://x.cn/a 拒收请回复R")


@pytest.mark.parametrize(
    ("body", "row", "want"),
    [
        # The body ends in a field: the value's last character decides, row by row.
        ("戳 https://x.cn/c/{code}", ("ab12",), "【S】戳 https://x.cn/c/ab12 拒收请回复R"),
        ("戳 https://x.cn/c/{code}", ("券",), "【S】戳 https://x.cn/c/券拒收请回复R"),
        ("戳 https://x.cn/c/{code}", ("ab12/",), "【S】戳 https://x.cn/c/ab12/拒收请回复R"),
        ("您的券码 {code|X9}", ("",), "【S】您的券码 X9 拒收请回复R"),  # the default's last character
        ("您的券码 {code|码}", ("",), "【S】您的券码 码拒收请回复R"),
        ("code{code|}", ("",), "【S】code 拒收请回复R"),  # empty value: the literal before it ends the body
        ("{a}{b|}", ("x7", ""), "【S】x7 拒收请回复R"),
        ("{a}", ("Ｚ",), "【S】Ｚ拒收请回复R"),  # full-width: not ASCII, no space (as for literals)
    ],
)
def test_opt_out_after_a_field_value_is_kept_apart_as_after_literal_text(
    body: str, row: tuple[str, ...], want: str
) -> None:
    t = compile_template(body, signature="S", opt_out_text="拒收请回复R")
    columns = list(t.fields)
    assert t.bind(columns).render_rows([row]) == [want]
    assert t.render_one(dict(zip(columns, row, strict=True))) == want


def test_defaults_fill_empty_values_only() -> None:
    t = compile_template("{name|亲}，{city|本地}见", signature="S")
    b = t.bind(["name", "city"])
    assert b.render_rows([("", "上海"), ("王芳", "")]) == ["【S】亲，上海见", "【S】王芳，本地见"]
    assert t.required == ()
    assert t.defaults == {"name": "亲", "city": "本地"}


def test_defaults_and_literals_with_quotes_braces_and_backslashes_render_verbatim() -> None:
    body = "it's {{literal}} \\n \"q\" {v|d'\\}{{}} end\n\tx"
    t = compile_template(body, signature="S")
    b = t.bind(["v"])
    expect_empty = "【S】it's {literal} \\n \"q\" d'\\{} end\n\tx"
    assert b.render_rows([("",)]) == [expect_empty]
    assert b.render_rows([("X",)]) == [expect_empty.replace("d'\\", "X")]


def test_fields_report_order_and_required() -> None:
    t = compile_template("{a}{b|x}{a}{c}", signature="S")
    assert t.fields == ("a", "b", "c")
    assert t.required == ("a", "c")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{name", "unclosed '{' at character 1"),
        ("您好 {name 再见", "unclosed '{' at character 4"),
        ("a } b", "stray '}' at character 3"),
        ("{}", "empty field name"),
        ("{ |x}", "empty field name"),
        ("{a{b}}", "unclosed '{'"),
        ("{a|x}{a|y}", "different defaults"),
    ],
)
def test_malformed_templates_say_where_and_what_to_do(body: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        compile_template(body, signature="S")


def test_binding_to_missing_columns_lists_them_with_suggestions() -> None:
    t = compile_template("{nmae}，{coupon}元", signature="S")
    with pytest.raises(TemplateError) as exc:
        t.bind(["phone", "name", "coupon"])
    msg = str(exc.value)
    assert "{nmae} (did you mean {name}?)" in msg
    assert "phone, name, coupon" in msg


def test_fixed_text_over_the_maximum_is_kept_for_preflight_and_raised_on_request() -> None:
    t = compile_template("券" * 95, signature="小鹅优选", opt_out_text="拒收请回复R", max_length=100)
    assert t.fixed_length == 107
    assert t.length_error is not None and "over the maximum of 100" in t.length_error
    with pytest.raises(TemplateError, match="over the maximum of 100"):
        t.check_length()
    ok = compile_template("券" * 88, signature="小鹅优选", opt_out_text="拒收请回复R", max_length=100)
    assert ok.length_error is None and ok.check_length() is ok


def test_render_rows_is_generated_code_checked_against_the_reference() -> None:
    t = compile_template("{a}-{b|默认}", signature="S")
    b = t.bind(["b", "a"])
    assert "lambda rows" in b.source
    rows = [("", "x"), ("y", "z")]
    assert b.render_rows(rows) == [t.render_one({"a": "x", "b": ""}), t.render_one({"a": "z", "b": "y"})]
