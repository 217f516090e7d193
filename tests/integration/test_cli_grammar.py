"""One CLI grammar: every command's ``--help`` (walked from the parser tree), the engine file found in
the documented order and said in every hint, ``--engine``/``--json`` before or after an action,
``--json`` on every command that prints data, and ``lookup`` piped without cutting numbers.

Commands run in this process (``engine.cli.main.main``) from a temporary current directory, except where
a real pipe matters (``lookup``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.grammar import commands, update_docs
from engine.cli.main import main, parser
from engine.core.engine_file import EngineFile, find_engine, with_engine
from engine.core.errors import ConfigError
from engine.state.ledger.records import CampaignStatus
from engine.state.ledger.store import Ledger
from tests.conftest import ENGINE_FILE, ROOT

SEGMENT = "phone,name,coupon\n13800138000,张伟,20\n13000130000,李娜,30\n13300133000,王芳,10\n"

NO_ENGINE = {("lookup",), ("plugins",), ("completion",)}
"""Commands that use no engine file (every other command must take --engine)."""
NO_DATA = {("serve",), ("completion",)}
"""Commands that print no data (every other command must take --json)."""
_REDIS = os.environ.get("PIGEON_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
"""Where ``pigeon worker`` runs campaign ``t`` (its keys are deleted before and after)."""


def _forget_worker_keys() -> None:
    import redis

    client = redis.Redis.from_url(_REDIS, socket_connect_timeout=1)
    try:
        keys = list(client.scan_iter(match="pigeon:*{t}", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def _leaves() -> list[tuple[str, ...]]:
    return [path for path, cmd in commands(parser()) if path and not cmd.commands]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the current directory, with no $PIGEON_ENGINE."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIGEON_ENGINE", raising=False)
    return tmp_path


def _engine(path: Path, cm_price: float = 0.05) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ENGINE_FILE.format(batch_size=4096, max_batch=100, carriers='["cm", "cu", "ct", "cbn", "intl"]')
    path.write_text(text.replace("price_per_part = 0.05", f"price_per_part = {cm_price}"), "utf-8")
    return path


def _campaign(path: Path, engine_key: str | None) -> Path:
    (path.parent / "seg.csv").write_text(SEGMENT, "utf-8")
    key = f'engine = "{engine_key}"\n' if engine_key else ""
    path.write_text(
        f'id = "t"\n{key}[segment]\nsource = "csv"\npath = "seg.csv"\n'
        '[template]\nsignature = "小鹅优选"\ntext = "{name}，您的{coupon}元券已到账"\n'
        '[policy]\nsend_window = ""\n',
        "utf-8",
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = _run(capsys, *argv)
    assert code in (0, 1), (argv, code, err)
    return json.loads(out)


# --- every --help, from the parser tree ---------------------------------------------------------


@pytest.mark.parametrize("path", [p for p, _ in commands(parser())], ids=lambda p: " ".join(p) or "pigeon")
def test_every_help_exits_0_and_shows_the_grammar(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    tree = dict(commands(parser()))
    cmd = tree[path]
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: pigeon")
    if path and path not in NO_ENGINE:
        assert "--engine PATH" in text  # the same name for the engine file everywhere
    if path and path not in NO_DATA:
        assert "--json" in text
    assert "--config" not in text  # the old spelling still works but is not offered
    if not cmd.commands:  # a command that runs: its exit codes, each with its meaning
        assert "exit codes:" in text
        for code in cmd.exit_codes:
            assert f"\n  {code}  " in text
        assert cmd.exit_codes and 0 in cmd.exit_codes and 2 in cmd.exit_codes  # usage errors exit 2


def test_the_exemptions_are_exact() -> None:
    """A new command is held to the grammar unless it is added to an exemption on purpose, and an
    exemption that no longer holds fails too."""
    tree = dict(commands(parser()))
    lacks_engine = {
        p for p in _leaves() if not any("--engine" in a.option_strings for a in tree[p].arguments)
    }
    lacks_json = {p for p in _leaves() if not any("--json" in a.option_strings for a in tree[p].arguments)}
    assert lacks_engine == NO_ENGINE
    assert lacks_json == NO_DATA


def test_every_command_is_in_the_docs_table_and_the_table_is_the_parsers() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text("utf-8")
    assert update_docs(doc, parser()) == doc, "run: python -m engine.cli.grammar_doc --write docs/cli.md"
    rows = [line for line in doc.splitlines() if line.startswith("| `pigeon")]
    for path, cmd in commands(parser()):
        words = " ".join(["pigeon", *path])
        row = next((r for r in rows if r.startswith((f"| `{words} ", f"| `{words}`"))), None)
        assert row is not None, f"pigeon {' '.join(path)} is missing from docs/cli.md"
        for action in cmd.arguments:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and action.help != argparse.SUPPRESS:
                    assert flag in row, (path, flag)
        assert row.rstrip(" |").endswith(" ".join(map(str, cmd.exit_codes)) or "those of its action")
    assert "docs/cli.md" in (ROOT / "README.md").read_text("utf-8")


# --- the engine file ----------------------------------------------------------------------------


def test_find_engine_order(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as none:
        find_engine(None)
    assert "--engine PATH" in str(none.value) and "$PIGEON_ENGINE" in str(none.value)
    _engine(here / "config" / "engine.toml")
    assert find_engine(None) == EngineFile(Path("config/engine.toml"), "current directory")
    _engine(here / "engine.toml")
    assert find_engine(None) == EngineFile(Path("engine.toml"), "current directory")  # ./engine.toml first
    assert find_engine(None, campaign_key=Path("c/e.toml")).path == Path("c/e.toml")
    monkeypatch.setenv("PIGEON_ENGINE", "env.toml")
    assert find_engine(None, campaign_key=Path("c/e.toml")) == EngineFile(Path("env.toml"), "$PIGEON_ENGINE")
    assert find_engine(Path("flag.toml")) == EngineFile(Path("flag.toml"), "--engine")


def _cm_cost(data: object) -> float:
    assert isinstance(data, dict)
    return float(data["carriers"]["cm"]["cost"])


def test_every_step_of_the_engine_file_order_end_to_end(
    here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two engine files share one store; their price for China Mobile says which one a command used."""
    _engine(here / "engine.toml", cm_price=0.05)  # the current directory's
    _engine(here / "prod.toml", cm_price=0.5)
    _campaign(here / "campaign.toml", engine_key="prod.toml")

    sent = _json(capsys, "send", "campaign.toml", "--json", "-q")  # 3: the campaign file's key
    assert _cm_cost(sent) == 0.5
    assert _cm_cost(_json(capsys, "report", "t", "--json")) == 0.5  # 4: the ledger's record, not 5
    monkeypatch.setenv("PIGEON_ENGINE", "engine.toml")
    assert _cm_cost(_json(capsys, "report", "t", "--json")) == 0.05  # 2 before 4
    assert _cm_cost(_json(capsys, "report", "t", "--json", "--engine", "prod.toml")) == 0.5  # 1 before 2
    again = _json(capsys, "send", "campaign.toml", "--again", "--json", "-q")
    assert _cm_cost(again) == 0.05  # 2 before 3
    monkeypatch.delenv("PIGEON_ENGINE")
    # The ledger now records engine.toml: the current directory's file, said by no --engine.
    assert _cm_cost(_json(capsys, "report", "t", "--json")) == 0.05

    elsewhere = here / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = _run(capsys, "status", "t")
    assert code == 2 and "--engine PATH" in err and "$PIGEON_ENGINE" in err


def test_hints_say_the_engine_file_when_it_is_not_the_default(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _engine(here / "engine.toml")
    other = _engine(here / "other" / "engine.toml")
    _campaign(here / "campaign.toml", engine_key=None)
    flag = f"--engine {other.resolve()}"

    assert _run(capsys, "send", "campaign.toml", "-q", "--engine", str(other))[0] == 0
    code, _, err = _run(capsys, "send", "campaign.toml", "-q", "--engine", str(other))
    assert code == 2 and "already finished" in err
    assert f"`pigeon report t {flag}`" in err  # the ledger's hint, with the engine file it needs

    ledger = Ledger(here / "other" / "pigeon.db")
    try:
        ledger.set_status("t", CampaignStatus.RUNNING)  # as a crash leaves it
    finally:
        ledger.close()
    code, out, _ = _run(capsys, "status", "t", "--engine", str(other))
    assert code == 0 and f"`pigeon resume t {flag}`" in out
    code, out, _ = _run(capsys, "cancel", "t", "--engine", str(other))
    assert code == 0 and f"`pigeon send … --again {flag}`" in out

    # The current directory's engine file: hints stay short.
    assert _run(capsys, "send", "campaign.toml", "-q")[0] == 0
    code, _, err = _run(capsys, "send", "campaign.toml", "-q")
    assert code == 2 and "`pigeon report t`" in err and "--engine" not in err


def test_with_engine_adds_the_flag_to_every_hint_form() -> None:
    other = EngineFile(Path("/srv/my pigeon/engine.toml"), "--engine")
    flag = "--engine '/srv/my pigeon/engine.toml'"
    text = (
        "stopped: `pigeon resume c1` when the gateway is back; `pigeon status c1` says who; "
        "`pigeon send … --again` starts it afresh; `pigeon resume` the campaign; `pigeon cancel` it; "
        "see `pigeon lookup 138`; `pigeon report c1 --engine x.toml` already says"
    )
    assert with_engine(text, other) == (
        f"stopped: `pigeon resume c1 {flag}` when the gateway is back; `pigeon status c1 {flag}` says who; "
        f"`pigeon send … --again {flag}` starts it afresh; `pigeon resume {flag}` the campaign; "
        f"`pigeon cancel {flag}` it; see `pigeon lookup 138`; `pigeon report c1 --engine x.toml` already says"
    )
    assert with_engine(text, None) == text


def test_with_engine_leaves_hints_alone_for_the_default_file(here: Path) -> None:
    _engine(here / "config" / "engine.toml")
    text = "`pigeon resume c1` when the gateway is back"
    assert with_engine(text, EngineFile(here / "config" / "engine.toml", "$PIGEON_ENGINE")) == text
    assert with_engine(text, EngineFile(Path("config/engine.toml"), "current directory")) == text


# --- options before or after the action; the old --config ---------------------------------------


def test_engine_and_json_before_or_after_the_action(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = _engine(here / "conf" / "e.toml")  # not where a command looks by itself
    (here / "list.csv").write_text("13800138000\n13900139000\n", "utf-8")
    after = _json(capsys, "optout", "import", "list.csv", "--engine", str(engine), "--json")
    assert isinstance(after, dict) and after["added"] == 2 and after["on_list"] == 2
    before = _json(capsys, "optout", "--engine", str(engine), "--json", "import", "list.csv")
    assert isinstance(before, dict) and before["added"] == 0 and before["already"] == 2
    checked = _json(capsys, "optout", "--json", "check", "13800138000", "--engine", str(engine))
    assert isinstance(checked, list) and checked[0]["found"] is True
    assert _run(capsys, "optout", "import", "list.csv")[0] == 2  # no engine file here: said, exit 2


def test_serve_and_keys_take_engine_and_still_config(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = _engine(here / "conf" / "e.toml")
    code, out, err = _run(capsys, "keys", "create", "shop", "--config", str(engine))
    assert code == 0 and out.strip() and "--config is deprecated: use --engine" in err
    assert [k["name"] for k in _json(capsys, "keys", "list", "--engine", str(engine), "--json")] == ["shop"]
    assert [k["name"] for k in _json(capsys, "keys", "--engine", str(engine), "--json", "list")] == ["shop"]
    assert _run(capsys, "keys", "revoke", "nobody", "--engine", str(engine))[0] == 2
    created = _json(capsys, "keys", "create", "crm", "--engine", str(engine), "--json")
    assert isinstance(created, dict) and created["name"] == "crm" and len(created["key"]) > 20


def test_serve_says_config_is_deprecated_in_its_json_log(here: Path) -> None:
    """``serve``'s standard error is its JSON log: the deprecation is one more JSON line there, and
    the service runs (and drains on SIGTERM) as with --engine."""
    import signal

    _engine(here / "e.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--config", "e.toml", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=here,
    )
    try:
        assert proc.stderr is not None
        events = []
        for line in proc.stderr:
            events.append(json.loads(line))  # every line is JSON
            if events[-1].get("event") == "service.listening":
                break
        proc.send_signal(signal.SIGTERM)
        events += [json.loads(line) for line in proc.stderr.read().splitlines()]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert events[0]["event"] == "cli.deprecated_option" and events[0]["level"] == "warning"
    assert "--config is deprecated: use --engine" in events[0]["msg"]
    assert events[-1]["event"] == "service.stopped"


# --- --json on every command that prints data ---------------------------------------------------


def test_every_data_command_prints_json(
    here: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    """Each command with --json, run with it: standard output is one JSON document. The list of
    command lines is checked against the parser, so a new data command needs a line here."""
    _engine(here / "engine.toml")
    _campaign(here / "campaign.toml", engine_key=None)
    (here / "list.csv").write_text("13800138000\n", "utf-8")
    (here / "orders.csv").write_text("phone,paid_at,amount\n13800138000,2025-11-11 10:00:00,99.00\n", "utf-8")
    (here / "flows").mkdir()
    (here / "flows" / "shipped.toml").write_text(
        'trigger = "order_shipped"\nsignature = "小鹅优选"\n[[steps]]\nwait = "0s"\ntext = "已发货"\n',
        "utf-8",
    )
    (here / "events.jsonl").write_text(
        '{"id":"1","type":"order_shipped","phone":"13800138000","order_id":"A"}\n', "utf-8"
    )
    runs: list[tuple[str, ...]] = [
        ("preview", "campaign.toml"),
        ("send", "campaign.toml", "-q"),
        ("resume", "t", "--again", "-q"),
        ("status",),
        ("report", "t"),
        ("settle", "t"),
        ("links", "pull", "t"),
        ("lookup", "13800138000", "+44 7911 123456"),
        ("optout", "import", "list.csv"),
        ("optout", "export"),
        ("optout", "add", "13900139000"),
        ("optout", "remove", "13900139000"),
        ("optout", "check", "13800138000"),
        ("consent", "import", "list.csv", "--source", "checkout"),
        ("consent", "check", "13800138000"),
        ("keys", "create", "shop"),
        ("keys", "list"),
        ("keys", "revoke", "shop"),
        ("plugins",),
        ("segment", "rfm", "orders.csv", "-q"),
        ("worker", "campaign.toml", "--coordinator", _REDIS, "--again", "-q"),
        ("orders", "import", "orders.csv"),
        ("report", "t", "--outcomes"),
        ("cancel", "t"),
        ("events", "import", "events.jsonl"),
        ("flows", "check"),
        ("flows", "list"),
        ("flows", "pause", "shipped"),
        ("flows", "resume", "shipped"),
        ("flows", "pending", "13800138000"),
    ]
    leaves = set(_leaves())
    covered = set()
    _forget_worker_keys()
    request.addfinalizer(_forget_worker_keys)
    for argv in runs:
        data = _json(capsys, *argv, "--json")
        assert data not in (None, {}, []), argv
        covered.add(next(argv[:n] for n in (2, 1) if argv[:n] in leaves))
    assert covered == leaves - NO_DATA
    exported = _json(capsys, "optout", "export", "--json")
    assert exported == [
        {
            "number": "+8613800138000",
            "source": "import",
            "reason": "",
            "created_at": exported[0]["created_at"],
        }  # type: ignore[index]
    ]


# --- lookup through a pipe ----------------------------------------------------------------------


def test_lookup_through_a_pipe_prints_whole_numbers() -> None:
    """Piped (and however narrow $COLUMNS says the terminal is), every E.164 form is printed whole,
    one tab-separated line per number; rich's table used to cut them to the width (`+86138001380…`)."""
    numbers = ["13800138000", "+86 171-0000-0000", "0086 133 0013 3000", "+44 7911 123456", "12345"]
    env = {**os.environ, "COLUMNS": "40", "PYTHONUTF8": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "lookup", *numbers],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split("\t") == ["input", "E.164", "carrier", "kind", "result"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == numbers
    assert [r[1] for r in rows] == ["+8613800138000", "+8617100000000", "+8613300133000", "+447911123456", ""]
    assert rows[1][3].startswith("vno") and rows[4][4].startswith("rejected: invalid_number")
    assert all("…" not in line for line in lines)
