"""The repository's text files are whole: no merge left a conflict marker or a backup file behind."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT

MARKER = re.compile(rb"^(<{7} |>{7} |\|{7} )", re.M)


def test_no_tracked_file_holds_a_conflict_marker() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    found = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file() or path.suffix in {".gz", ".so", ".png", ".whl"}:
            continue
        if MARKER.search(path.read_bytes()):
            found.append(name.decode())
    assert found == []


def test_no_merge_leftover_is_tracked() -> None:
    """A merge tool's backups (``*.orig``, ``*.rej``, ``*.BACKUP.*``…) never land with the merge."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
    leftovers = [
        f for f in files.splitlines() if re.search(r"\.(orig|rej)$|\.(BACKUP|BASE|LOCAL|REMOTE)\.", f)
    ]
    assert leftovers == []
