"""Hook implementations of the built-in file sources (registered through the ``pigeon`` entry points)."""

from __future__ import annotations

from pigeon import SourceRegistry, hookimpl
from plugins.source_file.config import CsvConfig, JsonlConfig
from plugins.source_file.csv_source import CsvSource
from plugins.source_file.jsonl_source import JsonlSource


@hookimpl
def register_sources(sources: SourceRegistry) -> None:
    """Register ``csv`` and ``jsonl``."""
    sources.add("csv", CsvSource, CsvConfig, description="CSV with a header row (gzip ok)")
    sources.add("jsonl", JsonlSource, JsonlConfig, description="JSON Lines (gzip ok)")
