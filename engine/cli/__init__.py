"""The ``pigeon`` command line: one grammar, its commands, completion and schema export.

The top layer: nothing in :mod:`engine` imports it.
"""
