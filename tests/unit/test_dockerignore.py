"""The image's build context: ``.dockerignore`` keeps stores, runs, keys, segments, venvs and caches
out, and keeps in everything the Dockerfile copies. Matched by docker-py's implementation of
Docker's rules (``docker.utils.build.exclude_paths``), not by a reimplementation of ours.

Docker builds cannot run in the test environment (no Docker engine); CI lints the Dockerfile with
hadolint (.ci/run).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[2]

JUNK = [
    "config/pigeon.db",
    "config/pigeon.db-wal",
    "config/pigeon.db-shm",
    "pigeon.db",
    "work/pigeon.db",
    "engine/core/data/cache.sqlite3",
    "config/api-keys.json",
    "api-keys.json",
    "work/service/api-keys.json",
    "config/tls.key",
    "config/tls.pem",
    ".env",
    "config/.env.production",
    "runs/double11-coupon/20261111T000000Z/sent.jsonl",
    "runs/double11-coupon/20261111T000000Z/summary.json",
    "work/runs/x/rejects.csv",
    "config/segment.csv",
    "config/segment-100k.csv.gz",
    "config/segment.jsonl",
    "loadtests/data/1m.csv",
    ".venv/bin/python",
    "examples/pigeon-gateway-example/.venv/lib/x.py",
    "engine/__pycache__/cli.cpython-311.pyc",
    "engine/core/_speedups.cpython-311-x86_64-linux-gnu.so",
    "pigeon_sms.egg-info/PKG-INFO",
    "build/lib/engine/cli/main.py",
    "dist/pigeon_sms-0.1.0.tar.gz",
    ".mypy_cache/3.11/x.json",
    ".ruff_cache/x",
    ".pytest_cache/v/x",
    ".hypothesis/examples/x",
    ".benchmarks/x.json",
    ".git/HEAD",
]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A copy of the sources with junk planted in it, and the files Docker would send of it."""
    root = tmp_path_factory.mktemp("context")
    for top in ("engine", "pigeon", "plugins", "config", "examples"):
        shutil.copytree(
            ROOT / top,
            root / top,
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.db*", "*.csv*", "*.jsonl*", ".venv"),
        )
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, root / name)
    for rel in JUNK:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sent = {p for p in exclude_paths(str(root), patterns) if (root / p).is_file()}
    return root, sent


def test_no_store_run_key_segment_venv_or_cache_enters_the_image(context: tuple[Path, set[str]]) -> None:
    _, sent = context
    assert sorted(j for j in JUNK if j in sent) == []


def test_everything_the_dockerfile_copies_is_in_the_context(context: tuple[Path, set[str]]) -> None:
    root, sent = context
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert "engine" in sources and "pyproject.toml" in sources  # the parse found the COPY lines
    for src in sources:
        path = root / src
        wanted = (
            [
                p.relative_to(root).as_posix()
                for p in path.rglob("*")
                if p.is_file() and p.relative_to(root).as_posix() not in JUNK
            ]
            if path.is_dir()
            else [src]
        )
        assert wanted, src
        assert sorted(set(wanted) - sent) == [], src
    for need in (
        "engine/core/_speedups.c",
        "engine/core/data/cn_prefixes.toml",
        "config/engine.toml",
        "LICENSE",
    ):
        assert need in sent


def test_the_image_runs_as_uid_10001_owns_its_work_dir_and_checks_its_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"install -d -o 10001 -g 10001 .*/work\b", text)
    assert re.search(r"^WORKDIR /work$", text, re.M)
    m = re.search(r'^HEALTHCHECK .*\n?.*CMD \["python", "-m", "([\w.]+)"', text, re.M)
    assert m and m.group(1) == "engine.cli.healthcheck"
    assert (ROOT / (m.group(1).replace(".", "/") + ".py")).is_file()
    for pkgs in re.findall(r"apt-get install ([^\n\\&]+)", text):
        assert all("=" in p for p in pkgs.split() if not p.startswith("-")), pkgs  # pinned
