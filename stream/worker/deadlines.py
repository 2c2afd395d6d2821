"""Request deadlines (SPEC §3, §5): whether a consumed request is still wanted.

A request carries its own deadline in ``x-deadline`` (epoch milliseconds, set by the client
from ``infer(timeout=...)``), and a deployment may add ``processing.max_request_age_ms``: a
deadline that many milliseconds after the request's Kafka timestamp. A request consumed after
either deadline is never run; it is dead-lettered as ``expired`` with the message
:func:`expired` gives.

Both functions run once per request on the worker's hot path, so they allocate nothing when
there is no deadline to check. A malformed ``x-deadline`` is bad input, not a pass-through:
:func:`parse_deadline` raises a :class:`~pipelines.errors.DecodeError` naming the header and the
value, so the request becomes a ``decode_error`` instead of being served without the limit its
caller asked for.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.errors import DecodeError
from stream.headers import DEADLINE

__all__ = ["MAX_AGE_SETTING", "expired", "format_ms", "parse_deadline"]

MAX_AGE_SETTING = "processing.max_request_age_ms"
_MAX_DIGITS = 16  # epoch ms reach 16 digits in the year 2286; more is not a deadline
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_deadline(value: bytes) -> int:
    """The deadline an ``x-deadline`` header value gives, in epoch milliseconds.

    The value is a whole number of milliseconds in ASCII digits (``1764496800123``); anything
    else (a sign, a fraction, spaces, an ISO date, more than 16 digits) raises
    :class:`DecodeError` naming the header and the value. A deadline sent in seconds by mistake
    parses, and expires at once with a message that shows its date in January 1970.
    """
    if value.isdigit() and len(value) <= _MAX_DIGITS:  # bytes.isdigit: ASCII digits only
        return int(value)
    shown = value[:64].decode("utf-8", "replace")
    raise DecodeError(
        f"header {DEADLINE} must be a deadline in epoch milliseconds (a whole number such as "
        f"1764496800123), got {shown!r}"
    )


def expired(
    deadline_ms: int | None, timestamp_ms: int | None, max_age_ms: int | None, now_ms: int
) -> str | None:
    """None while a request consumed at ``now_ms`` is still wanted, else why it expired.

    ``deadline_ms`` is the request's ``x-deadline`` (:func:`parse_deadline`), ``timestamp_ms``
    its Kafka timestamp and ``max_age_ms`` the deployment's ``processing.max_request_age_ms``;
    None (and a timestamp of 0 or less: the broker gave none) means no such limit. A request
    consumed at its deadline's very millisecond is still wanted. When both limits have passed,
    the message names the earlier one, e.g. ``expired: deadline 2026-11-30T10:00:00.123Z
    (x-deadline) passed 1234 ms before it was consumed``.
    """
    if max_age_ms is not None and timestamp_ms is not None and timestamp_ms > 0:
        oldest = timestamp_ms + max_age_ms
        if deadline_ms is None or oldest < deadline_ms:
            return _aged(timestamp_ms, max_age_ms, now_ms) if now_ms > oldest else None
    if deadline_ms is not None and now_ms > deadline_ms:
        return _message(deadline_ms, DEADLINE, now_ms)
    return None


def _aged(timestamp_ms: int, max_age_ms: int, now_ms: int) -> str:
    return _message(
        timestamp_ms + max_age_ms,
        f"Kafka timestamp {format_ms(timestamp_ms)} + {MAX_AGE_SETTING}={max_age_ms}",
        now_ms,
    )


def _message(deadline_ms: int, source: str, now_ms: int) -> str:
    late = now_ms - deadline_ms
    return (
        f"expired: deadline {format_ms(deadline_ms)} ({source}) passed {late} ms "
        "before it was consumed"
    )


def format_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time to the millisecond: ``2026-11-30T10:00:00.123Z``.

    Exact (no float rounding); a time outside the years 1-9999 is given as its number.
    """
    try:
        moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    except OverflowError:
        return f"{epoch_ms} ms after the epoch"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
