"""The ``http`` gateway's pooled transport on loopback, on both event loops: reuse, closed peers, errors."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from engine.core.errors import GatewayError, GatewayTimeout, GatewayUnreachable
from engine.core.messages import MessageBatch, Outcome
from engine.sending.gateway import GatewayContext
from loadtests.simulator import SimConfig, SimulatorThread
from plugins.gateway_http.hooks import HttpConfig, HttpGateway

pytestmark = pytest.mark.anyio


def _gateway(url: str, tmp_path: Path, **options: object) -> HttpGateway:
    config = HttpConfig(url=url, **options)  # type: ignore[arg-type]
    return HttpGateway(config, GatewayContext(name="sim", base_dir=tmp_path, run_dir=tmp_path))


def _batch(*rows: int) -> MessageBatch:
    return MessageBatch(
        "cm",
        rows=list(rows),
        numbers=[f"1380013{r:04d}" for r in rows],
        texts=["【小鹅】您好，回T退订"] * len(rows),
        parts=[1] * len(rows),
        id_prefix="t-",
    )


async def test_requests_reuse_one_connection_and_arrive_whole(anyio_backend: object, tmp_path: Path) -> None:
    with SimulatorThread(SimConfig()) as sim:
        gw = _gateway(f"http://127.0.0.1:{sim.port}/send", tmp_path, max_connections=2)
        try:
            for row in range(20):
                results = await gw.send(_batch(row, row + 100))
                assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
        finally:
            await gw.aclose()
    assert sim.stats["connections"] == 1
    assert sorted(m[1] for m in sim.log) == sorted(f"t-{r}" for row in range(20) for r in (row, row + 100))


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    anyio_backend: object, tmp_path: Path
) -> None:
    """The pool asks the stream whether an idle connection became readable (the server's FIN);
    a request sent on such a connection would fail as ambiguous."""
    with SimulatorThread(SimConfig(close_after=1)) as sim:
        gw = _gateway(f"http://127.0.0.1:{sim.port}/send", tmp_path, max_connections=1)
        try:
            for row in range(5):
                deadline = time.monotonic() + 10
                # until the server has closed the previous connection
                while sim.stats["closed_idle"] < row and time.monotonic() < deadline:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                results = await gw.send(_batch(row))
                assert results[0].outcome is Outcome.ACCEPTED
        finally:
            await gw.aclose()
    assert sim.stats["connections"] == 5
    assert len(sim.log) == 5


async def test_the_client_and_the_gateway_share_one_pool(anyio_backend: object, tmp_path: Path) -> None:
    with SimulatorThread(SimConfig()) as sim:
        gw = _gateway(f"http://127.0.0.1:{sim.port}/send", tmp_path, max_connections=1)
        try:
            await gw.send(_batch(1))
            r = await gw._client.get(f"http://127.0.0.1:{sim.port}/stats")
            assert r.status_code == 200
        finally:
            await gw.aclose()
    assert sim.stats["connections"] == 1


async def test_the_client_posts_and_reads_through_the_pool(anyio_backend: object, tmp_path: Path) -> None:
    """The client's own requests go through the gateway's pool (our transport over httpcore's
    public API): a body streamed out, an answer streamed back, the connection kept for the
    gateway's next send."""
    with SimulatorThread(SimConfig()) as sim:
        gw = _gateway(f"http://127.0.0.1:{sim.port}/send", tmp_path, max_connections=1)
        try:
            messages = [
                {"id": f"c-{i}", "to": f"+86138{i:08d}", "text": "您好" * 30, "carrier": "cm", "parts": 1}
                for i in range(500)
            ]
            r = await gw._client.post(f"http://127.0.0.1:{sim.port}/send", json={"messages": messages})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 500
            assert (await gw.send(_batch(1)))[0].outcome is Outcome.ACCEPTED
            missing = await gw._client.get(f"http://127.0.0.1:{sim.port}/nothing-here")
            assert missing.status_code == 404 and missing.json() == {"error": "not found"}
        finally:
            await gw.aclose()
    assert sim.stats["connections"] == 1 and len(sim.log) == 501


async def test_the_clients_failures_are_httpx_errors(anyio_backend: object, tmp_path: Path) -> None:
    """httpcore's exceptions never leave the transport: the client raises httpx's own, by kind."""
    import httpx

    with SimulatorThread(SimConfig()) as sim:
        free = sim.port
    gw = _gateway(f"http://127.0.0.1:{free}/send", tmp_path, connect_timeout=1.0)
    try:
        with pytest.raises(httpx.ConnectError):
            await gw._client.get(f"http://127.0.0.1:{free}/stats")
    finally:
        await gw.aclose()
    server = _HostileServer("stall")
    gw = _gateway(f"http://127.0.0.1:{server.port}/send", tmp_path, timeout=0.2)
    try:
        with pytest.raises(httpx.ReadTimeout):
            await gw._client.post(f"http://127.0.0.1:{server.port}/send", content=b"{}")
    finally:
        await gw.aclose()
        server.close()
    server = _HostileServer("garbage")
    gw = _gateway(f"http://127.0.0.1:{server.port}/send", tmp_path, timeout=1.0)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await gw._client.get(f"http://127.0.0.1:{server.port}/")
    finally:
        await gw.aclose()
        server.close()


def test_the_transport_uses_only_public_httpx_and_httpcore() -> None:
    """No concrete httpx transport is subclassed (its private ``_pool`` was what the old transport
    set), and no ``httpx._…``/``httpcore._…`` name is reached from the plugin's code."""
    import ast

    import httpx

    from plugins.gateway_http import transport

    from_httpx = [c for c in transport.PooledTransport.__mro__ if c.__module__.split(".")[0] == "httpx"]
    assert from_httpx == [httpx.AsyncBaseTransport]
    for path in Path(transport.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert not (node.value.id in ("httpx", "httpcore") and node.attr.startswith("_")), (
                    f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}"
                )
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("httpx._", "httpcore._")), f"{path.name}: {node.module}"


def test_httpx_and_httpcore_are_bounded_where_the_transport_relies_on_them() -> None:
    """The transport relies on httpcore 1.x's backend interface and httpx's transport interface
    over it (the module's docstring says how): both have an upper bound, and the installed
    versions are inside it."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text("utf-8"))
    reqs = {r.name: r for r in map(Requirement, deps["project"]["dependencies"])}
    for name in ("httpx", "httpcore"):
        assert any(s.operator == "<" for s in reqs[name].specifier), name
        assert reqs[name].specifier.contains(version(name)), (name, version(name))


async def test_nothing_listening_is_unreachable_and_a_hang_is_ambiguous(
    anyio_backend: object, tmp_path: Path
) -> None:
    with SimulatorThread(SimConfig()) as sim:
        free = sim.port
    gw = _gateway(f"http://127.0.0.1:{free}/send", tmp_path, connect_timeout=1.0)
    try:
        with pytest.raises(GatewayUnreachable) as refused:  # never left: no retry is spent on it
            await gw.send(_batch(1))
        assert not refused.value.left
        with pytest.raises(GatewayUnreachable):
            await gw.probe()
    finally:
        await gw.aclose()
    with SimulatorThread(SimConfig(p_hang=1.0, hang_s=5)) as sim:
        gw = _gateway(f"http://127.0.0.1:{sim.port}/send", tmp_path, timeout=0.2)
        try:
            with pytest.raises(GatewayTimeout):
                await gw.send(_batch(1))
        finally:
            await gw.aclose()


def test_the_url_must_be_http(tmp_path: Path) -> None:
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"options\.url"):
        _gateway("ftp://127.0.0.1/send", tmp_path)


async def test_idempotency_keys_let_the_provider_drop_a_resend(anyio_backend: object, tmp_path: Path) -> None:
    with SimulatorThread(SimConfig()) as sim:
        gw = _gateway(f"http://127.0.0.1:{sim.port}/send", tmp_path, idempotency_key=True)
        try:
            first = await gw.send(_batch(1, 2, 3))
            again = await gw.send(_batch(1, 2, 3))  # e.g. after a crash, resumed at least once
        finally:
            await gw.aclose()
    assert [r.provider_id for r in again] == [r.provider_id for r in first]
    assert len(sim.log) == 3 and sim.stats["deduplicated"] == 3


def test_idempotency_keys_belong_to_the_default_contract(tmp_path: Path) -> None:
    from engine.core.config import convert_section
    from engine.core.errors import ConfigError

    options = {
        "url": "http://127.0.0.1:9/send",
        "idempotency_key": True,
        "request": {"encoding": "json", "list_key": "m"},
    }
    with pytest.raises(ConfigError, match=r"request\.fields\.id"):
        convert_section(options, HttpConfig, file="engine.toml", path="gateways.p.options")


class _HostileServer:
    """A TCP server on loopback that mistreats every connection the same way (in a thread, so it
    serves either event loop): ``reset`` (RST right after accepting, nothing read), ``half-close``
    (reads the request, shuts its side without an answer), ``stall`` (reads, never answers),
    ``garbage`` (answers bytes that are not HTTP)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                conn.recv(65536)
            if self.mode == "half-close":
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
                self._held.append(conn)
            elif self.mode == "stall":
                self._held.append(conn)
            else:
                with contextlib.suppress(OSError):
                    conn.sendall(b"\x00\xffnot http at all\r\n\r\n")
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self._held:
            c.close()


@pytest.mark.parametrize(
    ("mode", "requests"), [("reset", 400), ("half-close", 40), ("stall", 8), ("garbage", 40)]
)
async def test_a_hostile_server_gets_gateway_errors_never_a_crash(
    anyio_backend: object, tmp_path: Path, mode: str, requests: int
) -> None:
    """Whatever the server does to the connection, ``send`` raises a gateway error and nothing
    else (the engine then records it); a request that went out is never called unreachable."""
    server = _HostileServer(mode)
    gw = _gateway(f"http://127.0.0.1:{server.port}/send", tmp_path, timeout=0.3, max_connections=4)
    seen: Counter[str] = Counter()
    try:
        for row in range(requests):  # (a reset let an AttributeError escape about once in 400)
            try:
                await gw.send(_batch(row))
            except GatewayError as exc:
                seen[type(exc).__name__] += 1
    finally:
        await gw.aclose()
        server.close()
    assert sum(seen.values()) == requests  # every request failed, each as a gateway error
    if mode == "reset":  # reset before or after the request was written: never-left or maybe-taken
        assert set(seen) <= {"GatewayUnreachable", "GatewayTimeout"}
    else:  # the server read the request: it may have taken it
        assert set(seen) == {"GatewayTimeout"}
    assert server.accepted >= 1
