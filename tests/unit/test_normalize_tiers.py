"""The normalize stage's cheap tiers give exactly what the full parser gives, form by form."""

from __future__ import annotations

import pytest

from engine.phone import parse_phone
from engine.pipeline import Batch
from engine.stages import Normalize

FW = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000.0",
        "13800138000.000",
        "13800138000.",
        "13800138000.01",
        " 13800138000.0",
        "+86 138-0013-8000.0",  # separators and a dot: the parser reads 12 digits, so must we
        "8613800138000.0",
        "1380013800.0",
        "23800138000.0",
        "13800138000".translate(FW),
        "23800138000".translate(FW),
        "1380013800".translate(FW),
        "1380013800".translate(FW) + "0",
        "138" + "00138000".translate(FW),
        "１３８００１３８００．０",
        "１３８００１３８０００ ",
    ],
)
def test_third_tier_agrees_with_the_parser(raw: str) -> None:
    b = Batch([2], [(raw,)], 0)
    Normalize().process(b)
    parsed = parse_phone(raw)
    if parsed.reason is None:
        assert b.numbers == [parsed.national or parsed.e164]
    else:
        assert b.numbers == [] and b.rejects[0].reason == parsed.reason
