"""The ``file`` gateway and its hook implementation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import msgspec

from pigeon import GatewayContext, GatewayRegistry, MessageBatch, Outcome, SubmitResult, hookimpl

__all__ = ["FileConfig", "FileGateway"]


class FileConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "file"`` options."""

    path: str = "sent.jsonl"
    """Output file; a relative path is inside the run's directory."""
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000


class _Line(msgspec.Struct, gc=False, array_like=False):
    id: str
    to: str
    text: str
    carrier: str
    parts: int


class FileGateway:
    """Appends ``{"id", "to", "text", "carrier", "parts"}`` per message to a JSON Lines file.

    Each batch is encoded in one call and written to the file unbuffered before it is acknowledged;
    the provider id of a message is ``<file name>:<line number>``.
    """

    idempotent = False

    def __init__(self, config: FileConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.max_batch = config.max_batch
        path = Path(config.path).expanduser()
        self.path = path if path.is_absolute() else ctx.run_dir / path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a batch is in the file (the OS's) when it is acknowledged, so a process killed
        # right after (kill -9) leaves what its ledger says was sent.
        self._fh = self.path.open("ab", buffering=0)
        self._encoder = msgspec.json.Encoder()
        self._lines = 0

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Write the batch and accept every message."""
        c = batch.carrier
        lines = [
            _Line(i, to, text, c, parts)
            for i, to, text, parts in zip(batch.ids, batch.tos, batch.texts, batch.parts, strict=True)
        ]
        data = memoryview(self._encoder.encode_lines(lines))
        while data:  # (a raw write may take part of it)
            n = self._fh.write(data)
            if not n:
                raise OSError(f"could not write to {self.path}")
            data = data[n:]
        first = self._lines
        self._lines += len(batch)
        stem = self.path.name
        return [
            SubmitResult(Outcome.ACCEPTED, provider_id=f"{stem}:{first + k + 1}") for k in range(len(batch))
        ]

    async def aclose(self) -> None:
        """Flush and close the file."""
        self._fh.close()


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``file``."""
    gateways.add("file", FileGateway, FileConfig, description="writes messages as JSON Lines")
