"""Config errors name the file, the key path and what was expected; every shipped config loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.core.config import load_campaign, load_engine
from engine.core.errors import ConfigError, TemplateError
from engine.run.plan import prepare
from tests.conftest import ROOT

Write = Callable[[str, str | bytes], Path]

GOOD_ENGINE = """\
[gateways.main]
plugin = "blackhole"
"""


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("engine*.toml")), ids=lambda p: p.name)
def test_every_shipped_engine_file_loads(path: Path) -> None:
    cfg = load_engine(path).config
    assert cfg.gateways


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("campaign*.toml")), ids=lambda p: p.name)
def test_every_shipped_campaign_file_loads(path: Path) -> None:
    c = load_campaign(path)
    assert c.id and c.config.template.text


@pytest.mark.parametrize(
    ("content", "path", "problem"),
    [
        ("batch_sise = 1\n" + GOOD_ENGINE, "batch_sise", "did you mean `batch_size`?"),
        ("batch_size = 0\n" + GOOD_ENGINE, "batch_size", "expected `int` >= 1"),
        ('batch_size = "big"\n' + GOOD_ENGINE, "batch_size", "expected `int`, got `str`"),
        ('backend = "gevent"\n' + GOOD_ENGINE, "backend", "expected one of: asyncio, trio"),
        ('[gateways.main]\nplugn = "blackhole"\n', "gateways.main.plugn", "did you mean `plugin`?"),
        ('[gateways.main]\nplugin = "x"\ncarriers = ["cm", "zz"]\n', "gateways.main.carriers[1]", "cbn, cm"),
        (GOOD_ENGINE + '[carriers.cm]\nprice_per_part = "1"\n', "carriers.cm.price_per_part", "`float`"),
        (GOOD_ENGINE + "[carriers.cm]\nprice_per_part = -1\n", "carriers.cm.price_per_part", ">= 0"),
        (
            GOOD_ENGINE + "[carriers.xx]\nprice_per_part = 1\n",
            "carriers",
            "invalid key 'xx'; expected one of",
        ),
        ('[gateways.main]\ncarriers = ["cm"]\n', "gateways.main.plugin", "missing required key"),
        ("", "gateways", "missing required key"),
        ("[gateways]\n", "gateways", "at least one"),
    ],
)
def test_engine_errors_name_file_path_and_expectation(
    write: Write, content: str, path: str, problem: str
) -> None:
    f = write("engine.toml", content)
    with pytest.raises(ConfigError) as exc:
        load_engine(f)
    assert exc.value.file == str(f)
    assert exc.value.path == path, str(exc.value)
    assert problem in exc.value.problem, str(exc.value)
    assert str(exc.value).startswith(f"{f}: {path}: ")


def test_invalid_toml_and_missing_files_are_config_errors(write: Write, tmp_path: Path) -> None:
    f = write("engine.toml", "[gateways\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_engine(f)
    with pytest.raises(ConfigError, match="file not found"):
        load_engine(tmp_path / "nope.toml")
    g = write("gbk.toml", "名 = 1".encode("gbk"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_engine(g)


CAMPAIGN = """\
engine = "engine.toml"
[segment]
source = "csv"
path = "s.csv"
[template]
signature = "S"
text = "hi {name}"
"""


@pytest.mark.parametrize(
    ("content", "path", "problem"),
    [
        (CAMPAIGN.replace("signature", "signatur"), "template.signatur", "did you mean `signature`?"),
        (CAMPAIGN.replace('text = "hi {name}"\n', ""), "template.text", "missing required key"),
        (CAMPAIGN + 'kind = "promo"\n', "template.kind", "unknown key"),
        ('kind = "promo"\n' + CAMPAIGN, "kind", "expected one of: marketing, transactional"),
        ('id = "has space"\n' + CAMPAIGN, "id", "expected `str` matching regex"),
        (CAMPAIGN.replace('source = "csv"\n', ""), "segment.source", "missing required key"),
        (CAMPAIGN.replace('signature = "S"', 'signature = "【】"'), "template.signature", "empty"),
    ],
)
def test_campaign_errors_name_file_path_and_expectation(
    write: Write, content: str, path: str, problem: str
) -> None:
    f = write("campaign.toml", content)
    with pytest.raises(ConfigError) as exc:
        load_campaign(f)
    assert exc.value.path == path, str(exc.value)
    assert problem in exc.value.problem, str(exc.value)


def test_source_options_are_validated_by_the_source_plugin(write: Write) -> None:
    write("engine.toml", GOOD_ENGINE)
    write("s.csv", "phone,name\n13800138000,A\n")
    f = write("campaign.toml", CAMPAIGN.replace('path = "s.csv"', 'path = "s.csv"\nencodng = "gbk"'))
    with pytest.raises(ConfigError) as exc:
        prepare(f)
    assert exc.value.path == "segment.encodng"
    assert "did you mean `encoding`?" in exc.value.problem


def test_unknown_source_and_gateway_plugins_list_the_installed_ones(write: Write) -> None:
    write("engine.toml", GOOD_ENGINE)
    write("s.csv", "phone,name\n13800138000,A\n")
    f = write("campaign.toml", CAMPAIGN.replace('source = "csv"', 'source = "xls"'))
    with pytest.raises(ConfigError, match="unknown source 'xls'; installed sources: csv, jsonl"):
        prepare(f)
    write("engine.toml", '[gateways.main]\nplugin = "smtp"\n')
    f = write("campaign.toml", CAMPAIGN)
    with pytest.raises(
        ConfigError,
        match="unknown gateway plugin 'smtp'; installed: aliyun, blackhole, cmpp, file, http, smpp, tencent",
    ):
        prepare(f)


def test_gateway_options_are_validated_before_anything_runs(write: Write) -> None:
    write("engine.toml", '[gateways.main]\nplugin = "blackhole"\n[gateways.main.options]\nmax_batch = 0\n')
    write("s.csv", "phone,name\n13800138000,A\n")
    f = write("campaign.toml", CAMPAIGN)
    with pytest.raises(ConfigError) as exc:
        prepare(f)
    assert exc.value.path == "gateways.main.options.max_batch"


def test_template_errors_name_the_campaign_file(write: Write) -> None:
    write("engine.toml", GOOD_ENGINE)
    write("s.csv", "phone,name\n13800138000,A\n")
    f = write("campaign.toml", CAMPAIGN.replace("hi {name}", "hi {name"))
    with pytest.raises(TemplateError, match=r"campaign.toml: template.text: unclosed"):
        prepare(f)


def test_missing_engine_reference_says_how_to_fix(write: Write) -> None:
    f = write("campaign.toml", CAMPAIGN.replace('engine = "engine.toml"\n', ""))
    with pytest.raises(ConfigError, match="pass --engine"):
        prepare(f)
