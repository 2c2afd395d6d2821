"""Request deadlines: the x-deadline header and processing.max_request_age_ms (SPEC §3, §5)."""

from __future__ import annotations

import pytest

from pipelines.errors import DecodeError, Expired
from stream.worker.deadlines import expired, format_ms, parse_deadline

DEADLINE = 1_796_032_800_123  # 2026-11-30T10:00:00.123Z
AGE = 60_000


@pytest.mark.parametrize(
    ("value", "ms"), [(b"1796032800123", DEADLINE), (b"0", 0), (b"0001796032800123", DEADLINE)]
)
def test_a_deadline_is_whole_epoch_milliseconds(value: bytes, ms: int) -> None:
    """An x-deadline of ASCII digits is read as epoch milliseconds."""
    assert parse_deadline(value) == ms


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"soon",
        b"-5",
        b"+5",
        b"1796032800.5",
        b" 1796032800123",
        b"1_796_032_800_123",
        b"2026-11-30T10:00:00Z",
        "\u0663".encode(),  # an Arabic-Indic digit: a digit to str.isdigit, not to the header
        b"9" * 17,
    ],
)
def test_a_malformed_deadline_is_a_decode_error_naming_header_and_value(value: bytes) -> None:
    """Anything but whole milliseconds is a decode_error that names x-deadline and the value."""
    with pytest.raises(DecodeError) as caught:
        parse_deadline(value)
    message = str(caught.value)
    assert caught.value.error_type == "decode_error"
    assert "x-deadline" in message
    assert repr(value.decode("utf-8", "replace")) in message


def test_a_request_without_limits_never_expires() -> None:
    """No x-deadline and no max_request_age_ms: the request is served, however old."""
    assert expired(None, 1, None, DEADLINE) is None
    assert expired(None, None, None, DEADLINE) is None


def test_a_request_is_wanted_up_to_its_deadline_millisecond() -> None:
    """Consumed before or at its x-deadline the request is served; one ms later it expired."""
    assert expired(DEADLINE, None, None, DEADLINE - 5) is None
    assert expired(DEADLINE, None, None, DEADLINE) is None
    assert expired(DEADLINE, None, None, DEADLINE + 1) is not None


def test_the_expired_message_gives_the_deadline_and_how_late() -> None:
    """The message names x-deadline, its time in UTC to the millisecond, and the lateness."""
    assert expired(DEADLINE, None, None, DEADLINE + 1234) == (
        "expired: deadline 2026-11-30T10:00:00.123Z (x-deadline) passed 1234 ms "
        "before it was consumed"
    )


def test_max_request_age_expires_by_the_kafka_timestamp() -> None:
    """With max_request_age_ms, a request older than that by its Kafka timestamp expired, and
    the message names the setting and the timestamp."""
    produced = DEADLINE - AGE
    assert expired(None, produced, AGE, DEADLINE) is None
    assert expired(None, produced, AGE, DEADLINE + 7) == (
        "expired: deadline 2026-11-30T10:00:00.123Z (Kafka timestamp 2026-11-30T09:59:00.123Z "
        "+ processing.max_request_age_ms=60000) passed 7 ms before it was consumed"
    )


@pytest.mark.parametrize("timestamp", [None, 0, -1])
def test_a_message_without_a_timestamp_has_no_age_limit(timestamp: int | None) -> None:
    """A record the broker gave no timestamp (None, 0 or -1) is not expired by age."""
    assert expired(None, timestamp, AGE, DEADLINE) is None


def test_when_both_limits_passed_the_earlier_one_is_named() -> None:
    """The message names whichever deadline came first, x-deadline or the age limit."""
    late = DEADLINE + 10_000
    by_header = expired(DEADLINE, DEADLINE, AGE, late)  # age limit a minute after x-deadline
    assert by_header is not None
    assert "(x-deadline) passed 10000 ms" in by_header
    by_age = expired(DEADLINE, DEADLINE - 2 * AGE, AGE, late)  # age limit a minute before
    assert by_age is not None
    assert "processing.max_request_age_ms=60000) passed 70000 ms" in by_age


def test_either_limit_alone_expires_a_request() -> None:
    """Either limit alone expires a request: a later x-deadline does not rescue an aged one,
    and a young request still expires at its x-deadline."""
    assert expired(DEADLINE + AGE, DEADLINE - AGE, AGE, DEADLINE + 1) is not None
    assert expired(DEADLINE, DEADLINE, AGE, DEADLINE + 1) is not None
    assert expired(DEADLINE, DEADLINE, AGE, DEADLINE) is None


def test_an_expired_request_is_dead_lettered_as_expired() -> None:
    """The error the worker raises for it has x-error-type ``expired`` and is permanent."""
    error = Expired("expired: ...")
    assert (error.error_type, error.permanent) == ("expired", True)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (DEADLINE, "2026-11-30T10:00:00.123Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (10**16, "10000000000000000 ms after the epoch"),
    ],
)
def test_times_are_shown_in_utc_to_the_millisecond(ms: int, text: str) -> None:
    """Epoch milliseconds print exactly, as ISO 8601 UTC, or as a number out of its range."""
    assert format_ms(ms) == text
