"""The batch pipeline: segment sources, the stages, and the runner that drives them.

Rows in, sendable message batches and reject records out. Never imports :mod:`engine.sending`.
"""
