"""The ``http`` gateway hands a request over (ledger: ``submitting``, caps counted) at the moment its
first byte is written — after the connection is up, never for a connection that does not open.

So ``unknown`` after a crash keeps its meaning ("the gateway may have taken it") even for a kill
between a hand-over and its write: there is no such moment left but the write itself.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from tests.integration.crash_harness import send_with_ledger

pytestmark = pytest.mark.anyio

ROWS = 12


def _engine(tmp_path: Path, port: int, extra: str = "") -> None:
    (tmp_path / "engine.toml").write_text(
        f"""[store]
path = "pigeon.db"
[caps.marketing]
windows = [{{ limit = 3, period = "calendar_day" }}]
[gateways.sim]
plugin = "http"
in_flight = 1
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = 4
timeout = 2
{extra}
""",
        encoding="utf-8",
    )


class _Witness:
    """An HTTP server that, when a request's bytes arrive, looks in the store (its own connection,
    as a crash would leave it) for the state of every row the request holds, then accepts them."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[set[str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(
                    next(
                        h.split(b":")[1]
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                body, buf = rest[:length], rest[length:]
                ids = [m["id"] for m in json.loads(body)["messages"]]
                ledger = Ledger(self.store)
                try:
                    self.seen.append({ledger.message(i).state.value for i in ids})  # type: ignore[union-attr]
                finally:
                    ledger.close()
                out = json.dumps(
                    {"results": [{"status": "accepted", "provider_id": i} for i in ids]}
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % len(out)
                    + out
                )

    def close(self) -> None:
        self.sock.close()


async def test_each_request_is_submitting_in_the_store_when_its_first_byte_arrives(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(ROWS)))
    campaign = campaign_file("seg.csv")
    witness = _Witness(tmp_path / "pigeon.db")
    try:
        _engine(tmp_path, witness.port)
        summary = await send_with_ledger(campaign, tmp_path / "runs")
    finally:
        witness.close()
    assert summary.states == {"sent": ROWS}
    assert len(witness.seen) == ROWS // 4
    assert all(states == {"submitting"} for states in witness.seen)  # durable before the bytes left


async def test_a_connection_that_never_opens_hands_nothing_over(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(ROWS)))
    campaign = campaign_file("seg.csv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here
    _engine(tmp_path, closed, extra="[outage]\nlimit = 1")
    summary = await send_with_ledger(campaign, tmp_path / "runs")
    assert summary.halted == "gateway_unreachable" and summary.states == {"pending": ROWS}
    view = Ledger(tmp_path / "pigeon.db")
    try:  # no hand-over was ever recorded: no attempt, no cap count, nothing to reconcile
        assert view.counts("t").states == {}
        assert not view.rows_in("t", LedgerState.SUBMITTING).size
    finally:
        view.close()
    db = sqlite3.connect(tmp_path / "pigeon.db")
    try:
        assert db.execute("SELECT count(*) FROM sends").fetchone() == (0,)
    finally:
        db.close()
