"""The public plugin API (``pigeon``): its names are pinned, documented, enough for a whole plugin,
and the only thing the example plugin and the plugin guide import."""

from __future__ import annotations

import ast
import re
from typing import Any

import anyio
import pytest

import pigeon
import pigeon.testing
from tests.conftest import ROOT

# Changing this list changes the public API: a removal or a change is a major API_VERSION, an
# addition a minor one (docs/plugins.md, "The public API"), and the CHANGELOG says which.
PINNED = {
    "ACCEPTED", "API_VERSION", "ConfigError", "DeliveryReport", "DeliveryStatus", "EngineError", "Gateway",
    "GatewayAuthError", "GatewayContext", "GatewayError", "GatewayProtocolError", "GatewayRegistry",
    "GatewayTimeout", "GatewayUnavailable", "GatewayUnreachable", "InboundSink", "Message", "MessageBatch",
    "MoReply", "Outcome", "ProviderParams", "Receiving", "Registration", "Reject", "RejectReason",
    "ResolverRegistry", "RunHalt", "SegmentReader", "SegmentSource", "SourceBatch", "SourceContext",
    "SourceError", "SourceRegistry", "SubmitResult", "WebhookError", "WebhookParser", "WebhookParserRegistry",
    "about_to_write", "hookimpl", "mask", "Journal", "ProviderStatus", "SettleQuery", "Settled", "Settling",
    "request_key", "BudgetKey", "BudgetSpec", "CampaignBusy", "Claim", "Coordinator", "CoordinatorContext",
    "CoordinatorRegistry", "CoordinatorUnavailable", "LeaseGrant", "LeaseHolder", "LeaseLost", "RangedSource",
    "SegmentRange", "RangeQueue", "TakenRange", "SharedOptOuts", "SharedOptOutCopy", "CapCheck", "SharedSlowDown",
    "SlowDown",
    "EventDelivery", "EventSource", "EventSourceContext", "EventSourceRegistry",
}  # fmt: skip


def test_the_names_are_the_pinned_ones() -> None:
    assert set(pigeon.__all__) == PINNED
    assert set(pigeon.testing.__all__) == {
        "FakeClock", "RecordingGateway", "check_coordinator", "check_gateway", "gateway_context", "registered",
        "sample_batch",
    }  # fmt: skip


def test_the_api_version_is_major_minor() -> None:
    assert re.fullmatch(r"\d+\.\d+", pigeon.API_VERSION)


@pytest.mark.parametrize("name", sorted(PINNED - {"API_VERSION", "ACCEPTED", "hookimpl"}))
def test_every_public_name_is_documented(name: str) -> None:
    obj = getattr(pigeon, name)
    assert (obj.__doc__ or "").strip(), f"pigeon.{name} has no docstring"


def _example_in_docstring() -> str:
    doc = pigeon.__doc__ or ""
    block = doc.split("A gateway plugin in full::\n\n", 1)[1].split("\n\nRegister the module", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines())


def test_the_docstring_s_gateway_plugin_runs_as_written() -> None:
    ns: dict[str, Any] = {"__name__": "echo_plugin"}
    exec(compile(_example_in_docstring(), "pigeon-docstring", "exec"), ns)
    module = type(pigeon)("echo_plugin")
    module.__dict__.update(ns)
    with pigeon.testing.registered(module) as host:
        registration = host.gateways.get("echo")
        gateway = registration.factory(None, pigeon.testing.gateway_context("echo"))
        results = anyio.run(pigeon.testing.check_gateway, gateway, pigeon.testing.sample_batch(4))
    assert [r.outcome for r in results] == [pigeon.Outcome.ACCEPTED] * 4
    assert len({r.provider_id for r in results}) == 4


def _imported_modules(source: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
    return out


def test_the_example_plugin_imports_only_the_public_api() -> None:
    files = sorted((ROOT / "examples").rglob("*.py"))
    assert files
    for f in files:
        imported = _imported_modules(f.read_text("utf-8"))
        assert "pigeon" in imported or f.name != "__init__.py"
        assert not imported & {"engine", "plugins"}, f"{f} imports the internals"


def test_the_plugin_guide_s_code_imports_only_the_public_api() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            assert not re.match(r"\s*(from|import) (engine|plugins)\b", line), line
