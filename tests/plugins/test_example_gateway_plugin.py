"""The example third-party gateway plugin (examples/pigeon-gateway-example): it installs as its own
package with a ``pigeon`` entry point, registers like the built-ins, and keeps the gateway contract
against a real server on loopback that speaks its provider's API."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import pytest

from loadtests.simulator import SimConfig, Simulator, SimulatorThread
from pigeon.testing import check_gateway, gateway_context, registered, sample_batch
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "pigeon-gateway-example"


def _load_example() -> ModuleType:
    """Import the example from its source tree without putting it on sys.path (where its build
    metadata would make it an installed plugin for every other test)."""
    spec = importlib.util.spec_from_file_location(
        "pigeon_gateway_example", EXAMPLE / "pigeon_gateway_example" / "__init__.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the Structs' annotations through sys.modules
    spec.loader.exec_module(module)
    return module


example = _load_example()

SECRET = "s3cret"


class FakeAggregator(Simulator):
    """The example provider's API: checks the signature, answers per number."""

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        q = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        if hashlib.md5((q["account"] + SECRET + q["ts"]).encode()).hexdigest() != q["sign"]:
            return 401, "", b"{}"
        req = json.loads(body)
        self.stats["requests"] += 1
        data = {}
        for m in req["mobiles"].split(","):
            code = 101 if m.endswith("0001") else 901 if m.endswith("0002") else 0
            data[m] = {"code": code, "sid": f"sid-{m}" if code == 0 else ""}
            if code == 0:
                self.log.append((0.0, m, m, "", 1))
        return 200, "", json.dumps({"data": data}).encode()


class FakeThread(SimulatorThread):
    def __init__(self) -> None:
        super().__init__(SimConfig())
        self.sim = FakeAggregator(SimConfig())


@pytest.fixture
def provider() -> object:
    with FakeThread() as sim:
        yield sim


def _gateway(port: int, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("ACME_SECRET", SECRET)
    cfg = example.ExampleConfig(
        url=f"http://127.0.0.1:{port}/api/send", account="m42", secret_env="ACME_SECRET"
    )
    return example.ExampleGateway(cfg, gateway_context("acme"))


@pytest.mark.anyio
async def test_the_example_keeps_the_gateway_contract(
    anyio_backend: object, provider: FakeAggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = await check_gateway(_gateway(provider.port, monkeypatch), sample_batch(4))
    outcomes = [(r.outcome.value, r.code) for r in results]
    assert outcomes == [("accepted", ""), ("rejected", "101"), ("throttled", "901"), ("accepted", "")]
    assert results[0].provider_id == "sid-13800130000"
    assert provider.stats["requests"] == 4  # one text per message in the sample: one request each


def test_the_example_registers_like_a_builtin() -> None:
    with registered(example) as host:
        assert host.gateways.names() == ["example"]
        assert host.gateways.get("example").config_type is example.ExampleConfig


def test_the_example_installs_as_its_own_package_with_the_pigeon_entry_point(tmp_path: Path) -> None:
    source = shutil.copytree(EXAMPLE, tmp_path / "src")  # the build writes metadata beside the sources
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("pigeon_gateway_example-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        entry_points = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        text = z.read(entry_points).decode()
    assert "[pigeon]" in text and "example_gateway = pigeon_gateway_example" in text
