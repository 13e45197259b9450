"""The start-up check: no synchronous standby, no broker (unless told).

The rule is pure (``replication_refusal`` on a ``ReplicationState``) and tested here case by
case; ``broker serve`` against the session's single PostgreSQL shows the refusal end to end.
A real synchronous standby passing the check is in tests/test_ledger_failover.py.
"""

from __future__ import annotations

import asyncpg
import pytest

from broker.ledger import ReplicationState, replication_refusal, replication_state
from broker.ledger.replication import required_standbys
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.commands import run_broker
from tests.support.ledger import count_events
from tests.support.ledger_db import fresh_ledger_db
from tests.support.processes import serve_env

_OVERRIDE = "BROKER_LEDGER_SYNCHRONOUS_STANDBY=not-required"


@pytest.mark.parametrize(
    ("names", "required"),
    [
        ("", 0),
        ("  ", 0),
        ("*", 1),
        ("standby1", 1),
        ("s1, s2", 1),
        ("2 (s1, s2, s3)", 2),
        ("FIRST 2 (s1, s2, s3)", 2),
        ("ANY 1 (s1, s2)", 1),
        ('any 3 ("standby one", s2, s3)', 3),
    ],
)
def test_required_standbys_reads_every_form_of_the_setting(names: str, required: int) -> None:
    assert required_standbys(names) == required


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (ReplicationState("", "on", 0), "synchronous_standby_names is empty"),
        (ReplicationState("", "on", None), "synchronous_standby_names is empty"),
        (ReplicationState("ANY 1 (s1)", "local", 1), "run with synchronous_commit = local"),
        (ReplicationState("ANY 1 (s1)", "off", None), "run with synchronous_commit = off"),
        (ReplicationState("ANY 1 (s1)", "on", 0), "needs 1 synchronous standby(s), but 0"),
        (ReplicationState("ANY 2 (s1, s2)", "on", 1), "needs 2 synchronous standby(s), but 1"),
    ],
)
def test_what_is_refused(state: ReplicationState, reason: str) -> None:
    refusal = replication_refusal(state)
    assert refusal is not None
    assert reason in refusal, refusal
    assert _OVERRIDE in refusal and "docs/failover.md" in refusal, refusal
    assert "\n" not in refusal  # one paragraph, as `broker serve` prints it


@pytest.mark.parametrize(
    "state",
    [
        ReplicationState("ANY 1 (s1, s2)", "on", 1),
        ReplicationState("FIRST 2 (s1, s2, s3)", "remote_apply", 3),
        ReplicationState("s1", "remote_write", 1),
        # The writer role cannot see the standbys: the configuration decides.
        ReplicationState("ANY 1 (s1, s2)", "on", None),
    ],
)
def test_what_is_accepted(state: ReplicationState) -> None:
    assert replication_refusal(state) is None


async def test_the_session_database_has_no_standby(broker_settings: Settings) -> None:
    conn = await asyncpg.connect(broker_settings.database_url, timeout=10)
    try:
        state = await replication_state(conn)
    finally:
        await conn.close()
    # No WAL sender at all is a definite zero, even for a role without pg_read_all_stats.
    assert state == ReplicationState("", "on", 0)
    assert state.gauge == 0


async def test_broker_serve_refuses_without_a_synchronous_standby(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "syncrefused") as db:
        settings = broker_settings.with_overrides(database_url=db.writer_dsn)
        env = serve_env(settings, "sync-refused", BROKER_LEDGER_SYNCHRONOUS_STANDBY="required")
        run = await run_broker("serve", env=env)
        assert run.returncode == 2, run.stderr
        assert "listening" not in run.stdout
        expected = replication_refusal(ReplicationState("", "on", 0))
        assert run.stderr.strip().splitlines()[-1] == f"cannot start: {expected}", run.stderr
        assert "Traceback" not in run.stderr
        assert await count_events(db.superuser_dsn) == 0  # refused before any row
