"""Pigeon's engine: config, segments in, stages, gateway lanes, store — the core plugins extend.

Plugin authors need :data:`hookimpl` (and :mod:`engine.hookspecs`), the contracts in
:mod:`engine.source` and :mod:`engine.gateway`, and the test kit in :mod:`engine.testing`.
"""

import logging

from engine.hookspecs import hookimpl as hookimpl

# A library's logs go where the program sends them (``pigeon serve`` and blast workers: JSON lines);
# the command line tells the operator through its own lines instead of Python's last-resort handler.
logging.getLogger("pigeon").addHandler(logging.NullHandler())

__all__ = ["hookimpl"]
