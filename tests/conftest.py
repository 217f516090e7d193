"""Shared fixtures: campaign/engine files in a temp dir, and the anyio backends every integration test runs on."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.core import speedups

ROOT = Path(__file__).resolve().parent.parent


def promtool() -> str:
    """The promtool binary. CI installs it and sets PIGEON_REQUIRE_PROMTOOL (.ci/run): there a
    missing promtool fails the test; on a workstation without it the test is skipped, saying how
    to install it."""
    found = shutil.which("promtool")
    if found is None:
        hint = "promtool is not installed: apt-get install --no-install-recommends prometheus"
        if os.environ.get("PIGEON_REQUIRE_PROMTOOL"):
            pytest.fail(hint)
        pytest.skip(hint)
    return found


@pytest.fixture(scope="module", params=["compiled", "pure"])
def kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a module's tests on the compiled batch kernels and again on their pure-Python twins
    (engine.core.speedups). CI sets PIGEON_REQUIRE_SPEEDUPS (.ci/run): there an install without the
    compiled ones fails; elsewhere their runs are skipped, saying why."""
    if request.param == "compiled" and not speedups.AVAILABLE:
        hint = "engine.core._speedups is not built (no C compiler at install?): pip install -e . with gcc"
        if os.environ.get("PIGEON_REQUIRE_SPEEDUPS"):
            pytest.fail(hint)
        pytest.skip(hint)
    before = speedups.ACCELERATED
    speedups.use(request.param == "compiled")
    yield request.param
    speedups.use(before)


ENGINE_FILE = """\
batch_size = {batch_size}
runs_dir = "runs"
[carriers.cm]
price_per_part = 0.05
[carriers.cu]
price_per_part = 0.04
[carriers.ct]
price_per_part = 0.03
[gateways.out]
plugin = "file"
carriers = {carriers}
[gateways.out.options]
path = "sent.jsonl"
max_batch = {max_batch}
"""


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Both event loops the engine supports."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write a file under tmp_path (text is dedented and UTF-8 encoded) and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            p.write_text(textwrap.dedent(content), encoding="utf-8")
        else:
            p.write_bytes(content)
        return p

    return _write


@pytest.fixture
def engine_file(write: Callable[[str, str | bytes], Path]) -> Callable[..., Path]:
    """An engine file with one `file` gateway."""

    def _make(
        *, batch_size: int = 4096, max_batch: int = 1000, carriers: str = '["cm", "cu", "ct", "cbn", "intl"]'
    ) -> Path:
        return write(
            "engine.toml", ENGINE_FILE.format(batch_size=batch_size, max_batch=max_batch, carriers=carriers)
        )

    return _make


@pytest.fixture
def campaign_file(
    write: Callable[[str, str | bytes], Path], engine_file: Callable[..., Path]
) -> Callable[..., Path]:
    """A campaign over a given segment file and template text."""

    def _make(
        segment: str,
        *,
        text: str = "{name|亲}，您的{coupon}元券已到账",
        source: str = "csv",
        kind: str = "marketing",
        extra_segment: str = "",
        signature: str = "小鹅优选",
        engine_kwargs: dict[str, object] | None = None,
        send_window: str = "",
    ) -> Path:
        engine_file(**(engine_kwargs or {}))
        body = f"""\
id = "t"
kind = "{kind}"
engine = "engine.toml"
[segment]
source = "{source}"
path = "{segment}"
{extra_segment}
[template]
signature = "{signature}"
text = "{text}"
[policy]
send_window = "{send_window}"  # tests do not depend on the time of day; quiet hours have their own
"""
        return write("campaign.toml", body)

    return _make
