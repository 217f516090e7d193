"""The JSON Schemas of the config files (config/schema/): current with the msgspec types, valid, and
in agreement with the loader — what the loader accepts the schema accepts, and a mistake the loader
refuses the schema flags too (so an editor's red line means what ``pigeon`` will say)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.cli.schema import main, render, schemas
from engine.core.config import convert_section, load_campaign, load_engine
from engine.core.errors import ConfigError
from engine.core.plugin_host import PluginHost

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "config" / "schema"


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


@pytest.fixture(scope="module")
def validators(host: PluginHost) -> dict[str, jsonschema.Draft202012Validator]:
    out = {}
    for name in ("engine", "campaign"):
        schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema)
    return out


def test_the_committed_schemas_are_what_the_types_generate(host: PluginHost) -> None:
    for name, schema in schemas(host).items():
        committed = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert committed == render(schema), (
            f"config/schema/{name} is stale: regenerate it with `python -m engine.cli.schema` from the "
            "repository root, and commit it"
        )


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", str(tmp_path)]) == 0
    assert main(["-o", str(tmp_path), "--check"]) == 0
    (tmp_path / "engine.schema.json").write_text("{}\n")
    assert main(["-o", str(tmp_path), "--check"]) == 1
    assert "stale: " in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_validates_and_names_its_schema(
    path: Path, validators: dict[str, jsonschema.Draft202012Validator]
) -> None:
    kind = "campaign" if path.name.startswith("campaign") else "engine"
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first == f"#:schema ./schema/{kind}.schema.json"  # what Taplo / Even Better TOML read
    assert (path.parent / first.split()[1]).resolve().is_file()
    assert [e.message for e in validators[kind].iter_errors(tomllib.loads(text))] == []


def test_descriptions_come_from_the_field_docstrings() -> None:
    engine = json.loads((SCHEMA_DIR / "engine.schema.json").read_text(encoding="utf-8"))
    props = engine["$defs"]["EngineConfig"]["properties"]
    assert props["batch_size"]["description"] == "Recipients per batch through the stages."
    assert "uvloop" in props["backend"]["description"]
    http = engine["$defs"]["HttpConfig"]["properties"]
    assert http["url"]["description"].startswith("The provider's send endpoint")
    assert "``" not in json.dumps(engine)  # reST markup turned into Markdown


GOOD_ENGINE = """
batch_size = 512
[carriers.cm]
price_per_part = 0.05
rate_per_second = 200
[caps.marketing]
windows = [{ limit = 3, period = "calendar_day" }]
[gateways.main]
plugin = "http"
carriers = ["cm", "cu"]
[gateways.main.options]
url = "https://sms.example.com/send"
max_batch = 50
[gateways.main.options.response]
codes = { "isv.BUSINESS_LIMIT_CONTROL" = "throttled" }
[gateways.spare]
plugin = "file"
[gateways.spare.options]
path = "out.jsonl"
[gateways.third]
plugin = "some_third_party_plugin"
[gateways.third.options]
anything = { its = "own" }
[service]
signature = "小鹅优选"
[service.templates.code]
text = "验证码{code}"
"""

# (a mistake, what the loader says about it): each must be refused by both the loader and the schema
BAD_ENGINE = [
    ("batch_sise = 3", "batch_sise"),
    ("batch_size = 0", "batch_size"),
    ('batch_size = "big"', "batch_size"),
    ('backend = "gevent"', "backend"),
    ("[carriers.xx]\nprice_per_part = 1", "carriers: invalid key 'xx'"),
    ("[carriers.cm]\nprice_per_part = -1", "carriers.cm.price_per_part"),
    ("[carriers.cm]\ntransactional_share = 1.0", "carriers.cm.transactional_share"),
    ('[gateways.x]\nplugin = "file"\ncarriers = ["zz"]', "gateways.x.carriers"),
    ('[gateways."bad name"]\nplugin = "file"', "gateways"),
    ('[gateways.x]\nplugin = "file"\nin_flight = 0', "gateways.x.in_flight"),
    ('[gateways.x]\nplugn = "file"', "gateways.x"),
    ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
    ("[store]\npaht = 'x.db'", "store.paht"),
    ("[caps.marketing]\nwindows = [{ limit = 0, period = '7d' }]", "caps.*.windows[0].limit"),
    ("[caps.promo]\nwindows = []", "caps: invalid key 'promo'"),
    ("[service]\nmax_messages = 0", "service.max_messages"),
    ('[service]\nlog_level = "trace"', "service.log_level"),
    ("[service.templates.t]\nsignature = 'x'", "service.templates.t.text"),
]

BAD_PLUGIN_OPTIONS = [
    ('[gateways.x]\nplugin = "http"\n[gateways.x.options]\nurll = "x"', "http", "url"),
    ('[gateways.x]\nplugin = "http"\n[gateways.x.options]\nurl = "x"\nmax_batch = 0', "http", "max_batch"),
    ('[gateways.x]\nplugin = "file"\n[gateways.x.options]\nmax_batch = "many"', "file", "max_batch"),
    ('[gateways.x]\nplugin = "blackhole"\n[gateways.x.options]\nspeed = 1', "blackhole", "speed"),
]


def _errors(validator: jsonschema.Draft202012Validator, data: dict[str, Any]) -> list[str]:
    return [e.message for e in validator.iter_errors(data)]


def test_a_good_engine_file_passes_both(
    tmp_path: Path, validators: dict[str, jsonschema.Draft202012Validator]
) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(GOOD_ENGINE, encoding="utf-8")
    load_engine(path)
    assert _errors(validators["engine"], tomllib.loads(GOOD_ENGINE)) == []


@pytest.mark.parametrize(("mistake", "where"), BAD_ENGINE, ids=[b[1] + ":" + b[0][:12] for b in BAD_ENGINE])
def test_a_mistake_the_loader_refuses_the_schema_flags(
    tmp_path: Path, validators: dict[str, jsonschema.Draft202012Validator], mistake: str, where: str
) -> None:
    text = mistake + '\n[gateways.ok]\nplugin = "blackhole"\n'
    if mistake.startswith("[gateways."):
        text = mistake + "\n"
    path = tmp_path / "engine.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_engine(path)
    assert where in str(exc.value)
    assert _errors(validators["engine"], tomllib.loads(text)) != []


@pytest.mark.parametrize(
    ("text", "plugin", "key"), BAD_PLUGIN_OPTIONS, ids=[b[1] + "." + b[2] for b in BAD_PLUGIN_OPTIONS]
)
def test_a_builtin_gateways_options_are_checked_as_its_plugin_checks_them(
    host: PluginHost, validators: dict[str, jsonschema.Draft202012Validator], text: str, plugin: str, key: str
) -> None:
    data = tomllib.loads(text)
    options = data["gateways"]["x"]["options"]
    with pytest.raises(ConfigError) as exc:
        convert_section(
            options, host.gateways.get(plugin).config_type, file="e.toml", path="gateways.x.options"
        )
    assert key in str(exc.value)
    assert _errors(validators["engine"], data) != []


GOOD_CAMPAIGN = """
id = "spring-sale"
kind = "marketing"
[segment]
source = "csv"
path = "segment.csv"
encoding = "gbk"
phone_field = "mobile"
[template]
text = "{name|亲}，春季上新"
signature = "小鹅优选"
[policy]
allowed_terms = ["最佳赏味期"]
"""

BAD_CAMPAIGN = [
    ('id = "has space"', "id"),
    ('kind = "promo"', "kind"),
    ('delivery = "exactly-once"', "delivery"),
    ("[template]\nsignatur = 'x'", "template"),
    ("[template]\nmax_length = 5", "template.max_length"),
    ("[policy]\nrespect_optouts = 'yes'", "policy.respect_optouts"),
    ("[policy]\nallowed_terms = 'x'", "policy.allowed_terms"),
]


def _campaign(extra: str) -> str:
    base = tomllib.loads(GOOD_CAMPAIGN)
    data = {**base, **tomllib.loads(extra)} if not extra.startswith("[template]") else base
    if extra.startswith("[template]"):
        data["template"] = {**base["template"], **tomllib.loads(extra)["template"]}
    lines = []
    for k, v in data.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v, ensure_ascii=False)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {json.dumps(vv, ensure_ascii=False)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def test_a_good_campaign_passes_both(
    tmp_path: Path, host: PluginHost, validators: dict[str, jsonschema.Draft202012Validator]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD_CAMPAIGN, encoding="utf-8")
    loaded = load_campaign(path)
    convert_section(loaded.source_options, host.sources.get("csv").config_type, file="c", path="segment")
    assert _errors(validators["campaign"], tomllib.loads(GOOD_CAMPAIGN)) == []


@pytest.mark.parametrize(("mistake", "where"), BAD_CAMPAIGN, ids=[b[1] for b in BAD_CAMPAIGN])
def test_a_campaign_mistake_the_loader_refuses_the_schema_flags(
    tmp_path: Path, validators: dict[str, jsonschema.Draft202012Validator], mistake: str, where: str
) -> None:
    text = _campaign(mistake)
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_campaign(path)
    assert where in str(exc.value)
    assert _errors(validators["campaign"], tomllib.loads(text)) != []


@pytest.mark.parametrize(
    ("segment", "bad_key"),
    [
        ({"source": "jsonl", "path": "x.jsonl", "encoding": "gbk"}, "encoding"),  # csv only
        ({"source": "csv", "path": "x.csv", "delimiter": ";;"}, "delimiter"),
        ({"source": "csv", "paht": "x.csv"}, "paht"),
        ({"source": "csv"}, "path"),
    ],
)
def test_a_builtin_sources_keys_are_checked_as_its_plugin_checks_them(
    host: PluginHost,
    validators: dict[str, jsonschema.Draft202012Validator],
    segment: dict[str, str],
    bad_key: str,
) -> None:
    options = {k: v for k, v in segment.items() if k not in ("source", "phone_field")}
    with pytest.raises(ConfigError) as exc:
        convert_section(options, host.sources.get(segment["source"]).config_type, file="c", path="segment")
    assert bad_key in str(exc.value)
    data = {"segment": segment, "template": {"text": "hi", "signature": "小鹅优选"}}
    assert _errors(validators["campaign"], data) != []
    data["segment"] = {"source": "someone_elses_source", "table": "members"}  # its plugin checks it
    assert _errors(validators["campaign"], data) == []
