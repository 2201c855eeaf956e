"""The Babel filters, in both locales and in the merchant's time zone."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import formatting
from engine.formatting import FormatError


@pytest.mark.parametrize("locale", ["id", "en"])
def test_rupiah_is_the_same_in_every_locale(locale):
    assert formatting.rupiah(1500000, locale) == "Rp1.500.000"
    assert formatting.rupiah(0, locale) == "Rp0"
    assert formatting.rupiah(-25000, locale) == "-Rp25.000"
    assert formatting.rupiah(1499.5, locale) == "Rp1.500"  # whole Rupiah, half up


@pytest.mark.parametrize(("locale", "expected"), [("id", "1.500.000"), ("en", "1,500,000")])
def test_number(locale, expected):
    assert formatting.number(1500000, locale) == expected


def test_number_keeps_decimals_in_the_locale_style():
    assert formatting.number(1234.5, "id") == "1.234,5"
    assert formatting.number(1234.5, "en") == "1,234.5"


@pytest.mark.parametrize("locale", ["id", "en"])
def test_percent(locale):
    assert formatting.percent(-0.4, locale) == "-40%"
    assert formatting.percent(0.125, locale) == "12%"
    assert formatting.percent(1.5, locale) == "150%"


def test_date_in_both_locales():
    day = datetime(2026, 12, 5, 3, 0)  # naive UTC
    assert formatting.format_date(day, "id", "Asia/Jakarta") == "5 Desember 2026"
    assert formatting.format_date(day, "en", "Asia/Jakarta") == "December 5, 2026"
    assert formatting.format_date(date(2026, 12, 5), "id") == "5 Desember 2026"


def test_date_is_the_merchants_own_calendar_day():
    # 20:30 UTC on 4 December is already 5 December in Jayapura (UTC+9), not in Jakarta (UTC+7).
    late = datetime(2026, 12, 4, 20, 30)
    assert formatting.format_date(late, "id", "Asia/Jakarta") == "5 Desember 2026"
    assert (
        formatting.format_date(datetime(2026, 12, 4, 16, 30), "id", "Asia/Jakarta")
        == "4 Desember 2026"
    )
    assert (
        formatting.format_date(datetime(2026, 12, 4, 16, 30), "id", "Asia/Jayapura")
        == "5 Desember 2026"
    )


def test_datetime_in_both_locales_and_zones():
    moment = datetime(2026, 12, 5, 2, 0)  # naive UTC
    assert formatting.format_datetime(moment, "id", "Asia/Jakarta") == "5 Desember 2026, 09.00 WIB"
    assert (
        formatting.format_datetime(moment, "id", "Asia/Makassar") == "5 Desember 2026, 10.00 WITA"
    )
    assert (
        formatting.format_datetime(moment, "en", "Asia/Jayapura")
        == "December 5, 2026, 11:00\u202fAM WIT"
    )


def test_date_takes_a_babel_format():
    assert (
        formatting.format_date(datetime(2026, 12, 5, 3), "id", "Asia/Jakarta", "d MMM") == "5 Des"
    )


@pytest.mark.parametrize("value", [None, "12", True, [1]])
def test_non_numbers_are_refused_with_a_reason(value):
    with pytest.raises(FormatError, match="expects a number"):
        formatting.rupiah(value)
    with pytest.raises(FormatError, match="expects a number"):
        formatting.percent(value, "id")


def test_none_date_says_how_to_guard_it():
    with pytest.raises(FormatError, match="is not none"):
        formatting.format_date(None, "id", "Asia/Jakarta")


def test_unknown_time_zone():
    with pytest.raises(FormatError, match="time zone"):
        formatting.format_date(datetime(2026, 1, 1), "id", "Mars/Olympus")


@settings(max_examples=300, deadline=None)
@given(
    value=st.integers(-(10**20), 10**20)
    | st.decimals(-(10**15), 10**15, allow_nan=False, places=3)
    | st.floats(-1e12, 1e12, allow_nan=False),
    locale=st.sampled_from(["id", "en"]),
)
def test_whole_numbers_are_grouped_exactly_as_babel_does(value, locale):
    """The fast path for whole numbers gives Babel's own output, digit for digit."""
    from decimal import ROUND_HALF_UP, Decimal

    from babel.numbers import format_decimal

    assert formatting.number(value, locale) == format_decimal(value, locale=locale)
    amount = Decimal(str(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    text = format_decimal(abs(amount), format="#,##0", locale="id")
    assert formatting.rupiah(value, locale) == (f"-Rp{text}" if amount < 0 else f"Rp{text}")
