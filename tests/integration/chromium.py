"""Headless Chromium driven over the DevTools protocol on a pipe: load a page, collect what it logs and fetches.

``chromium --remote-debugging-pipe`` reads protocol commands on fd 3 and writes answers and events
on fd 4, one JSON message each, NUL-terminated — no WebSocket client needed. :func:`render` opens
a page in a fresh profile, waits for its load event, and returns its DOM, a PNG screenshot, the
console messages and exceptions, and every URL the page requested.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def chromium() -> str:
    """The chromium binary: CI installs it and sets PIGEON_REQUIRE_CHROMIUM (.ci/run), so a missing
    one fails there; elsewhere the test is skipped, saying how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        hint = "chromium is not installed: apt-get install --no-install-recommends chromium"
        if os.environ.get("PIGEON_REQUIRE_CHROMIUM"):
            pytest.fail(hint)
        pytest.skip(hint)
    return found


@dataclass
class Rendered:
    """What the page did."""

    dom: str
    png: bytes
    console: list[dict[str, Any]] = field(default_factory=list)
    """``Runtime.consoleAPICalled`` and ``Log.entryAdded`` events."""
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0


class _Pipe:
    def __init__(self, binary: str, profile: str) -> None:
        r0, self._to_w = os.pipe()
        self._from_r, w0 = os.pipe()
        # above the numbers the child's 3 and 4 will be, so the dup2s below cannot clobber them
        to_r, from_w = fcntl.fcntl(r0, fcntl.F_DUPFD, 10), fcntl.fcntl(w0, fcntl.F_DUPFD, 10)
        os.close(r0)
        os.close(w0)
        # the child's fd 3 reads commands, fd 4 writes answers
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_r, 3), os.dup2(from_w, 4)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})  # type: ignore[no-any-return]
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline)
            if msg.get("method") == method:
                return msg
            self.events.append(msg)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # it may be gone already
            self.send("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_w)
        os.close(self._from_r)


def render(path: Path, width: int = 1400, height: int = 900, *, full_page: bool = True) -> Rendered:
    """Open ``path`` (a file) in headless Chromium and report what it rendered, logged and fetched."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="pigeon-chromium-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired")
            dom = pipe.call(
                "Runtime.evaluate",
                {"expression": "document.documentElement.outerHTML", "returnByValue": True},
                session=session,
            )["result"]["value"]
            size = pipe.call(
                "Runtime.evaluate",
                {
                    "expression": "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]",
                    "returnByValue": True,
                },
                session=session,
            )["result"]["value"]
            shot = pipe.call(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": full_page},
                session=session,
            )
            out = Rendered(dom=dom, png=base64.b64decode(shot["data"]), width=size[0], height=size[1])
            for ev in pipe.events:
                m = ev.get("method")
                if m in ("Runtime.consoleAPICalled", "Log.entryAdded"):
                    out.console.append(ev["params"])
                elif m == "Runtime.exceptionThrown":
                    out.exceptions.append(ev["params"])
                elif m == "Network.requestWillBeSent":
                    out.requests.append(ev["params"]["request"]["url"])
            return out
        finally:
            pipe.close()
