"""Periods in requests: one parser for instants, one rule for ``[from, to)``.

Every endpoint that takes a period (audit access and events, continuity gaps, offboarding
lists, evidence export) reads its bounds with ``parse_instant`` and checks them with
``check_period``, so they accept the same spellings and refuse with the same codes:
``missing_from``/``missing_to``, ``invalid_from``/``invalid_to`` (unreadable), and
``invalid_period`` (``to`` not after ``from``, or longer than the endpoint allows).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

from broker.errors import BadRequest

__all__ = ["MAX_QUERY_PERIOD", "check_period", "parse_instant"]

# A year plus slack: longer periods are an evidence export's job.
MAX_QUERY_PERIOD = timedelta(days=400)
_MAX_CHARS = 40
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_instant(value: object) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 date-time (no offset means UTC), in UTC.

    Raises ValueError for anything else (any type: it reads untrusted JSON too).
    """
    if not isinstance(value, str):
        raise ValueError("not text")
    if len(value) > _MAX_CHARS:
        raise ValueError("too long")
    text = value.strip()
    if _DATE.fullmatch(text):
        return datetime.combine(date.fromisoformat(text), time(), UTC)
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def check_period(start: datetime, end: datetime, *, maximum: timedelta | None) -> None:
    """Raise BadRequest (``invalid_period``) unless ``start < end`` (and ``end - start``
    is at most ``maximum`` when one is given)."""
    if end <= start:
        raise BadRequest("'to' must be later than 'from'", code="invalid_period")
    if maximum is not None and end - start > maximum:
        raise BadRequest(
            f"the period may be at most {maximum.days} days: ask for several",
            code="invalid_period",
        )
