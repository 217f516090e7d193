"""A run of a campaign: plan, preview, the send loop, its signals, shards and worker processes.

Wires :mod:`engine.pipeline` to :mod:`engine.sending` over :mod:`engine.state`.
"""
