"""Fixtures for the reliability suite. Fixtures only: the helpers are in ``tests/support/``.

An attack suite offboards subjects, opens reviews and annotates gaps at random; doing that
on the session's ``broker`` database would change what other tests see, so those tests use
``tests.support.brokers.isolated_broker`` (a broker on a private ledger database).
Every test here records what it did with ``tests.support.reliability_report.record``; the
rows land in ``.broker/reliability/`` (untracked) and ``make reliability-report`` renders
them to docs/reliability.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support.logs import LogCapture


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    """Every record logged (at any level, by any logger) while the test runs."""
    handler = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
