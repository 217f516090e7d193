"""Sending: the gateway contract, lanes, rate limits, retry and failover, the priority reserve.

Also the inbound side of gateways (webhooks) and the plugin test kit. Never imports
:mod:`engine.pipeline`.
"""
