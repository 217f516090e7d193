"""State that outlives a run: the store, the campaign ledger and its leases, opt-outs and caps.

Imports only :mod:`engine.core`.
"""
