"""Durations in topics.yaml: parsing, canonical names, retention's 'forever'."""

from __future__ import annotations

import pytest

from processors.topics.durations import FOREVER, format_duration, parse_duration, parse_retention


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("5s", 5_000),
        ("30m", 1_800_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        (" 10h ", 36_000_000),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["", "5", "5 s", "5sec", "1.5h", "-5s", "0s", "1w", "h", "forever"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [60, True, None, 1.5, ["5s"]])
def test_parse_duration_refuses_non_text(bad: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


def test_a_bare_number_is_told_that_its_unit_is_missing() -> None:
    with pytest.raises(ValueError, match="unit is missing"):
        parse_duration(60)


@pytest.mark.parametrize("value", ["forever", -1, "-1"])
def test_retention_forever(value: object) -> None:
    assert parse_retention(value) == FOREVER == -1


def test_retention_is_otherwise_a_duration() -> None:
    assert parse_retention("30d") == 30 * 86_400_000
    with pytest.raises(ValueError, match=r"bad retention '30 days'.*forever"):
        parse_retention("30 days")
    with pytest.raises(ValueError, match="bad retention"):
        parse_retention(-2)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (5_000, "5s"),
        (60_000, "1m"),
        (90_000, "90s"),
        (86_400_000, "1d"),
        (36_000_000, "10h"),
        (1_500, "1500ms"),
        (FOREVER, "forever"),
    ],
)
def test_format_duration_uses_the_largest_whole_unit(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@pytest.mark.parametrize("text", ["5s", "30s", "5m", "30m", "2h", "5h", "10h", "7d", "250ms"])
def test_canonical_text_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_format_refuses_non_positive() -> None:
    with pytest.raises(ValueError, match="not a positive duration"):
        format_duration(0)
