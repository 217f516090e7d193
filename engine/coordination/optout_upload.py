"""Upload a store's opt-outs into the coordinator's shared copy at start: only what it lacks."""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from engine.coordination.contract import Coordinator, SharedOptOutCopy
from engine.core.errors import CoordinatorUnavailable
from engine.state.store.sqlite import SqliteStore

__all__ = ["OptOutUpload", "share_store_optouts", "store_source"]

log = logging.getLogger("pigeon.coordination")


@dataclass(frozen=True, slots=True)
class OptOutUpload:
    """What one start uploaded."""

    source: str
    """The store's name in the coordinator's marks (:func:`store_source`)."""
    rows: int
    """Opt-outs read from the store and sent (0: nothing new since the last upload)."""
    added: int
    """Of those, how many the shared copy did not hold yet."""
    through: int
    """The store's sequence number the shared copy now holds every opt-out up to."""
    seconds: float
    """The whole upload, from opening the store to the mark moved."""
    read_seconds: float = 0.0
    """Of those, reading the keys from the store."""


def store_source(path: Path, store_id: int) -> str:
    """The store's name in the coordinator's marks: host, its path's hash and its random id (a
    store copied to another path or host, or made again at the same path, is another source)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}:{digest}:{store_id:x}"


async def share_store_optouts(coordinator: Coordinator, store_path: Path) -> OptOutUpload | None:
    """Upload the store's opt-outs the shared copy lacks: those with a sequence number above the
    mark the coordinator keeps for this store (all of them the first time), then move the mark.
    With nothing new this is one read of the mark. None when the coordinator keeps no shared copy
    or does not answer (logged: this process's own set still holds its store's opt-outs)."""
    if not isinstance(coordinator, SharedOptOutCopy):
        return None
    started = time.perf_counter()
    store = SqliteStore(store_path)
    try:
        source = store_source(store.path, store.store_id())
        upto = store.optouts_seq()
        try:
            done = await coordinator.optouts_uploaded(source)
            if done >= upto:
                return OptOutUpload(source, 0, 0, done, time.perf_counter() - started)
            # The first time every row: the snapshot a blast loads (one read) beats a scan by seq.
            read = time.perf_counter()
            keys = store.load_optouts().keys if done == 0 else store.optout_keys_between(done, upto)
            read = time.perf_counter() - read
            added = await coordinator.upload_optouts(source, keys, upto)
        except CoordinatorUnavailable as exc:
            log.warning(
                "the store's opt-outs were not uploaded to the shared copy (this process still "
                "refuses them; other workers do not until an upload succeeds): %s",
                exc,
                extra={"event": "coordinator.optouts_not_uploaded"},
            )
            return None
    finally:
        store.close()
    took = time.perf_counter() - started
    log.info(
        "uploaded %d opt-outs of the store to the shared copy (%d new to it) in %.1f s",
        len(keys),
        added,
        took,
        extra={"event": "coordinator.optouts_uploaded", "rows": len(keys), "added": added},
    )
    return OptOutUpload(source, len(keys), added, upto, took, read)
