"""The sdist and the wheel hold what a user needs (license, type markers, the C source to build from)
and none of what lies around a working tree (stores, runs, API keys, a venv, caches).

Built the way ``python -m build`` builds: an sdist from a copy of the working tree, then the wheel
from the unpacked sdist — so a wheel with the compiled kernels also proves the sdist carries their
source. About 2 s (the C extension compiles once).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import HeaderParser
from fnmatch import fnmatch
from pathlib import Path

import pytest
import trove_classifiers

ROOT = Path(__file__).resolve().parents[2]

# What a working tree may hold that must never ship: the store and its WAL files (opt-outs, ledger),
# run directories (every message sent), API keys, segments (customers' numbers), a venv, caches.
JUNK = {
    "config/pigeon.db": "x",
    "config/pigeon.db-wal": "x",
    "config/pigeon.db-shm": "x",
    "engine/pigeon.db": "x",
    "engine/core/data/old.db": "x",
    "config/api-keys.json": "{}",
    "engine/api-keys.json": "{}",
    "config/segment.csv": "phone\n13800138000\n",
    "runs/double11-coupon/20261111T000000Z/sent.jsonl": "{}\n",
    ".venv/lib/python3.11/site-packages/leak.py": "",
    "engine/__pycache__/leak.cpython-311.pyc": "",
    ".env": "PIGEON_TOKEN=secret\n",
}
FORBIDDEN = [
    "*.db",
    "*.db-wal",
    "*.db-shm",
    "*api-keys.json",
    "*/runs/*",
    "*.venv/*",
    "*__pycache__*",
    "*.pyc",
    "*/.env",
    "*segment*.csv",
    "*/tests/*",
]
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", ".benchmarks",
    "runs", "data", "*.so", "*.db*", "*.csv*", "*.jsonl*",
)  # fmt: skip


def _build(kind: str, source: Path, out: Path) -> Path:
    """Run the setuptools backend (as ``python -m build`` does) in ``source``; the artifact's path."""
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) built from a copy of the working tree with junk planted in it."""
    tmp = tmp_path_factory.mktemp("pkg")
    tree = tmp / "tree"
    shutil.copytree(ROOT, tree, ignore=_COPY_IGNORE)
    shutil.copytree(ROOT / "engine" / "core" / "data", tree / "engine" / "core" / "data", ignore=_COPY_IGNORE)
    for rel, text in JUNK.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    dist = tmp / "dist"
    sdist = _build("sdist", tree, dist)
    unpacked = tmp / "unpacked"
    with tarfile.open(sdist) as tf:
        tf.extractall(unpacked, filter="data")
    (top,) = unpacked.iterdir()
    wheel = _build("wheel", top, dist)
    return sdist, wheel


def _names(path: Path) -> list[str]:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    with tarfile.open(path) as tf:
        return [m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()]


def _leaks(names: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch("/" + n, "*" + p.lstrip("*")) for p in FORBIDDEN)]


def test_the_sdist_carries_the_license_the_c_source_and_nothing_from_the_working_tree(
    artifacts: tuple[Path, Path],
) -> None:
    names = _names(artifacts[0])
    for need in (
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "setup.py",
        "engine/core/_speedups.c",
        "engine/core/_speedups.pyi",
        "engine/py.typed",
        "plugins/py.typed",
        "pigeon/py.typed",
        "engine/core/data/cn_prefixes.toml",
    ):
        assert need in names, need
    tracked = [
        p.relative_to(ROOT).as_posix()
        for top in ("engine", "pigeon", "plugins")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    assert sorted(set(tracked) - set(names)) == []
    assert _leaks(names) == []
    assert not [n for n in names if n.startswith(("tests/", "loadtests/", "config/", "docs/", "examples/"))]


def test_the_wheel_carries_the_license_and_type_markers_and_nothing_else(
    artifacts: tuple[Path, Path],
) -> None:
    names = _names(artifacts[1])
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in names} == {"engine", "pigeon", "plugins", dist_info}
    assert f"{dist_info}/licenses/LICENSE" in names
    assert {
        "engine/py.typed",
        "plugins/py.typed",
        "pigeon/py.typed",
        "engine/core/_speedups.pyi",
        "engine/core/data/cn_prefixes.toml",
    } <= set(names)
    assert not [n for n in names if n.endswith(".c")]  # the source stays in the sdist
    assert _leaks(names) == []
    compiler = sysconfig.get_config_var("CC")
    if os.environ.get("PIGEON_REQUIRE_SPEEDUPS") or (compiler and shutil.which(compiler.split()[0])):
        assert [n for n in names if re.fullmatch(r"engine/core/_speedups\..*\.so", n)], "no compiled kernels"


def test_the_metadata_names_license_authors_urls_and_real_classifiers(artifacts: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(artifacts[1]) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = HeaderParser().parsestr(zf.read(meta_name).decode())
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Author"]
    assert meta["Keywords"]
    assert any(u.startswith("Homepage, https://") for u in meta.get_all("Project-URL") or [])
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert [c for c in classifiers if c not in trove_classifiers.classifiers] == []
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression says it
    with tarfile.open(artifacts[0]) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/LICENSE"))
        text = tf.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
