"""``pigeon serve`` in the caller's event loop on a free loopback port, with an engine file and an API key
(the service's tests and load tests start it the same way)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio

from engine.core.clock import Clock
from engine.service.apikeys import KeyRing
from engine.service.core import Service
from engine.service.serve import bind, run

__all__ = ["ENGINE", "SECRET", "serving", "write_engine"]

ENGINE = """\
batch_size = 256
runs_dir = "runs"
[retry]
max_attempts = 3
base = 0.01
cap = 0.05
[store]
path = "pigeon.db"
[carriers.cm]
price_per_part = 0.05
{cm_rate}
[carriers.cu]
price_per_part = 0.04
[carriers.ct]
price_per_part = 0.03
[caps.transactional]
windows = [{{ limit = 50, period = "calendar_day" }}]
[gateways.sim]
plugin = "http"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
in_flight = 4
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = {max_batch}
max_connections = 10
[service]
signature = "小鹅优选"
campaigns_dir = "campaigns"
max_body_bytes = {max_body}
max_messages = 100
drain_timeout = 10
{service_extra}
[service.templates.order_shipped]
text = "您的订单{{order}}已发货，{{carrier|快递}}单号{{tracking}}"
[service.templates.code]
text = "验证码{{code}}，5分钟内有效"
{templates}
[service.webhooks.sim]
secret_env = "PIGEON_TEST_WEBHOOK_SECRET"
"""

SECRET = "s3cret-for-tests"


def write_engine(
    tmp_path: Path,
    port: int,
    *,
    max_batch: int = 100,
    max_body: int = 65536,
    cm_rate: int | None = None,
    service_extra: str = "",
    templates: str = "",
) -> tuple[Path, str]:
    """The engine file and a fresh API key (``service_extra``: more ``[service]`` lines;
    ``templates``: more ``[service.templates.<id>]`` tables)."""
    path = tmp_path / "engine.toml"
    path.write_text(
        ENGINE.format(
            port=port,
            max_batch=max_batch,
            max_body=max_body,
            cm_rate=f"rate_per_second = {cm_rate}" if cm_rate else "",
            service_extra=service_extra,
            templates=templates,
        ),
        encoding="utf-8",
    )
    key = KeyRing(tmp_path / "api-keys.json").create("tests")
    return path, key


@asynccontextmanager
async def serving(
    engine_path: Path, sock: socket.socket | None = None, *, clock: Clock | None = None
) -> AsyncIterator[tuple[str, Service]]:
    """The service's base URL and object while the block runs; stopped (drained) after it.

    ``sock``: a listening socket bound beforehand (so a simulator can be told the service's
    webhook URL before either starts); by default a free loopback port. ``clock``: the
    service's clock (a test's or a load test's own time).
    """
    sock = sock if sock is not None else bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = anyio.Event()
    started = anyio.Event()
    holder: list[Service] = []

    def on_start(svc: Service) -> None:
        holder.append(svc)
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(run, engine_path, sock, stop=stop, handle_signals=False, started=on_start, clock=clock)
        )
        with anyio.fail_after(30):
            await started.wait()
        try:
            yield f"http://127.0.0.1:{port}", holder[0]
        finally:
            stop.set()
