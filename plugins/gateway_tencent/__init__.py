"""The ``tencent`` gateway: Tencent Cloud SMS (API 2021-01-11) with filed templates and callbacks."""
