"""Pigeon's engine: the internals behind the ``pigeon`` command, the service and the plugin API.

The packages are layers; a module imports only from its own layer and the ones below it
(``tests/unit/test_layers.py`` enforces it, ``docs/architecture.md`` draws it)::

    cli ─▶ service ─▶ run ─▶ pipeline | sending ─▶ observability ─▶ state ─▶ core

Plugin authors do not import this package: the supported surface is :mod:`pigeon` (hook markers,
``Gateway``, message and outcome types, the test kit). Everything here may move between versions.
"""

import logging

# A library's logs go where the program sends them (``pigeon serve`` and blast workers: JSON lines);
# the command line tells the operator through its own lines instead of Python's last-resort handler.
logging.getLogger("pigeon").addHandler(logging.NullHandler())
