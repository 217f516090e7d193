"""A test kit for plugin authors: a fake clock, a recording gateway, sample batches, a contract check.

::

    from engine.sending.testing import check_gateway, sample_batch, registered

    async def test_my_gateway():
        gw = MyGateway(MyConfig(url=...), gateway_context())
        await check_gateway(gw)            # answers one result per message, valid outcomes, closes

    def test_registration():
        with registered(my_plugin_module) as host:
            assert "mine" in host.gateways
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from engine.core.clock import FakeClock
from engine.core.messages import ACCEPTED, MessageBatch, Outcome, SubmitResult
from engine.core.plugin_host import PluginHost
from engine.sending.gateway import Gateway, GatewayContext

__all__ = [
    "FakeClock",
    "RecordingGateway",
    "check_gateway",
    "gateway_context",
    "registered",
    "sample_batch",
]


def sample_batch(n: int = 3, carrier: str = "cm", *, parts: int = 1, prefix: str = "test-") -> MessageBatch:
    """``n`` messages to distinct Chinese mobiles of one carrier (ids ``test-1``…)."""
    return MessageBatch(
        carrier,
        rows=list(range(1, n + 1)),
        numbers=[f"1380013{i:04d}" for i in range(n)],
        texts=[f"【测试】第{i}条消息 拒收请回复R" for i in range(n)],
        parts=[parts] * n,
        id_prefix=prefix,
    )


def gateway_context(name: str = "test", run_dir: Path | None = None) -> GatewayContext:
    """A :class:`GatewayContext` for building a gateway in a test."""
    d = run_dir or Path(".")
    return GatewayContext(name=name, base_dir=d, run_dir=d)


class RecordingGateway:
    """An in-memory gateway: keeps every batch it is sent and answers from ``answer`` (default: accept)."""

    idempotent = True

    def __init__(
        self,
        name: str = "recording",
        max_batch: int = 100,
        answer: Callable[[MessageBatch], Sequence[SubmitResult]] | None = None,
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self.batches: list[MessageBatch] = []
        self.closed = False
        self._answer = answer

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Remember the batch; answer."""
        self.batches.append(batch)
        return self._answer(batch) if self._answer else [ACCEPTED] * len(batch)

    async def aclose(self) -> None:
        """Mark closed."""
        self.closed = True

    @property
    def sent_ids(self) -> list[str]:
        """Every message id sent, in order."""
        return [i for b in self.batches for i in b.ids]


async def check_gateway(gateway: Gateway, batch: MessageBatch | None = None) -> Sequence[SubmitResult]:
    """Send one batch through ``gateway`` and check the contract every gateway must keep.

    One :class:`SubmitResult` per message, each a known outcome (``rejected`` with a code,
    ``retry``/``throttled`` with a non-negative ``retry_after``), a positive ``max_batch``, and an
    ``aclose`` that works. Returns the results for further checks.
    """
    assert isinstance(gateway.name, str), "a gateway's name is a str"
    assert gateway.name, "a gateway needs a name"
    assert isinstance(gateway.max_batch, int), "max_batch must be an int"
    assert gateway.max_batch > 0, "max_batch must be positive"
    assert isinstance(gateway.idempotent, bool), "idempotent must be a bool"
    b = batch or sample_batch(min(3, gateway.max_batch))
    assert len(b) <= gateway.max_batch
    results = await gateway.send(b)
    assert len(results) == len(b), f"{len(results)} results for {len(b)} messages"
    for r in results:
        assert isinstance(r, SubmitResult), f"results must be SubmitResult, not {type(r).__name__}"
        assert r.outcome in set(Outcome)
        if r.outcome is Outcome.REJECTED:
            assert r.code, "a rejected message needs the provider's code"
        assert r.retry_after >= 0
    await gateway.aclose()
    return results


@contextmanager
def registered(*plugins: object) -> Iterator[PluginHost]:
    """A plugin host with only ``plugins`` (no entry points), for registration tests."""
    yield PluginHost(load_entrypoints=False, plugins=plugins)
