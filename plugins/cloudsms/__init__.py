"""Shared parts of the cloud SMS gateways (``aliyun``, ``tencent``): HTTP client, grouping, settling."""
