"""The columnar batch that flows through the stages, the drop tally, and the synchronous stage runner.

A :class:`Batch` holds parallel lists (row numbers, source rows, then columns each stage fills in).
Stages are small synchronous objects whose ``process(batch)`` works on whole lists with
comprehensions; a stage that refuses items calls :meth:`Batch.drop` once per batch, which records
one :class:`~engine.core.messages.Reject` each and compacts the columns filled so far.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import compress
from operator import attrgetter, itemgetter
from time import perf_counter
from typing import Any, Protocol

from engine.core import speedups
from engine.core.messages import INTL_KEY_OFFSET, MessageBatch, Reject, number_key
from engine.core.provider_template import ProviderParams
from engine.observability.metrics import NO_METRICS, Metrics

__all__ = [
    "INTL_KEY_OFFSET",
    "Batch",
    "Stage",
    "StageRunner",
    "StageStats",
    "Tally",
    "number_key",
    "positions",
]

_COLUMNS = ("nums", "rows", "numbers", "keys", "carriers", "texts", "parts", "params", "variants")
_ROW = attrgetter("row")


def positions(seq: list[Any], value: object) -> list[int]:
    """Indices of ``value`` in ``seq``: the scan runs in C, Python work is per hit only."""
    out: list[int] = []
    index = seq.index
    i = -1
    try:
        while True:
            i = index(value, i + 1)
            out.append(i)
    except ValueError:
        return out


class Batch:
    """Recipients moving through the stages, one list per column, index-aligned."""

    __slots__ = (
        "carriers",
        "keys",
        "numbers",
        "nums",
        "params",
        "parts",
        "phone_col",
        "rejects",
        "rows",
        "texts",
        "variants",
    )

    def __init__(
        self,
        nums: list[int],
        rows: list[Sequence[str]],
        phone_col: int,
        rejects: list[Reject] | None = None,
    ) -> None:
        self.nums = nums
        """Source row numbers."""
        self.rows = rows
        """Source values, aligned with the source's columns."""
        self.phone_col = phone_col
        self.numbers: list[str] = []
        """After ``normalize``: 11-digit Chinese mobiles, or E.164 (``+…``) for other countries."""
        self.keys: list[int] = []
        """Numbers as ints (:func:`number_keys`), filled by the first stage that needs them."""
        self.carriers: list[str] = []
        """After ``route``: carrier codes."""
        self.texts: list[str] = []
        """After ``render``: full message texts."""
        self.parts: list[int] = []
        """After ``count_parts``: billed parts per message."""
        self.params: list[ProviderParams] = []
        """After ``render``, for a template filed with a provider: each row's template and parameter
        values (empty otherwise)."""
        self.variants: list[str] = []
        """After ``render``, for an A/B test: each row's variant name (empty otherwise)."""
        self.rejects: list[Reject] = rejects if rejects is not None else []
        """Rows refused in this batch (by the source or a stage)."""

    def __len__(self) -> int:
        return len(self.nums)

    def number_keys(self) -> list[int]:
        """``keys``, computed once per batch: E.164 numbers as ints (Chinese national numbers as
        themselves, other countries offset past them), for sets and sorted arrays."""
        if len(self.keys) != len(self.numbers):
            numbers = self.numbers
            if "+" in "".join(numbers):  # one C-level scan: international numbers are rare
                self.keys = [int(n) if n[0] != "+" else INTL_KEY_OFFSET + int(n[1:]) for n in numbers]
            else:
                self.keys = list(map(int, numbers))
        return self.keys

    def drop(
        self,
        indices: Sequence[int],
        reasons: Sequence[str] | str,
        details: Sequence[str] | str = "",
        *,
        state: str = "rejected",
    ) -> None:
        """Take the items at ``indices`` (ascending, each once) out of the batch, with a record each.

        ``reasons`` and ``details`` are one value for all, or one per index; ``state`` is
        ``rejected`` (cannot be sent) or ``suppressed`` (deliberately not sent). Call it once per
        stage and batch: indices refer to the batch as it is before the call.
        """
        if not indices:
            return
        nums, rows, pc = self.nums, self.rows, self.phone_col
        one_reason = isinstance(reasons, str)
        one_detail = isinstance(details, str)
        self.rejects.extend(
            Reject(
                nums[i],
                reasons if one_reason else reasons[k],  # type: ignore[arg-type]
                details if one_detail else details[k],  # type: ignore[arg-type]
                rows[i][pc] if pc < len(rows[i]) else "",
                state,
            )
            for k, i in enumerate(indices)
        )
        columns = [col for col in (getattr(self, name) for name in _COLUMNS) if col]
        if len(indices) < 8:
            # A few drops: delete in place from the end, one memmove each.
            for col in columns:
                for i in reversed(indices):
                    del col[i]
            return
        if len(indices) * 16 >= len(nums):
            # Many (a sixteenth or more): one mask, then each column is filtered in C.
            mask = bytearray(b"\x01") * len(nums)
            for i in indices:
                mask[i] = 0
            for col in columns:
                col[:] = compress(col, mask)
            return
        # Some: keep the runs between dropped items, one slice-extend per run.
        starts = [0, *(i + 1 for i in indices)]
        spans = [(a, b) for a, b in zip(starts, [*indices, len(nums)], strict=True) if a < b]
        for col in columns:
            kept: list[Any] = []
            for a, b in spans:
                kept += col[a:b]
            col[:] = kept

    def keep(self, mask: Sequence[bool]) -> None:
        """Keep only the items whose ``mask`` entry is true, silently (no record: another shard
        owns the others). One C-level filter per column filled so far."""
        for name in _COLUMNS:
            col = getattr(self, name)
            if col:
                col[:] = compress(col, mask)

    def messages(self, id_prefix: str) -> dict[str, MessageBatch]:
        """The items left, as one :class:`MessageBatch` per carrier (row order kept within each).

        Grouping is one counting sort of the indices by carrier (:func:`engine.core.speedups.group_order`)
        and one C-level gather per column;
        no per-message object is created.
        """
        nums, numbers, texts, carriers, parts = self.nums, self.numbers, self.texts, self.carriers, self.parts
        if not nums:
            return {}
        params = self.params or None
        variants = self.variants or None
        first = carriers[0]
        if carriers.count(first) == len(carriers):  # one C-level scan: a batch of one carrier
            return {
                first: MessageBatch(
                    first,
                    rows=nums,
                    numbers=numbers,
                    texts=texts,
                    parts=parts,
                    id_prefix=id_prefix,
                    params=params,
                    variants=variants,
                )
            }
        # sort_groups: more carriers than the kernel's table holds (never with the built-in ones)
        order, groups = speedups.group_order(carriers) or speedups.sort_groups(carriers)
        take = itemgetter(*order)
        nums_s, numbers_s, texts_s, parts_s = take(nums), take(numbers), take(texts), take(parts)
        params_s = take(params) if params is not None else None
        variants_s = take(variants) if variants is not None else None
        out: dict[str, MessageBatch] = {}
        start = 0
        for c, n in groups:
            end = start + n
            out[c] = MessageBatch(
                c,
                rows=nums_s[start:end],
                numbers=numbers_s[start:end],
                texts=texts_s[start:end],
                parts=parts_s[start:end],
                id_prefix=id_prefix,
                params=params_s[start:end] if params_s is not None else None,
                variants=variants_s[start:end] if variants_s is not None else None,
            )
            start = end
        return out


class Stage(Protocol):
    """A synchronous batch transform: fills columns, drops what it refuses, never awaits."""

    name: str

    def process(self, batch: Batch) -> None:
        """Transform ``batch`` in place."""


class StageStats:
    """Per-stage counters, bumped once per batch."""

    __slots__ = ("batches", "dropped", "items_in", "items_out")

    def __init__(self) -> None:
        self.batches = 0
        self.items_in = 0
        self.items_out = 0
        self.dropped: Counter[str] = Counter()


class Tally:
    """What happened to the rows of a run: per-stage flow and reject reasons."""

    def __init__(self, stage_names: Iterable[str]) -> None:
        self.stages = {name: StageStats() for name in ("source", *stage_names)}
        self.rejected: Counter[str] = Counter()

    @property
    def rejected_total(self) -> int:
        """All rows rejected so far."""
        return sum(self.rejected.values())


class StageRunner:
    """Applies the configured stages to each batch, in order, and keeps the tally."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        self.tally = Tally(s.name for s in self.stages)
        self.metrics: Metrics = NO_METRICS
        """Where each stage's batch is also counted (the run sets it)."""

    def run(self, batch: Batch, start: int = 0, stop: int | None = None) -> Batch:
        """Run every stage over ``batch``; the rejects it gathered stay on ``batch.rejects``, in row
        order (each stage appends its own, so those of two stages are sorted once at the end:
        rejects.csv, suppressed.csv and the ledger then list rows as the segment has them).

        ``start``/``stop``: only ``stages[start:stop]`` — a batch run in two halves with an await
        between them (provider-made links, :meth:`engine.run.plan.OpenSegment.abatches`); the
        source is counted by the half from 0."""
        stats, metrics = self.tally.stages, self.metrics
        if start == 0:
            src = stats["source"]
            src.batches += 1
            src.items_out += len(batch)
            src.items_in += len(batch) + len(batch.rejects)
            drops = self._count_rejects(src, batch.rejects)
            metrics.stage_batch("source", len(batch) + len(batch.rejects), len(batch), drops)
        makers = 1 if batch.rejects else 0  # (the source's, or the first half's: sorted)
        for stage in self.stages[start:stop] if start or stop is not None else self.stages:
            if not batch.nums:
                break
            st = stats[stage.name]
            seen = len(batch.rejects)
            st.batches += 1
            n_in = len(batch)
            st.items_in += n_in
            started = perf_counter()
            stage.process(batch)
            st.items_out += len(batch)
            drops = self._count_rejects(st, batch.rejects[seen:]) if len(batch.rejects) != seen else None
            metrics.stage_batch(stage.name, n_in, len(batch), drops, perf_counter() - started)
            makers += drops is not None
        if makers > 1:
            batch.rejects.sort(key=_ROW)
        return batch

    def _count_rejects(self, st: StageStats, rejects: Sequence[Reject]) -> Counter[str] | None:
        if rejects:
            c = Counter(r.reason for r in rejects)
            st.dropped.update(c)
            self.tally.rejected.update(c)
            return c
        return None
