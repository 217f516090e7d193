"""The normalize stage's cheap tiers give exactly what the full parser gives, form by form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from engine.core.phone import parse_phone
from engine.pipeline.runner import Batch
from engine.pipeline.stages import Normalize

pytestmark = pytest.mark.usefixtures("kernels")  # on the compiled kernels and the pure twins

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


def _alone(raw: str) -> tuple[str, str]:
    b = Batch([2], [(raw,)], 0)
    Normalize().process(b)
    return (b.numbers[0], "") if b.numbers else ("", b.rejects[0].reason)


_FORMS = st.one_of(
    st.sampled_from(
        [
            "13800138000",
            "+86 138-0013-8000",
            "008613800138000",
            "8613800138000",
            "13800138000.0",
            "13800138000".translate(FW),
            "",
            "n/a",
            "021-12345678",
            "138\n00138000",
            "+86 138\n0013 8000",
        ]
    ),
    st.text(alphabet=st.sampled_from("0123456789+- .\n１８"), max_size=16),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_FORMS, max_size=30))
def test_a_batch_normalizes_each_value_as_it_would_alone(values: list[str]) -> None:
    b = Batch(list(range(2, 2 + len(values))), [(v,) for v in values], 0)
    Normalize().process(b)
    kept = dict(zip(b.nums, b.numbers, strict=True))
    rejected = {r.row: r.reason for r in b.rejects}
    for row, v in enumerate(values, start=2):
        number, reason = _alone(v)
        assert (kept.get(row, ""), rejected.get(row, "")) == (number, reason), v
