"""Whether the ledger's PostgreSQL keeps each acknowledged row on a second server.

A 201 means the ``grant.issued`` row committed. On one server, or with asynchronous
replication, "committed" means "on the primary's disk": if the primary dies and a standby
is promoted, the rows the standby had not yet received are gone, though their credentials
were handed out. With a synchronous standby a commit returns only once a standby has the
row too, so a promoted standby has every row a client was answered for (docs/failover.md).

The level: ``synchronous_commit = on`` with ``synchronous_standby_names`` naming the
standbys (a quorum, ``ANY 1 (a, b)``, so one standby down blocks nothing). ``on`` waits for
the standby to *flush* the commit to its WAL, which is what survives the primary's loss;
``remote_apply`` would also wait for it to replay the commit, which only makes the row
visible to queries *on the standby* and adds replay time to every commit. The broker reads
and writes the primary only, so it has no use for that; and it sets ``on`` for its own
sessions (``connect_pool``), which overrides the server's level either way.

``replication_state`` reads what the broker's own session sees; ``replication_refusal``
(pure) says why that is not enough, or returns None. Invariants:

- ``synchronous_standby_names`` and ``synchronous_commit`` are readable by any role.
- ``pg_stat_replication`` lists every WAL sender to any role, but only roles with
  ``pg_read_all_stats`` (part of ``pg_monitor``) see its ``state`` and ``sync_state``;
  without, only the number of senders is known. No sender at all is a definite "no
  standby"; senders whose state is hidden make ``streaming`` None (unknown), and the check
  then rests on the configuration alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from broker.errors import LedgerUnavailable

__all__ = [
    "ReplicationState",
    "replication_refusal",
    "replication_state",
    "required_standbys",
]

# synchronous_commit levels at which a commit waits for the synchronous standby.
_WAITING_LEVELS = ("on", "remote_write", "remote_apply")

_COUNTED = re.compile(r"^\s*(?:(?:first|any)\s+)?(\d+)\s*\(", re.IGNORECASE)

_STATE_SQL = """
SELECT current_setting('synchronous_standby_names') AS standby_names,
       current_setting('synchronous_commit') AS synchronous_commit,
       count(*) AS senders,
       count(sync_state) AS visible,
       count(*) FILTER (WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))
           AS streaming
FROM pg_stat_replication
"""

_OVERRIDE = (
    " Configure a synchronous standby (docs/failover.md), or, where losing acknowledged"
    " rows on a failover is acceptable (a single server, development, tests), set"
    ' ledger_synchronous_standby = "not-required"'
    " (BROKER_LEDGER_SYNCHRONOUS_STANDBY=not-required)."
)


@dataclass(frozen=True)
class ReplicationState:
    """What the broker's session on the ledger's primary sees.

    ``streaming``: synchronous (``sync`` or ``quorum``) standbys streaming now; None when
    the role may not see the WAL senders' state (grant it ``pg_read_all_stats`` to see it).
    """

    standby_names: str
    synchronous_commit: str
    streaming: int | None

    @property
    def required(self) -> int:
        """How many standbys each commit waits for (0: none)."""
        return required_standbys(self.standby_names)

    @property
    def gauge(self) -> int:
        """``broker_ledger_synchronous_standbys``: ``streaming``, or -1 when unknown."""
        return -1 if self.streaming is None else self.streaming


def required_standbys(standby_names: str) -> int:
    """The number of synchronous standbys ``synchronous_standby_names`` asks for.

    ``FIRST n (...)``, ``ANY n (...)`` and ``n (...)`` ask for n; a plain list (``a, b``
    or ``*``) for one; an empty value for none.
    """
    counted = _COUNTED.match(standby_names)
    if counted:
        return int(counted.group(1))
    return 1 if standby_names.strip() else 0


async def replication_state(db: asyncpg.Pool | asyncpg.Connection) -> ReplicationState:
    """Read the state in one query, as ``db``'s role sees it. Raises ``LedgerUnavailable``
    if the database does not answer."""
    try:
        row = await db.fetchrow(_STATE_SQL)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise LedgerUnavailable("ledger database is unreachable") from e
    assert row is not None
    hidden = row["senders"] > row["visible"]
    return ReplicationState(
        standby_names=row["standby_names"],
        synchronous_commit=row["synchronous_commit"],
        streaming=None if hidden else row["streaming"],
    )


def replication_refusal(state: ReplicationState) -> str | None:
    """Why ``state`` does not keep acknowledged rows on a second server (one paragraph,
    naming the setting that overrides it), or None when it does."""
    if state.required == 0:
        return (
            "the ledger's PostgreSQL has no synchronous standby (synchronous_standby_names is"
            " empty): a commit is acknowledged once it is on this one server, so a failover to"
            " a standby can lose the ledger rows of credentials already handed out." + _OVERRIDE
        )
    if state.synchronous_commit not in _WAITING_LEVELS:
        return (
            f"the broker's sessions on the ledger's PostgreSQL run with synchronous_commit ="
            f" {state.synchronous_commit}, so commits do not wait for the synchronous standby"
            f" named in synchronous_standby_names ({state.standby_names!r}): a failover can"
            " lose acknowledged ledger rows." + _OVERRIDE
        )
    if state.streaming is not None and state.streaming < state.required:
        return (
            f"synchronous_standby_names is {state.standby_names!r}, which needs"
            f" {state.required} synchronous standby(s), but {state.streaming} is streaming"
            " from the ledger's PostgreSQL: every ledger commit would wait for a standby that"
            " is not there. Start the standby or correct synchronous_standby_names." + _OVERRIDE
        )
    return None
