"""Phone normalization: every common way merchants write a number, and every refusal's reason."""

from __future__ import annotations

import pytest

from engine.core.messages import RejectReason
from engine.core.phone import mask, parse_phone


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        " 13800138000 ",
        "+8613800138000",
        "+86 138-0013-8000",
        "+86 138 0013 8000",
        "(+86) 138.0013.8000",
        "+86(138)00138000",
        "008613800138000",
        "0086 138 0013 8000",
        "8613800138000",
        "86-138-0013-8000",
        "１３８００１３８０００",
        "＋８６ １３８ ００１３ ８０００",
        "13800138000.0",
        "8613800138000.0",
        "138 0013 8000",
        "138-0013-8000",
        "138\u30000013\u30008000",
        "'13800138000",
        "+86\u00a0138\u00a000138000",
    ],
)
def test_chinese_mobile_forms_normalize_to_one_number(raw: str) -> None:
    p = parse_phone(raw)
    assert p.reason is None, p
    assert p.national == "13800138000"
    assert p.e164 == "+8613800138000"


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+44 7911 123456", "+447911123456"),
        ("0044 7911 123456", "+447911123456"),
        ("+1 202-555-0143", "+12025550143"),
        ("+852 5123 4567", "+85251234567"),
        ("+65 8123 4567", "+6581234567"),
    ],
)
def test_international_numbers_go_through_phonenumbers(raw: str, e164: str) -> None:
    p = parse_phone(raw)
    assert p.reason is None, p
    assert p.national == ""
    assert p.e164 == e164


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", RejectReason.MISSING_PHONE),
        ("   ", RejectReason.MISSING_PHONE),
        ("1380013800", RejectReason.INVALID_NUMBER),  # 10 digits
        ("138001380001", RejectReason.INVALID_NUMBER),  # 12 digits
        ("1380013800.0", RejectReason.INVALID_NUMBER),  # Excel float of a 10-digit value
        ("1.38001E+10", RejectReason.INVALID_NUMBER),  # Excel rounded it
        ("1.38E10", RejectReason.INVALID_NUMBER),
        ("138OO138000", RejectReason.INVALID_NUMBER),  # letters O
        ("n/a", RejectReason.INVALID_NUMBER),
        ("021-12345678", RejectReason.NOT_MOBILE),
        ("010 8888 6666", RejectReason.NOT_MOBILE),
        ("1440012345678", RejectReason.IOT_NUMBER),
        ("1410012345678", RejectReason.IOT_NUMBER),
        ("+44 20 7946 0958", RejectReason.NOT_MOBILE),  # London landline
        ("+999 1234", RejectReason.INVALID_NUMBER),
        ("+44 12", RejectReason.INVALID_NUMBER),
    ],
)
def test_refusals_carry_a_reason_and_detail(raw: str, reason: RejectReason) -> None:
    p = parse_phone(raw)
    assert p.reason == reason
    assert p.detail
    assert p.e164 == ""


def test_plus86_via_international_path_is_still_checked_as_chinese() -> None:
    assert parse_phone("+86 10 8888 6666").reason == RejectReason.NOT_MOBILE or (
        parse_phone("+86 10 8888 6666").reason == RejectReason.INVALID_NUMBER
    )
    assert parse_phone("+86 1380013800").reason == RejectReason.INVALID_NUMBER


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("13800138000", "138****8000"),
        ("+8613800138000", "138****8000"),
        # Every way a Chinese mobile is written masks the same (rejects.csv shows values as written).
        ("+86 138-0013-8000", "138****8000"),
        ("8613800138000", "138****8000"),
        ("008613800138000", "138****8000"),
        ("0086 138 0013 8000", "138****8000"),
        ("１３８００１３８０００", "138****8000"),
        ("＋８６ １３８ ００１３ ８０００", "138****8000"),
        ("13800138000.0", "138****8000"),
        ("138 0013 8000", "138****8000"),
        ("(+86) 138.0013.8000", "138****8000"),
        ("'13800138000", "138****8000"),
        ("  13800138000 ", "138****8000"),
        # International: +, two digits, the last four.
        ("+447911123456", "+44******3456"),
        ("+44 7911 123456", "+44******3456"),
        ("0044 7911 123456", "+44******3456"),
        ("+1 202-555-0143", "+12*****0143"),
        ("+6581234567", "+65****4567"),
        ("+6834001", "+*******"),  # too short to show anything and hide four
        # Other numbers: the same rule on their digits.
        ("021-12345678", "021****5678"),
        ("1440012345678", "144******5678"),
        ("1380013800", "**********"),  # 10 digits: showing 7 would hide only 3
        ("+86 10 8888 6666", "**********"),
        ("12345", "*****"),
        # Not a number: one star per character, nothing of it shown.
        ("n/a", "***"),
        ("张三", "**"),
        ("138OO138000", "***********"),
        ("1.38E+10", "********"),
        ("+86", "***"),
        ("+", "*"),
        ("", ""),
    ],
)
def test_mask_hides_the_middle_the_same_way_for_every_form(number: str, masked: str) -> None:
    assert mask(number) == masked
