"""The plugin host: entry points, the disable list, and errors that name the plugin at fault."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from engine.core import hookspecs
from engine.core.errors import PluginContractError, PluginLoadError
from engine.core.hookspecs import hookimpl
from engine.core.plugin_host import DISABLE_ENV, PluginHost
from tests.conftest import ROOT


def test_builtins_register_through_the_entry_point_group() -> None:
    host = PluginHost()
    assert {"source_file", "gateway_blackhole", "gateway_file"} <= set(host.plugin_names())
    assert host.sources.names() == ["csv", "jsonl"]
    assert host.gateways.names() == ["aliyun", "blackhole", "cmpp", "file", "http", "smpp", "tencent"]
    assert host.webhook_parsers.names() == ["aliyun", "tencent"]
    assert host.sources.get("csv").plugin == "source_file"


def test_disable_list_from_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "file" not in PluginHost(disabled=["gateway_file"]).gateways
    monkeypatch.setenv(DISABLE_ENV, "gateway_blackhole, source_file")
    host = PluginHost()
    assert host.gateways.names() == ["aliyun", "cmpp", "file", "http", "smpp", "tencent"]
    assert host.sources.names() == []


def test_no_entry_points_for_isolated_plugin_tests() -> None:
    host = PluginHost(load_entrypoints=False)
    assert host.sources.names() == [] and host.gateways.names() == []


class _Cfg(msgspec.Struct, forbid_unknown_fields=True):
    pass


def _plugin(name: str, gateway: str) -> ModuleType:
    mod = ModuleType(name)

    @hookimpl
    def register_gateways(gateways):  # type: ignore[no-untyped-def]
        gateways.add(gateway, lambda cfg, ctx: None, _Cfg)

    mod.register_gateways = register_gateways  # type: ignore[attr-defined]
    return mod


def test_duplicate_names_name_both_plugins() -> None:
    with pytest.raises(PluginContractError, match="gateway 'blackhole' is registered by both") as exc:
        PluginHost(plugins=[_plugin("acme", "blackhole")])
    assert "'acme'" in str(exc.value) and "'gateway_blackhole'" in str(exc.value)


def test_misspelled_hook_is_a_contract_error() -> None:
    mod = ModuleType("typo")

    @hookimpl
    def register_gatways(gateways):  # type: ignore[no-untyped-def]
        pass

    mod.register_gatways = register_gatways  # type: ignore[attr-defined]
    with pytest.raises(PluginContractError, match="typo"):
        PluginHost(load_entrypoints=False, plugins=[mod])


@pytest.mark.parametrize(
    ("name", "factory", "config_type", "message"),
    [
        ("bad name!", lambda c, x: None, None, "use letters, digits"),
        ("ok", "not callable", None, "non-callable factory"),
        ("ok", lambda c, x: None, dict, "must be a msgspec.Struct"),
    ],
)
def test_bad_registrations_are_refused(name: str, factory: object, config_type: object, message: str) -> None:
    mod = ModuleType("sloppy")

    @hookimpl
    def register_sources(sources):  # type: ignore[no-untyped-def]
        sources.add(name, factory, config_type)

    mod.register_sources = register_sources  # type: ignore[attr-defined]
    with pytest.raises(PluginContractError, match=f"sloppy.*{message}|{message}"):
        PluginHost(load_entrypoints=False, plugins=[mod])


def test_a_plugin_that_raises_while_registering_is_named() -> None:
    mod = ModuleType("crashy")

    @hookimpl
    def register_sources(sources):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    mod.register_sources = register_sources  # type: ignore[attr-defined]
    with pytest.raises(PluginContractError, match="'crashy' failed in register_sources: RuntimeError: boom"):
        PluginHost(load_entrypoints=False, plugins=[mod])


def test_an_entry_point_that_fails_to_import_is_named_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real installed distribution (a dist-info on sys.path) whose module raises on import."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pigeon]\nbroken = broken_pigeon_plugin\n")
    (tmp_path / "broken_pigeon_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError) as exc:
        PluginHost()
    msg = str(exc.value)
    assert "'broken'" in msg and "needs libfoo" in msg and f"{DISABLE_ENV}=broken" in msg
    monkeypatch.setenv(DISABLE_ENV, "broken")
    assert "csv" in PluginHost().sources
    sys.modules.pop("broken_pigeon_plugin", None)


def test_every_hookspec_is_documented_with_a_version() -> None:
    specs = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert specs
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ".. versionadded::" in doc and ":param" in doc, name


def test_engine_never_imports_plugins() -> None:
    for path in (ROOT / "engine").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "plugins" or n.startswith("plugins.") for n in names), path
