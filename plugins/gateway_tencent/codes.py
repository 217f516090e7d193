"""Tencent Cloud SMS answer codes → what the gateway does (reference protocols §4.2 and §4.5).

Built on :data:`plugins.gateway_http.shapes.DEFAULT_CODES`, with a template-sending gateway's
changes: signature, template, credential and account errors stop the gateway (``account`` →
:class:`~pigeon.GatewayAuthError`); ``LimitExceeded.*`` slows the lane down, except the
per-number hourly and daily caps (they cannot be waited out in a run: failed with the code) and
``PhoneNumberCountLimit`` (over 200 numbers: never sent so by this gateway).
"""

from __future__ import annotations

from typing import Final

from plugins.gateway_http.shapes import DEFAULT_CODES, CodeTable, OutcomeName

__all__ = ["CODES", "classify"]

_OVERRIDES: Final[dict[str, OutcomeName]] = {
    "LimitExceeded.*": "throttled",
    "LimitExceeded.PhoneNumber*": "throttled",
    "LimitExceeded.PhoneNumberOneHourLimit": "capped",
    "LimitExceeded.PhoneNumberDailyLimit": "capped",
    "LimitExceeded.PhoneNumberSameContentDailyLimit": "capped",
    "FailedOperation.SignatureIncorrectOrUnapproved": "account",
    "FailedOperation.TemplateIncorrectOrUnapproved": "account",
    "FailedOperation.TemplateParamSetNotMatchApprovedTemplate": "account",
    "FailedOperation.TemplateUnapprovedOrNotExist": "account",
    "FailedOperation.MissingSignature*": "account",
    "FailedOperation.MissingTemplate*": "account",
    "InvalidParameterValue.SdkAppIdNotExist": "account",
    "AuthFailure*": "account",
}

CODES: Final = CodeTable({**DEFAULT_CODES, **_OVERRIDES}, "rejected")


def classify(code: str) -> tuple[OutcomeName, float]:
    """(outcome class, seconds to wait) of a ``Code``."""
    outcome = CODES[code]
    if outcome == "throttled":
        return outcome, 30.0 if code == "LimitExceeded.PhoneNumberThirtySecondLimit" else 1.0
    return outcome, 0.0
