"""Dysmsapi answer codes → what the gateway does (reference protocols §4.1 and §4.5).

The classes are those of :mod:`plugins.gateway_http.shapes` (its :data:`DEFAULT_CODES` table is the
base) with the changes a template-sending gateway needs: signature, template and credential
errors stop the gateway (``account`` → :class:`~pigeon.GatewayAuthError`, the engine stops
the campaign with the reason, nobody is marked failed), ``isp.SYSTEM_ERROR`` is retried,
``isv.BUSINESS_LIMIT_CONTROL`` slows the lane down unless it is the day's or hour's cap.
"""

from __future__ import annotations

from typing import Final

from plugins.gateway_http.shapes import DEFAULT_CODES, CodeTable, OutcomeName

__all__ = ["CODES", "PER_MESSAGE", "classify"]

_OVERRIDES: Final[dict[str, OutcomeName]] = {
    "isp.SYSTEM_ERROR": "retry",
    "isv.BUSINESS_LIMIT_CONTROL": "throttled",
    "Throttling*": "throttled",
    "isv.SMS_SIGN_ILLEGAL": "account",
    "isv.SMS_SIGNATURE_ILLEGAL": "account",
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": "account",
    "isv.SIGN_STATE_ILLEGAL": "account",
    "isv.SIGN_NAME_ILLEGAL": "account",
    "isv.SMS_TEMPLATE_ILLEGAL": "account",
    "isv.TEMPLATE_MISSING_PARAMETERS": "account",
    "isv.TEMPLATE_STATE_ILLEGAL": "account",
    "InvalidAccessKeyId*": "account",
    "SignatureDoesNotMatch": "account",
    "IncompleteSignature": "account",
    "SignatureNonceUsed": "retry",
    "InvalidTimeStamp*": "account",
    "Forbidden*": "account",
}

CODES: Final = CodeTable({**DEFAULT_CODES, **_OVERRIDES}, "rejected")
"""Every code the gateway knows; an unknown one is a (non-permanent) rejection with that code."""

PER_MESSAGE: Final = frozenset(
    {
        "isv.MOBILE_NUMBER_ILLEGAL",
        "isv.BLACK_KEY_CONTROL_LIMIT",
        "isv.PARAM_LENGTH_LIMIT",
        "isv.PARAM_NOT_SUPPORT_URL",
        "isv.TEMPLATE_PARAMS_ILLEGAL",
        "isv.SMS_CONTENT_ILLEGAL",
        "isv.DAY_LIMIT_CONTROL",
        "isv.MONTH_LIMIT_CONTROL",
        "isv.BUSINESS_LIMIT_CONTROL",
        "FILTER",
    }
)
"""Codes about one number or one parameter set: a request of several messages that gets one is
split in halves and sent again, so the other messages are not refused with it."""


def classify(code: str, message: str = "") -> tuple[OutcomeName, float]:
    """(outcome class, seconds to wait) of an answer's ``Code`` and ``Message``."""
    outcome = CODES[code]
    if code == "isv.BUSINESS_LIMIT_CONTROL":
        # "触发分钟级流控Permits:1" slows down; the hour's and the day's caps cannot be waited out.
        if "天级" in message or "小时级" in message:
            return "capped", 0.0
        return "throttled", 60.0 if "分钟级" in message else 1.0
    if outcome == "throttled":
        return outcome, 1.0
    return outcome, 0.0
