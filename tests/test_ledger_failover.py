"""No loss on failover: a real broker, a primary and a standby, the primary killed under load.

Each case (``tests/support/pg_replication.py``): a primary and a hot standby streaming
through a proxy (the replication link), the ledger migrated on the primary, and an
in-process broker (the session's OpenBao, policies and keys) whose ledger DSN is the libpq
multi-host DSN ``postgresql://…@primary,standby/broker?target_session_attrs=read-write``
(the primary's address is a second proxy). ``_WORKERS`` clients issue ``stripe/test`` in a
loop, each 201 recorded with its grant id. Then, under load: the link is stalled for
``stall`` seconds (the standby falls behind, as on a congested network); the primary's
machine goes: its address and the link fall silent (no refusal, no reset: what the link
held back is lost) and its whole process group is SIGKILLed; the standby is promoted
(``pg_promote``); the same broker process finds it through the DSN by itself. Load goes on
until ``_AFTER`` more 201s came from the new primary.

Then, on the promoted standby: every 201'd grant's ``grant.issued`` row is looked up;
``seq`` is 1..n; the first row written after the failover chains onto the standby's head
at promotion; ``broker verify`` passes on the database alone. Synchronous replication
must lose nothing, also against the checkpoint the broker signed last before the kill.
Asynchronous replication is measured, not asserted: the figures are printed and written to
``.broker/failover/<case>.json`` (untracked) for docs/failover.md.

The last test shows why the broker connects host by host (``broker.ledger.hosts``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from broker.app import create_app
from broker.errors import LedgerNotReplicated
from broker.ledger import ReplicationState, apply_migrations, replication_state
from broker.ledger.hosts import HostsInTurn
from broker.settings import Settings
from broker.web.keys import METRICS
from tests.support.brokers import start_broker
from tests.support.commands import broker_verify
from tests.support.faults import running_proxy
from tests.support.http import post_credentials
from tests.support.ledger import assert_gapless, select_events
from tests.support.paths import REPO
from tests.support.pg_replication import ReplicatedPair, replicated_pair
from tests.support.polling import until

pytestmark = pytest.mark.stack

_WORKERS = 8
_BEFORE = 150  # 201s from the first primary before the fault
_AFTER = 100  # 201s from the promoted standby before the load stops
_PHASE_SECONDS = 1.5  # load before the fault, and after the broker issues again
_RECOVERY_TIMEOUT = 30.0
_RESULTS = REPO / ".broker" / "failover"
_WRITER = "broker_writer"


@dataclass(frozen=True)
class Case:
    name: str
    synchronous: bool
    stall: float  # seconds the link holds WAL back before the primary dies


_CASES = [
    Case("synchronous-stalled", synchronous=True, stall=1.0),
    Case("asynchronous", synchronous=False, stall=0.0),
    Case("asynchronous-stalled", synchronous=False, stall=1.0),
]


@dataclass
class Attempt:
    sent: float
    done: float
    status: int  # 0: no HTTP answer
    code: str | None = None
    grant_id: uuid.UUID | None = None


@dataclass
class Load:
    """``_WORKERS`` clients issuing ``stripe/test`` in a loop until ``stop``."""

    http: aiohttp.ClientSession
    url: str
    token: str
    attempts: list[Attempt] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(_WORKERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def issued_since(self, moment: float) -> int:
        return sum(1 for a in self.attempts if a.status == 201 and a.sent >= moment)

    async def wait_issued_since(self, moment: float, count: int) -> float:
        """Until ``count`` 201s for requests sent after ``moment``; the seconds it took."""
        start = time.monotonic()
        while self.issued_since(moment) < count:
            if time.monotonic() - start > _RECOVERY_TIMEOUT:
                raise AssertionError(
                    f"{self.issued_since(moment)} of {count} issued in {_RECOVERY_TIMEOUT} s;"
                    f" answers: {Counter((a.status, a.code) for a in self.attempts)}"
                )
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    async def _worker(self) -> None:
        while not self._stop.is_set():
            attempt = await self._issue()
            self.attempts.append(attempt)
            if attempt.status != 201:
                await asyncio.sleep(0.01)  # the ledger is down: do not spin

    async def _issue(self) -> Attempt:
        sent = time.monotonic()
        try:
            async with post_credentials(self.http, self.url, self.token, "stripe/test") as r:
                body: Any = await r.json() if r.content_type == "application/json" else None
                if r.status == 201:
                    return Attempt(sent, time.monotonic(), 201, grant_id=uuid.UUID(body["id"]))
                code = body["error"]["code"] if isinstance(body, dict) else None
                return Attempt(sent, time.monotonic(), r.status, code)
        except (aiohttp.ClientError, TimeoutError) as e:
            return Attempt(sent, time.monotonic(), 0, type(e).__name__)


async def _migrate(pair: ReplicatedPair) -> str:
    """The ledger on the primary, as ``broker migrate`` does; the writer's DSN (both hosts)."""
    password = secrets.token_urlsafe(16)
    await apply_migrations(
        pair.primary.dsn("broker"), writer_role=_WRITER, writer_password=password
    )
    return pair.dsn(_WRITER, password, "broker")


async def _refused_without_a_synchronous_standby(settings: Settings) -> str:
    """What a broker that requires a synchronous standby says at start-up."""
    runner = web.AppRunner(create_app(settings), access_log=None)
    try:
        with pytest.raises(LedgerNotReplicated) as refused:
            await runner.setup()
    finally:
        await runner.cleanup()
    return refused.value.message


async def _newest_checkpoint(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        size: int = await conn.fetchval("SELECT coalesce(max(size), 0) FROM ledger.checkpoints")
    finally:
        await conn.close()
    return size


def _record(case: Case, result: dict[str, Any]) -> None:
    """Print the figures and keep them in ``.broker/failover/<case>.json`` (untracked)."""
    _RESULTS.mkdir(parents=True, exist_ok=True)
    (_RESULTS / f"{case.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfailover {case.name}: {json.dumps(result)}")


@dataclass
class Failover:
    """When each step happened (monotonic seconds) and what the standby had."""

    began: float = 0.0
    stalled: float = 0.0
    killed: float = 0.0
    promoted: float = 0.0
    head_seq: int = 0
    head_hash: bytes | None = None
    kept_note: str = ""  # the newest checkpoint the broker had signed when the primary died


async def _fail_over(case: Case, pair: ReplicatedPair, load: Load, witness: Path) -> Failover:
    """Load, stall, kill, promote, load again (see the module docstring)."""
    at = Failover(began=time.monotonic())
    # Long enough for the broker to sign a checkpoint before anything goes wrong.
    await load.wait_issued_since(at.began, _BEFORE)
    await until(witness.exists, "the first signed checkpoint", interval=0.05)
    await asyncio.sleep(max(0.0, at.began + _PHASE_SECONDS - time.monotonic()))
    at.stalled = time.monotonic()
    if case.stall:
        pair.link.stall()
        await asyncio.sleep(case.stall)
    at.kept_note = await asyncio.to_thread(witness.read_text)
    at.killed = time.monotonic()
    await pair.kill_primary()
    at.head_seq, at.head_hash = await pair.standby_head()
    await pair.promote()
    at.promoted = time.monotonic()
    await load.wait_issued_since(at.promoted, _AFTER)
    await asyncio.sleep(_PHASE_SECONDS)  # a checkpoint attempt on the new primary
    return at


@pytest.mark.parametrize("case", _CASES, ids=lambda c: c.name)
async def test_failover_under_load(
    case: Case,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    async with replicated_pair(synchronous=case.synchronous) as pair:
        witness = pair.primary.data_dir.parent / "checkpoint.witness"
        settings = broker_settings.with_overrides(
            database_url=await _migrate(pair),
            replica_id=f"failover-{case.name}",
            checkpoint_witness_path=witness,
            ledger_synchronous_standby="required",
        )
        if not case.synchronous:
            refusal = await _refused_without_a_synchronous_standby(settings)
            assert "synchronous_standby_names is empty" in refusal, refusal
            assert "BROKER_LEDGER_SYNCHRONOUS_STANDBY=not-required" in refusal, refusal
            settings = settings.with_overrides(ledger_synchronous_standby="not-required")
        # The writer role sees a WAL sender but not its state (the start-up check would rest
        # on the configuration); with pg_read_all_stats it sees what the superuser sees.
        superuser = pair.primary.dsn("broker")
        assert (await _state(superuser)).streaming == int(case.synchronous)
        assert (await _state(settings.database_url)).streaming is None
        await _execute(superuser, f"GRANT pg_read_all_stats TO {_WRITER}")
        assert (await _state(settings.database_url)).streaming == int(case.synchronous)

        running = await start_broker(settings)
        load = Load(http, running.url, tokens["alice"])
        try:
            load.start()
            try:
                at = await _fail_over(case, pair, load, witness)
            finally:
                await load.stop()
        finally:
            await running.runner.cleanup()  # its last checkpoint attempt included
        tamper_alarms = running.app[METRICS].registry.get_sample_value(
            "broker_ledger_tamper_detected_total"
        )
        new_primary = pair.standby.dsn("broker")

        # Every 201, and whether its row survived.
        issued = {  # grant id -> seq of its grant.issued row
            r["grant_id"]: r["seq"]
            for r in await select_events(new_primary, "grant_id, seq", "event = 'grant.issued'")
        }
        answered = [a for a in load.attempts if a.status == 201]
        assert len({a.grant_id for a in answered}) == len(answered)
        lost = [a for a in answered if a.grant_id not in issued]
        before_kill = [a for a in answered if a.done <= at.killed]
        during_stall = [a for a in answered if at.stalled <= a.sent <= at.killed]
        after_failover = [a for a in answered if a.sent >= at.promoted]
        first_after = min(a.done for a in answered if a.sent >= at.killed)

        # The chain goes on from the standby's head: gapless, linked, verified.
        await assert_gapless(new_primary)
        following = await select_events(new_primary, "*", "seq = $1", at.head_seq + 1)
        assert following, "nothing was written after the failover"
        after = following[0]
        assert after["replica"] == settings.replica_id
        assert bytes(after["prev_hash"]) == at.head_hash
        assert all(issued[a.grant_id] > at.head_seq for a in after_failover if a.grant_id)
        verified = await broker_verify(new_primary, settings)
        assert verified.returncode == 0, verified.report
        kept = pair.standby.data_dir.parent / "kept-checkpoint.txt"
        kept.write_text(at.kept_note)
        against_kept = await broker_verify(new_primary, settings, "--trusted-checkpoint", str(kept))
        checkpoint = await _newest_checkpoint(new_primary)

        _record(
            case,
            {
                "replication": "synchronous" if case.synchronous else "asynchronous",
                "link_stalled_seconds": case.stall,
                "workers": _WORKERS,
                "issued_per_second_before_the_fault": round(
                    len(before_kill) / (at.killed - at.began), 1
                ),
                "answered_201": len(answered),
                "answered_201_before_the_kill": len(before_kill),
                "answered_201_for_requests_sent_during_the_stall": len(during_stall),
                "answered_201_after_promotion": len(after_failover),
                "lost": len(lost),
                "other_answers": {
                    f"{s} {c}": n
                    for (s, c), n in Counter(
                        (a.status, a.code) for a in load.attempts if a.status != 201
                    ).items()
                },
                "standby_head_at_promotion": at.head_seq,
                "seconds_kill_to_promoted": round(at.promoted - at.killed, 2),
                "seconds_kill_to_first_201": round(first_after - at.killed, 2),
                "verify_database_alone_ok": verified.report["ok"],
                "verify_against_the_kept_checkpoint_ok": against_kept.report["ok"],
                "verify_against_the_kept_checkpoint_problems": against_kept.report["problems"][:1],
                "tamper_alarms_on_the_broker": tamper_alarms,
                "newest_checkpoint_on_the_new_primary": checkpoint,
                "command": ".venv/bin/pytest -s -q"
                f" 'tests/test_ledger_failover.py::test_failover_under_load[{case.name}]'",
            },
        )
        assert len(before_kill) >= _BEFORE
        if case.synchronous:
            assert not lost, f"{len(lost)} credentials answered 201 lost their issued row"
            # With the standby cut off, nothing more was handed out.
            assert not during_stall, f"{len(during_stall)} 201s while the standby had nothing"
            assert against_kept.returncode == 0, against_kept.report
            assert not tamper_alarms
            assert checkpoint > at.head_seq, "no checkpoint signed after the failover"


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _state(dsn: str) -> ReplicationState:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await replication_state(conn)
    finally:
        await conn.close()


async def test_a_silent_first_host_costs_only_its_share_of_the_timeout(
    broker_settings: Settings,
) -> None:
    """Why the broker connects host by host: asyncpg spends its one timeout on the first
    host of a multi-host DSN, so a primary that vanished without a word (no refusal, no
    reset) would hide the standby promoted in its place."""
    writer = urlsplit(broker_settings.database_url)
    assert writer.hostname and writer.port
    async with running_proxy(writer.hostname, writer.port) as vanished:
        vanished.silence()
        hosts = f"127.0.0.1:{vanished.port},{writer.hostname}:{writer.port}"
        dsn = writer._replace(
            netloc=f"{writer.username}:{writer.password}@{hosts}",
            query="target_session_attrs=read-write",
        ).geturl()
        with pytest.raises(TimeoutError):
            await asyncpg.connect(dsn, timeout=1.0)
        connect = HostsInTurn()
        took = []
        for _ in range(2):
            start = time.monotonic()
            conn = await connect(dsn, timeout=1.0)
            took.append(time.monotonic() - start)
            try:
                assert await conn.fetchval("SELECT current_user") == writer.username
            finally:
                await conn.close()
    # The first attempt waits out the silent host's half; the next starts where it worked.
    assert 0.5 <= took[0] < 1.0, took
    assert took[1] < 0.4, took
