"""Billing arithmetic at every boundary: GSM-7 160/153, UCS-2 70/67, emoji and extension characters."""

from __future__ import annotations

import pytest

from engine.core.sms import count_parts, encoding_of, split, units


@pytest.mark.parametrize(
    ("n", "parts"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_boundaries(n: int, parts: int) -> None:
    text = "a" * n
    assert encoding_of(text) == "gsm7"
    assert count_parts(text) == parts
    assert len(split(text)) == parts


@pytest.mark.parametrize(
    ("n", "parts"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(n: int, parts: int) -> None:
    text = "券" * n
    assert encoding_of(text) == "ucs2"
    assert count_parts(text) == parts
    assert len(split(text)) == parts


def test_signature_brackets_make_a_message_ucs2() -> None:
    assert encoding_of("【Shop】Hello") == "ucs2"
    assert count_parts("【Shop】" + "a" * 64) == 1  # 70 UTF-16 units
    assert count_parts("【Shop】" + "a" * 65) == 2


@pytest.mark.parametrize(
    ("text", "expected_units", "parts"),
    [
        ("中" * 68 + "😀", 70, 1),  # emoji counts two: exactly 70
        ("中" * 69 + "😀", 71, 2),  # 71 units: split
        ("中" * 66 + "😀" + "中" * 66, 134, 3),  # 134 units, but the emoji straddles 67: three parts
        ("中" * 65 + "😀" + "中" * 67, 134, 2),  # the pair ends exactly at unit 67: two parts
        ("𠮷" * 35, 70, 1),  # CJK Ext-B counts two as well
    ],
)
def test_astral_characters_count_two_and_are_never_cut(text: str, expected_units: int, parts: int) -> None:
    assert units(text) == expected_units
    assert count_parts(text) == parts
    pieces = split(text)
    assert len(pieces) == parts
    assert "".join(pieces) == text
    assert all(units(p, "ucs2") <= 67 for p in pieces) or parts == 1


@pytest.mark.parametrize(
    ("text", "expected_units", "parts"),
    [
        ("a" * 158 + "€", 160, 1),
        ("a" * 159 + "€", 161, 2),
        ("{}" * 80, 320, 3),
        ("a" * 152 + "^" + "a" * 152, 306, 3),  # the escape would straddle 153: three parts
        ("a" * 151 + "^" + "a" * 153, 306, 2),
        ("\\[~]|\f", 12, 1),
    ],
)
def test_gsm7_extension_characters_count_two_and_are_never_cut(
    text: str, expected_units: int, parts: int
) -> None:
    assert encoding_of(text) == "gsm7"
    assert units(text) == expected_units
    assert count_parts(text) == parts
    pieces = split(text)
    assert "".join(pieces) == text
    assert len(pieces) == parts
    if parts > 1:
        assert all(units(p, "gsm7") <= 153 for p in pieces)


def test_one_non_gsm_character_switches_the_whole_message_to_ucs2() -> None:
    assert encoding_of("a" * 100) == "gsm7"
    assert encoding_of("a" * 100 + "ç") == "ucs2"  # lower-case ç is not in GSM-7 (only Ç)
    assert encoding_of("Ç") == "gsm7"
    assert count_parts("a" * 100 + "ç") == 2
