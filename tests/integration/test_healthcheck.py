"""The image's HEALTHCHECK (``python -m engine.cli.healthcheck``): it finds ``pigeon serve`` and its port
from the process table, passes a live service, fails a dead, sick or hanging one, and leaves
containers that run no service alone."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli.healthcheck import check, find_serve, main, serve_url

PY = sys.executable


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (["/usr/local/bin/python", "/usr/local/bin/pigeon", "serve"], "http://127.0.0.1:8080/healthz"),
        (
            [
                "python",
                "/usr/local/bin/pigeon",
                "serve",
                "--config",
                "e.toml",
                "--host",
                "0.0.0.0",
                "--port",
                "9000",
            ],
            "http://127.0.0.1:9000/healthz",
        ),
        (["pigeon", "serve", "--port=9001", "--host=::"], "http://[::1]:9001/healthz"),
        (["pigeon", "serve", "--host", "10.1.2.3"], "http://10.1.2.3:8080/healthz"),
        (["pigeon", "serve", "--host", "::1", "--port", "7"], "http://[::1]:7/healthz"),
        (["python", "-m", "engine", "serve", "--port", "8181"], "http://127.0.0.1:8181/healthz"),
        (["pigeon", "--quiet", "serve"], "http://127.0.0.1:8080/healthz"),
        (["pigeon", "send", "campaign.toml"], None),  # a blast: no service to check
        (["pigeon", "send", "serve"], None),  # a campaign file named 'serve': still a blast
        (["pigeon", "--engine", "e.toml", "serve", "--port", "81"], "http://127.0.0.1:81/healthz"),
        (["pigeon", "--engine", "serve", "send", "c.toml"], None),
        (["pigeon", "--help"], None),
        (["python", "-m", "engine.cli.healthcheck"], None),
        (["/usr/sbin/nginx", "serve"], None),
        ([], None),
    ],
)
def test_the_service_url_comes_from_its_command_line(argv: list[str], url: str | None) -> None:
    assert serve_url(argv) == url


def _fake_proc(tmp_path: Path, table: dict[int, list[str]]) -> Path:
    proc = tmp_path / "proc"
    for pid, argv in table.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (proc / "self").mkdir()  # not a pid
    (proc / "77").mkdir()  # a process whose cmdline cannot be read
    return proc


def test_it_finds_the_service_among_the_processes(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path,
        {
            1: ["/sbin/docker-init", "--", "pigeon", "serve", "--port", "9100"],
            12: ["python", "-m", "engine.run.blast_worker"],
            30: ["python", "-m", "engine.cli.healthcheck"],
        },
    )
    assert find_serve(proc) == "http://127.0.0.1:9100/healthz"
    assert find_serve(proc, pid=12) is None
    blast = _fake_proc(tmp_path / "b", {1: ["python", "/usr/local/bin/pigeon", "send", "c.toml"]})
    assert find_serve(blast) is None
    assert find_serve(tmp_path / "no-proc-here") is None


ANSWERS: dict[str, tuple[int, bytes]] = {
    "/healthz": (200, b'{"status": "ok", "uptime_seconds": 1.0}'),
    "/sick": (503, b'{"status": "draining"}'),
    "/wrong": (200, b"<html>a proxy's page</html>"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/hang":
            time.sleep(1.5)
        status, body = ANSWERS.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_a_200_with_status_ok_is_healthy(server: str) -> None:
    assert check(f"{server}/healthz") == (True, f"{server}/healthz: ok")
    ok, seen = check(f"{server}/sick")
    assert not ok and "503" in seen
    assert not check(f"{server}/wrong")[0]
    assert not check(f"{server}/nothing")[0]
    ok, seen = check(f"http://127.0.0.1:{_free_port()}/healthz")
    assert not ok and "ConnectionRefused" in seen
    started = time.monotonic()
    ok, seen = check(f"{server}/hang", timeout=0.3)
    assert not ok and "timed out" in seen and time.monotonic() - started < 1.4
    assert not check("https://127.0.0.1:1/healthz")[0]


def test_the_command_exits_0_when_healthy_or_nothing_to_check_and_1_otherwise(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--url", f"{server}/healthz"]) == 0
    assert main(["--url", f"{server}/sick"]) == 1
    monkeypatch.setenv("PIGEON_HEALTHCHECK_URL", f"{server}/sick")
    assert main([]) == 1
    monkeypatch.delenv("PIGEON_HEALTHCHECK_URL")
    assert main(["--pid", str(os.getpid())]) == 0  # pytest is no service
    assert "nothing to check" in capsys.readouterr().out


ENGINE = """\
[store]
path = "pigeon.db"
[gateways.sink]
plugin = "blackhole"
"""


def test_it_passes_a_real_pigeon_serve_and_fails_it_once_stopped(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text(ENGINE)
    port = _free_port()
    serve = subprocess.Popen(
        [PY, "-m", "engine", "serve", "--config", "engine.toml", "--host", "0.0.0.0", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    probe = [PY, "-m", "engine.cli.healthcheck", "--pid", str(serve.pid), "--timeout", "1"]
    try:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
            if done.returncode == 0 or serve.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == f"http://127.0.0.1:{port}/healthz: ok"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
        if serve.stderr:
            serve.stderr.close()
    assert serve.returncode == 0
    dead = subprocess.run(
        [PY, "-m", "engine.cli.healthcheck", "--url", f"http://127.0.0.1:{port}/healthz", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert dead.returncode == 1 and "ConnectionRefused" in dead.stdout
