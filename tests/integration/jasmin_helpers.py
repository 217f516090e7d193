"""Jasmin (PyPI, its own virtualenv) as a third-party SMPP server for the interop test: installed once,
started with its SMPP server API, its DLR lookup and thrower, an SMPP client connector to an SMSC
simulator, one user and a default MT route — configured through jCli, as its operators do.

Jasmin 0.11.0, not 0.11.1: 0.11.1 fails on every submit_sm_resp of its connectors
(``AttributeError: 'SubmitSM' object has no attribute 'response'`` in managers/listeners.py, reported
upstream as jookies/jasmin#1236, where 0.11.0 is the workaround given), so it never stores its DLR
map and drops every receipt as ``DLRMapNotFound``. It needs the Redis and RabbitMQ of this machine
(127.0.0.1:6379 and :5672). Everything it writes goes under a temporary ``ROOT_PATH``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

JASMIN = "jasmin==0.11.0"
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PIGEON_JASMIN_VENV", ROOT / ".venv-jasmin"))
"""Where Jasmin is installed (kept between runs; CI makes it afresh)."""


def jasmind() -> Path:
    """The ``jasmind.py`` of a virtualenv holding :data:`JASMIN` (installed on first use)."""
    script = VENV / "bin" / "jasmind.py"
    marker = VENV / f".{JASMIN}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", JASMIN], check=True, timeout=900)
        marker.touch()
    return script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port} after {seconds} s")


class JCli:
    """Jasmin's management console over its telnet port."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.read()

    def read(self, quiet: float = 0.3) -> str:
        """What the console printed until it went quiet for ``quiet`` seconds."""
        out = b""
        self.sock.settimeout(quiet)
        try:
            while chunk := self.sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out.decode("utf-8", errors="replace")

    def run(self, *lines: str) -> str:
        """Type ``lines``; everything printed back."""
        out = ""
        for line in lines:
            self.sock.sendall(line.encode() + b"\r\n")
            out += self.read()
        return out

    def close(self) -> None:
        """Leave the console."""
        self.sock.close()


@contextmanager
def jasmin_in_front_of(smsc_port: int, tmp: Path, *, smsc_user: str, smsc_password: str) -> Iterator[int]:
    """Run Jasmin with its connector bound to the SMSC on ``smsc_port``; yields its SMPP server's port
    (user ``pigeon``, password ``secret``)."""
    script = jasmind()
    for d in ("var/log/jasmin", "etc/jasmin/store"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    jcli, smpp, http = _free_port(), _free_port(), _free_port()
    spec = next(VENV.glob("lib/python*/site-packages/txamqp/specs/standard/amqp0-9-1.stripped.xml"))
    cid = f"pigeon{os.getpid()}"  # (its AMQP queues are named after it: one per test process)
    config = tmp / "jasmin.cfg"
    config.write_text(
        f"[jcli]\nbind = 127.0.0.1\nport = {jcli}\nauthentication = False\n"
        f"[smpp-server]\nbind = 127.0.0.1\nport = {smpp}\n"
        f"[http-api]\nbind = 127.0.0.1\nport = {http}\n"
        f"[amqp-broker]\nhost = 127.0.0.1\nport = 5672\nspec = {spec}\n"
        "[redis-client]\nhost = 127.0.0.1\nport = 6379\n",
        encoding="utf-8",
    )
    log = (tmp / "jasmind.out").open("wb")
    proc = subprocess.Popen(
        [str(script), "-c", str(config), "--enable-dlr-lookup", "--enable-dlr-thrower"],
        cwd=tmp,
        env={**os.environ, "ROOT_PATH": str(tmp)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_port(jcli, 60)
        console = JCli(jcli)
        try:
            console.run(
                "smppccm -a",
                f"cid {cid}",
                "host 127.0.0.1",
                f"port {smsc_port}",
                f"username {smsc_user}",
                f"password {smsc_password}",
                "ok",
                f"smppccm -1 {cid}",
                "group -a",
                "gid g1",
                "ok",
                "user -a",
                "uid u1",
                "gid g1",
                "username pigeon",
                "password secret",
                "ok",
                "mtrouter -a",
                "type defaultroute",
                f"connector smppc({cid})",
                "rate 0",
                "ok",
            )
            deadline = time.monotonic() + 30
            while "BOUND_TRX" not in console.run("smppccm --list"):
                if time.monotonic() > deadline:
                    raise TimeoutError("Jasmin's connector did not bind to the SMSC simulator")
                time.sleep(0.2)
        finally:
            console.close()
        _wait_port(smpp, 30)
        yield smpp
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def jasmin_log(tmp: Path) -> str:
    """Jasmin's own log lines (its messages and DLR logs), for a failing assertion's message."""
    logs = sorted((tmp / "var" / "log" / "jasmin").glob("*.log"))
    return "\n".join(line for p in logs for line in p.read_text(errors="replace").splitlines()[-40:])
