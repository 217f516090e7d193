"""A batch split into provider calls, the calls made concurrently, their answers put back in order.

A cloud SMS request carries one template and either one parameter set for many numbers (Aliyun
SendSms, Tencent SendSms) or one per number (Aliyun SendBatchSms), so a gateway's batch becomes a
few calls. :func:`run_calls` makes them at once and turns each call's fate into per-message
results. When every call failed the same way the failure is raised as it is (the engine's rules
for a whole request apply: an unreachable provider costs no retry, a timeout ends ``unknown``);
when only some did, the failed calls' messages get ``retry`` (unreachable, unavailable) or
``unknown`` (timeout, unreadable answer) and the others keep their outcomes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from pigeon import GatewayAuthError, GatewayError, GatewayUnavailable, MessageBatch, Outcome, SubmitResult

__all__ = ["Call", "Probe", "national", "run_calls", "sign_name"]


@dataclass(slots=True)
class Call:
    """One provider request: the batch positions it carries and the key it is known by."""

    indices: list[int]
    key: str = ""
    """What the request tells the provider to echo (Aliyun ``OutId``, Tencent ``SessionContext``)."""
    results: dict[int, SubmitResult] = field(default_factory=dict)


def national(to: str) -> str:
    """A number as these providers echo it: Chinese numbers without ``+86``, others without ``+``."""
    if to.startswith("+86"):
        return to[3:]
    return to.lstrip("+")


def sign_name(text: str) -> str:
    """The signature Pigeon rendered at the head of ``text`` (``【小鹅优选】…`` → ``小鹅优选``)."""
    if text.startswith("【"):
        end = text.find("】")
        if end > 1:
            return text[1:end]
    return ""


class Probe:
    """Whether a gateway has had one call go through yet (calls wait for the first answer)."""

    def __init__(self) -> None:
        self.proven = False
        self.lock = anyio.Lock()
        self.refused: GatewayAuthError | None = None
        """The auth error the first call met: the sends that waited for it raise it too."""


async def run_calls(
    batch: MessageBatch,
    calls: Sequence[Call],
    make: Callable[[Call], Awaitable[None]],
    *,
    on_ambiguous: Callable[[Call], None],
    probe: Probe | None = None,
) -> tuple[list[SubmitResult], GatewayAuthError | None]:
    """Make every call at once; the results in batch order, and an auth error to raise next time
    (when it hit only some calls: their messages are held back as ``retry``)."""
    failed: list[tuple[Call, GatewayError]] = []

    async def one(call: Call) -> None:
        try:
            await make(call)
        except GatewayError as exc:
            failed.append((call, exc))

    rest = list(calls)
    if probe is not None and not probe.proven and rest:
        # Until one call has gone through, calls go one at a time: a refused signature, template
        # or key costs one request, not a batch's worth (nor the other lanes' in flight).
        async with probe.lock:
            if probe.refused is not None:
                raise probe.refused
            if not probe.proven:
                first = rest.pop(0)
                await one(first)
                if failed and isinstance(failed[-1][1], GatewayAuthError):
                    probe.refused = failed[-1][1]
                    raise probe.refused
                if not failed:
                    probe.proven = True
    if len(rest) == 1:
        await one(rest[0])
    elif rest:
        async with anyio.create_task_group() as tg:
            for call in rest:
                tg.start_soon(one, call)
    for call, exc in failed:
        if exc.ambiguous:
            on_ambiguous(call)
    if failed and len(failed) == len(calls) and len({type(e) for _, e in failed}) == 1:
        raise failed[0][1]
    auth: GatewayAuthError | None = None
    for call, exc in failed:
        if isinstance(exc, GatewayAuthError):
            auth = auth or exc
            result = SubmitResult(Outcome.RETRY, code="auth")
        elif exc.ambiguous:
            result = SubmitResult(Outcome.UNKNOWN, code=f"ambiguous:{type(exc).__name__}")
        elif isinstance(exc, GatewayUnavailable):
            result = SubmitResult(Outcome.RETRY, code=type(exc).__name__)
        else:
            result = SubmitResult(Outcome.RETRY, code=type(exc).__name__)
        call.results = dict.fromkeys(call.indices, result)
    out: list[SubmitResult | None] = [None] * len(batch)
    for call in calls:
        for i, r in call.results.items():
            out[i] = r
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:  # a call that answered nothing about some of its messages
        for i in missing:
            out[i] = SubmitResult(Outcome.UNKNOWN, code="ambiguous:missing_result")
    return [r for r in out if r is not None], auth
