"""The HTTP service (``pigeon serve``): API, OpenAPI document, keys, sends and campaigns.

Builds on :mod:`engine.run`; nothing below imports it.
"""
