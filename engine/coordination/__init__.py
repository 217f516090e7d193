"""Coordination: the plane many workers of one campaign share (lease, rate budgets, recipient claims).

:mod:`~engine.coordination.contract` is the contract a coordinator plugin implements,
:mod:`~engine.coordination.embedded` the default for one host (today's SQLite lease and in-process
limits), :mod:`~engine.coordination.select` picks one by name. ``plugins/store_redis`` is the
shared one. docs/scale-out.md is the guide.
"""
