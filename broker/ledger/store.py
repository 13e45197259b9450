"""The ledger facade: pool, writer, checkpoints and the read queries the API needs.

This package is the only place with SQL. Reads never lock; appends go through the single
``LedgerWriter``. Grant state is *derived* from events (issued, then at most one of
revoked/expired), never kept in a mutable table, so the evidence and the state cannot
disagree.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from broker.errors import LedgerTampered, LedgerUnavailable

from .checkpoint import Checkpoint, CheckpointSigner
from .events import ElevationStep, Event, NewEvent, decoded_body, row_to_event
from .hosts import HostsInTurn
from .relay import RelayWriter
from .tls import database_tls, tls_failure
from .tree import extend_tree, tree_root
from .writer import LEDGER_LOCK, Appended, LedgerWriter

__all__ = [
    "COVERED_ROW_BYTES",
    "COVERED_ROW_FITS",
    "COVERED_ROW_LIMIT",
    "END_OF_TIME",
    "GrantRecord",
    "Ledger",
    "connect_one",
    "connect_pool",
    "elevation_events",
    "elevation_steps",
    "elevation_steps_query",
    "read_snapshot",
    "row_to_event",
    "secret_elevation_steps",
    "secret_elevation_steps_query",
]

_TERMINAL = ("grant.revoked", "grant.expired")


def _json_loads(text: str | bytes) -> Any:
    # msgspec decodes to the same values as json.loads (big ints included), faster; a
    # document it refuses (json.loads accepts NaN, for one) takes json.
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=_json_loads, schema="pg_catalog")


async def connect_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeout: float = 5.0,
    sslrootcert: Path | None = None,
) -> asyncpg.Pool:
    """Create the pool lazily usable even if Postgres is down now (min_size connects later).

    TLS follows ``broker.ledger.tls.database_tls`` (``sslrootcert``: the setting, which
    the DSN's own ``sslrootcert`` overrides). Raises ``TLSConfigError`` for a DSN that
    would not verify a non-loopback server, and ``LedgerUnavailable`` (code ``ledger_tls``,
    naming the server and OpenSSL's reason) when the server's certificate does not verify.
    A multi-host DSN is tried one host at a time, each on its share of ``timeout``
    (``broker.ledger.hosts``).
    """
    tls = database_tls(dsn, sslrootcert)
    try:
        return await asyncpg.create_pool(
            tls.dsn,
            connect=HostsInTurn(),  # a failover's dead first host must not eat the timeout
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            command_timeout=timeout,
            init=_init_connection,
            ssl=tls.ssl,
            # Durability of ledger rows is the product: never relax synchronous_commit.
            server_settings={"synchronous_commit": "on", "application_name": "jit-broker"},
        )
    except (OSError, asyncpg.PostgresError) as e:
        failure = tls_failure(tls.where, e)
        if failure is None:
            raise
        raise failure from e


async def connect_one(
    dsn: str, *, timeout: float = 10.0, sslrootcert: Path | None = None
) -> asyncpg.Connection:
    """One connection (migrate, verify, evidence export) under the same TLS rule and
    codecs as ``connect_pool``, with the same errors."""
    tls = database_tls(dsn, sslrootcert)
    try:
        conn = await HostsInTurn()(tls.dsn, timeout=timeout, ssl=tls.ssl)
    except (OSError, asyncpg.PostgresError) as e:
        failure = tls_failure(tls.where, e)
        if failure is None:
            raise
        raise failure from e
    await _init_connection(conn)
    return conn


# Index lookups of a few hundred rows, which a parallel plan only slows down: starting the
# workers takes longer (about 15 ms on a busy 2-core host) than the whole lookup. The
# planner is tempted by the elevation lookup, whose partial expression index has statistics
# it does not use (so it guesses thousands of rows for each id instead of a handful).
_NO_PARALLEL_WORKERS = "SET LOCAL max_parallel_workers_per_gather = 0"


@asynccontextmanager
async def read_snapshot(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection in a read-only REPEATABLE READ transaction without parallel workers.

    For answers built from a few index lookups: every query sees the same ledger, and none
    pays for starting parallel workers. Whatever the block raises propagates (the
    transaction is rolled back).
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(_NO_PARALLEL_WORKERS)
        yield conn


async def elevation_events(
    conn: asyncpg.Connection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Event]]:
    """Every event of each elevation in ``ids``, in seq order: its own (``elevation.*``)
    and the grants issued under it.

    Run it inside ``read_snapshot``, and only there: the plan PostgreSQL caches for this
    statement must be one made without parallel workers.
    """
    if not ids:
        return {}
    by_text = {str(i): i for i in ids}
    rows = await conn.fetch(
        "SELECT * FROM ledger.events"
        " WHERE body ? 'elevation_id' AND body->>'elevation_id' = ANY($1::text[])"
        " ORDER BY seq",
        list(by_text),
    )
    out: dict[uuid.UUID, list[Event]] = {i: [] for i in ids}
    for r in rows:
        out[by_text[r["body"]["elevation_id"]]].append(row_to_event(r))
    return out


# A row's bytes as the predicates of the covering indexes (008, 009, 010) count them, and
# the most such an index takes; the rest go to each one's companion index of wide rows.
# Spelled as in the migrations, so that the planner can prove the predicate
# (tests/test_audit_access.py checks the plans and that the spellings agree).
COVERED_ROW_BYTES = (
    "octet_length(body::text) + octet_length(coalesce(subject, ''))"
    " + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))"
    " + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))"
)
COVERED_ROW_LIMIT = 1600
COVERED_ROW_FITS = f"{COVERED_ROW_BYTES} <= {COVERED_ROW_LIMIT}"


def _covered_and_wide(select: str) -> str:
    """``select`` (with ``{fits}`` where the width condition goes) from a covering index
    and from its companion of wide rows, in seq order."""
    covered = select.format(fits=COVERED_ROW_FITS)
    wide = select.format(fits=f"NOT ({COVERED_ROW_FITS})")
    return f"{covered} UNION ALL {wide} ORDER BY seq"


# Each id probes only the partitions of its own time range (run-time pruning: OFFSET 0
# keeps the lookup a subquery run once per id, not a join PostgreSQL may turn into a hash
# of every elevation row). The condition on event is one no index on event can serve
# (= ANY, LIKE and starts_with all can: with one, PostgreSQL ANDs in a scan of
# (event, recorded_at) over whole months).
_STEPS_OF = (
    "SELECT s.* FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS w(id, lo, hi)"
    " CROSS JOIN LATERAL (SELECT seq, recorded_at, event, subject, subject_kind, secret, role,"
    " policy_version, body FROM ledger.events WHERE left(event, 10) = 'elevation.'"
    " AND body ? 'elevation_id' AND body->>'elevation_id' = w.id"
    " AND recorded_at BETWEEN w.lo AND w.hi AND recorded_at BETWEEN $4 AND $5"
    " AND {fits} OFFSET 0) s"
)
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)  # a range's open end, as a bound
_ALWAYS = (datetime(1, 1, 1, tzinfo=UTC), END_OF_TIME)


def elevation_steps_query(
    ids: Sequence[uuid.UUID],
    near: Mapping[uuid.UUID, tuple[datetime, datetime]] | None = None,
) -> tuple[str, list[Any]]:
    """SQL and arguments for ``elevation_steps``: one branch per index of migration 008."""
    ranges = [(near or {}).get(i, _ALWAYS) for i in ids]
    los, his = [lo for lo, _ in ranges], [hi for _, hi in ranges]
    # All the ranges at once as well: what prunes partitions while planning (each id's own
    # range prunes only as the query runs, after every partition has been planned for).
    first, last = min(los, default=_ALWAYS[0]), max(his, default=_ALWAYS[1])
    args: list[Any] = [[str(i) for i in ids], los, his, first, last]
    return _covered_and_wide(_STEPS_OF), args


def _step(r: asyncpg.Record, body: dict[str, Any]) -> ElevationStep:
    return ElevationStep(
        seq=r["seq"],
        recorded_at=r["recorded_at"],
        event=r["event"],
        subject=r["subject"],
        subject_kind=r["subject_kind"],
        secret=r["secret"],
        role=r["role"],
        policy_version=r["policy_version"],
        body=body,
    )


async def elevation_steps(
    conn: asyncpg.Connection,
    ids: Sequence[uuid.UUID],
    *,
    near: Mapping[uuid.UUID, tuple[datetime, datetime]] | None = None,
) -> dict[uuid.UUID, list[ElevationStep]]:
    """The ``elevation.*`` rows of each elevation in ``ids`` (not the grants under it), in
    seq order; for an id in ``near``, only those recorded in its range (inclusive), which
    reads only that range's partitions. Served from migration 008's indexes alone: the
    covering one, and the one of rows too wide for it (normally none).

    Run it inside ``read_snapshot``, as ``elevation_events``.
    """
    if not ids:
        return {}
    by_text = {str(i): i for i in ids}
    sql, args = elevation_steps_query(ids, near)
    out: dict[uuid.UUID, list[ElevationStep]] = {i: [] for i in ids}
    for r in await conn.fetch(sql, *args):
        body = decoded_body(r["body"])
        out[by_text[body["elevation_id"]]].append(_step(r, body))
    return out


# 009's indexes of elevation rows by secret: the covering one and the one of wide rows.
_STEPS_IN_RANGE = (
    "SELECT body->>'elevation_id' AS elevation_id, seq, recorded_at, event, subject,"
    " subject_kind, secret, role, policy_version, body"
    " FROM ledger.events WHERE left(event, 10) = 'elevation.' AND body ? 'elevation_id'"
    " AND secret = $1 AND recorded_at BETWEEN $2 AND $3 AND {fits}"
)


def secret_elevation_steps_query(
    secret: str, since: datetime, until: datetime
) -> tuple[str, list[Any]]:
    """SQL and arguments for ``secret_elevation_steps``: one branch per index of 009."""
    return _covered_and_wide(_STEPS_IN_RANGE), [secret, since, until]


async def secret_elevation_steps(
    conn: asyncpg.Connection,
    secret: str,
    since: datetime,
    until: datetime,
    ids: Collection[uuid.UUID],
) -> dict[uuid.UUID, list[ElevationStep]]:
    """The ``elevation.*`` rows of the elevations in ``ids`` (all to ``secret``) recorded
    in ``[since, until]``, in seq order: one range of migration 009's indexes, read from
    them alone (the other elevations' rows in it are skipped undecoded). An elevation with
    rows outside the range is not whole here.

    Run it inside ``read_snapshot``, as ``elevation_events``.
    """
    by_text = {str(i): i for i in ids}
    sql, args = secret_elevation_steps_query(secret, since, until)
    out: dict[uuid.UUID, list[ElevationStep]] = {i: [] for i in ids}
    for r in await conn.fetch(sql, *args):
        if (eid := by_text.get(r["elevation_id"])) is not None:
            out[eid].append(_step(r, decoded_body(r["body"])))
    return out


@dataclass(frozen=True)
class GrantRecord:
    """A grant as the ledger knows it: the issued row plus its end, if any."""

    issued: Event
    ended_event: str | None
    ended_at: datetime | None
    ended_by: str | None

    @property
    def grant_id(self) -> uuid.UUID:
        assert self.issued.grant_id is not None
        return self.issued.grant_id

    def status(self, now: datetime) -> str:
        if self.ended_event == "grant.revoked":
            return "revoked"
        if self.ended_event == "grant.expired":
            return "expired"
        expires = self.issued.expires_at
        return "expired" if expires is not None and expires <= now else "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        body = self.issued.body
        return {
            "id": str(self.grant_id),
            "secret": self.issued.secret,
            "subject": self.issued.subject,
            "role": self.issued.role,
            "policy_version": self.issued.policy_version,
            "issued_at": self.issued.recorded_at.isoformat(),
            "expires_at": self.issued.expires_at.isoformat() if self.issued.expires_at else None,
            "lease_id": self.issued.lease_id,
            "engine": body.get("engine"),
            "status": self.status(now),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "ended_by": self.ended_by,
        }


_GRANT_SELECT = """
SELECT i.*, t.event AS end_event, t.recorded_at AS end_at, t.subject AS end_by
FROM ledger.events i
LEFT JOIN LATERAL (
    SELECT e.event, e.recorded_at, e.subject FROM ledger.events e
    WHERE e.grant_id = i.grant_id AND e.event IN ('grant.revoked', 'grant.expired')
    ORDER BY e.seq LIMIT 1
) t ON true
WHERE i.event = 'grant.issued'
"""


def _grant(r: Mapping[str, Any]) -> GrantRecord:
    return GrantRecord(row_to_event(r), r["end_event"], r["end_at"], r["end_by"])


class Ledger:
    """Owns the pool and the writer for one broker process."""

    def __init__(
        self, pool: asyncpg.Pool, writer: LedgerWriter | RelayWriter, *, origin: str
    ) -> None:
        self.pool = pool
        self.writer = writer
        self.origin = origin

    async def append(self, event: NewEvent) -> Appended:
        return await self.writer.append(event)

    async def ping(self) -> None:
        """Raise LedgerUnavailable unless the database answers."""
        try:
            await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise LedgerUnavailable("ledger database is unreachable") from e

    async def create_partitions(self, months_ahead: int) -> datetime:
        """Create the monthly event partitions through ``months_ahead`` months from now
        (the owner's SECURITY DEFINER function; the writer creates nothing itself); return
        the end of the newest partition."""
        try:
            await self.pool.execute(
                "SELECT ledger.create_partitions(now(), now() + make_interval(months => $1))",
                months_ahead,
            )
            until: datetime = await self.pool.fetchval(
                "SELECT max(to_date(substr(c.relname, 8), 'YYYY_MM'))::timestamp AT TIME ZONE"
                " 'UTC' + interval '1 month' FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'ledger.events'::regclass"
            )
        except (OSError, asyncpg.PostgresError) as e:
            raise LedgerUnavailable(f"could not create ledger partitions: {e}") from e
        return until

    async def head(self) -> tuple[int, bytes | None]:
        r = await self.pool.fetchrow(
            "SELECT seq, hash FROM ledger.events ORDER BY recorded_at DESC, seq DESC LIMIT 1"
        )
        return (r["seq"], bytes(r["hash"])) if r else (0, None)

    async def latest_checkpoint(self) -> tuple[int, datetime, str] | None:
        """The newest signed checkpoint as stored: (size, signed_at, key_id), or None.

        As stored, not verified: ``broker verify`` / ``GET /v1/audit/verify`` check it."""
        r = await self.pool.fetchrow(
            "SELECT size, signed_at, key_id FROM ledger.checkpoints ORDER BY size DESC LIMIT 1"
        )
        return (r["size"], r["signed_at"], r["key_id"]) if r else None

    async def grants_for(self, subject: str, *, active_only: bool, limit: int) -> list[GrantRecord]:
        sql = _GRANT_SELECT + " AND i.subject = $1"
        if active_only:
            sql += " AND t.event IS NULL AND i.expires_at > now()"
        sql += " ORDER BY i.seq DESC LIMIT $2"
        return [_grant(r) for r in await self.pool.fetch(sql, subject, limit)]

    async def grant(self, grant_id: uuid.UUID) -> GrantRecord | None:
        r = await self.pool.fetchrow(_GRANT_SELECT + " AND i.grant_id = $1", grant_id)
        return _grant(r) if r else None

    async def grant_by_lease(self, lease_id: str) -> GrantRecord | None:
        r = await self.pool.fetchrow(_GRANT_SELECT + " AND i.lease_id = $1", lease_id)
        return _grant(r) if r else None

    async def session_events(self, accessor: str) -> list[Event]:
        """A Vault-API session's events (created, renewed, revoked) in seq order."""
        rows = await self.pool.fetch(
            "SELECT * FROM ledger.events WHERE event IN"
            " ('session.created', 'session.renewed', 'session.revoked')"
            " AND body->>'accessor' = $1 ORDER BY seq",
            accessor,
        )
        return [row_to_event(r) for r in rows]

    async def due_for_expiry(self, limit: int) -> list[GrantRecord]:
        """Issued grants past expires_at with no end event yet (oldest first).

        Expiries are recorded oldest first, so everything well before the newest recorded
        expiry is done: the scan starts an hour (slack for replicas racing) before it
        instead of at the beginning of time, keeping each sweep independent of history.
        """
        watermark = await self.pool.fetchval(
            "SELECT expires_at FROM ledger.events WHERE event = 'grant.expired'"
            " ORDER BY recorded_at DESC LIMIT 1"
        )
        sql = (
            _GRANT_SELECT
            + " AND t.event IS NULL AND i.expires_at <= now()"
            + " AND i.expires_at > coalesce($2::timestamptz - interval '1 hour', '-infinity')"
            + " ORDER BY i.expires_at LIMIT $1"
        )
        return [_grant(r) for r in await self.pool.fetch(sql, limit, watermark)]

    async def known_lease_ids(self, lease_ids: list[str]) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT lease_id FROM ledger.events WHERE event = 'grant.issued'"
            " AND lease_id = ANY($1::text[])",
            lease_ids,
        )
        return {r["lease_id"] for r in rows}

    async def elevation_events(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Event]]:
        """Every event of each elevation (incl. grants issued under it), in seq order."""
        if not ids:
            return {}
        async with read_snapshot(self.pool) as conn:
            return await elevation_events(conn, ids)

    async def elevation_ids(
        self,
        *,
        since: datetime | None,
        requester: str | None,
        limit: int,
        secret: str | None = None,
    ) -> list[uuid.UUID]:
        """Ids of elevation requests, newest first, optionally since a time / by requester /
        for one secret."""
        rows = await self.pool.fetch(
            "SELECT body->>'elevation_id' AS id FROM ledger.events"
            " WHERE event = 'elevation.requested'"
            " AND ($1::timestamptz IS NULL OR recorded_at >= $1)"
            " AND ($2::text IS NULL OR subject = $2)"
            " AND ($4::text IS NULL OR secret = $4)"
            " ORDER BY seq DESC LIMIT $3",
            since,
            requester,
            limit,
            secret,
        )
        return [uuid.UUID(r["id"]) for r in rows]

    async def break_glass_ids(self, *, limit: int) -> list[uuid.UUID]:
        """Ids of break-glass elevations, newest first (rare; reviewed or not)."""
        rows = await self.pool.fetch(
            "SELECT body->>'elevation_id' AS id FROM ledger.events"
            " WHERE event = 'elevation.requested' AND outcome = 'break_glass'"
            " ORDER BY seq DESC LIMIT $1",
            limit,
        )
        return [uuid.UUID(r["id"]) for r in rows]

    async def record_policy_version(self, version: str, documents: Mapping[str, str]) -> None:
        await self.pool.execute(
            "INSERT INTO ledger.policy_versions (version, first_seen, documents)"
            " VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
            version,
            datetime.now(UTC),
            dict(documents),
        )

    async def checkpoint(
        self, signer: CheckpointSigner, *, anchors: Sequence[tuple[int, bytes]] = ()
    ) -> Checkpoint | None:
        """Sign the current head if it moved since the last checkpoint; return it or None.

        The checkpoint signs the Merkle root of the first ``size`` rows and the chain's
        hash of row ``size``. The tree is extended first, outside the ledger lock (rows
        never change, so appends are not held up while a large backlog is hashed).

        Never signs a chain that no longer contains what was signed before: each anchor
        (size, head hash) this signer vouched for earlier — kept outside the database by
        the caller — and the newest checkpoint row must still match the row at that size,
        else LedgerTampered is raised and nothing is signed. (A superuser who rewrites the
        chain and deletes the checkpoints must not get the rewrite signed by the broker.)
        The signed row is committed, so appends racing this call cannot invalidate it.
        """
        async with self.pool.acquire() as conn:
            head_seq = await conn.fetchval(
                "SELECT seq FROM ledger.events ORDER BY recorded_at DESC, seq DESC LIMIT 1"
            )
            if head_seq is None:
                return None
            await extend_tree(conn, head_seq, self.writer.recent_blocks)
            # Rows up to head_seq never change: hash them before taking the lock that
            # every append waits on.
            head_hash = await conn.fetchval(
                "SELECT hash FROM ledger.events WHERE seq = $1", head_seq
            )
            root = await tree_root(conn, head_seq)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LEDGER_LOCK)
                last = await conn.fetchrow(
                    "SELECT size, head_hash FROM ledger.checkpoints ORDER BY size DESC LIMIT 1"
                )
                checks = list(anchors)
                if last is not None:
                    checks.append((last["size"], bytes(last["head_hash"])))
                for size, expected in checks:
                    found = await conn.fetchval(
                        "SELECT hash FROM ledger.events WHERE seq = $1", size
                    )
                    if found is None or bytes(found) != expected:
                        raise LedgerTampered(
                            f"ledger row {size} no longer matches a signed checkpoint:"
                            " refusing to sign (run `broker verify`)"
                        )
                if last is not None and last["size"] >= head_seq:
                    return None
                cp = Checkpoint(self.origin, head_seq, bytes(head_hash), root)
                await conn.execute(
                    "INSERT INTO ledger.checkpoints"
                    " (size, head_hash, root_hash, signed_at, key_id, note)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    cp.size,
                    cp.head_hash,
                    cp.root,
                    datetime.now(UTC),
                    signer.key_id,
                    signer.sign(cp),
                )
                return cp
