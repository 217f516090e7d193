"""Pigeon's engine: config, segments in, stages, gateway lanes, store — the core plugins extend.

Plugin authors need :data:`hookimpl` (and :mod:`engine.hookspecs`), the contracts in
:mod:`engine.source` and :mod:`engine.gateway`, and the test kit in :mod:`engine.testing`.
"""

from engine.hookspecs import hookimpl as hookimpl

__all__ = ["hookimpl"]
