"""The ledger against the real PostgreSQL: privileges, triggers, tamper detection, fail closed.

Every test that tampers (or tries to) runs in a database of its own (``fresh_ledger_db``):
the session's ``broker`` database is shared with tests that expect it to verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import hvac
import hvac.exceptions
import pytest

from broker.errors import LedgerUnavailable
from broker.ledger import CheckpointVerifier, NewEvent, verify_ledger
from broker.ledger.chain import chain_hash
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.commands import broker_verify
from tests.support.forgery import as_superuser, payload, rechain, replace_all_rows
from tests.support.ledger import fetch_rows
from tests.support.ledger_db import (
    LedgerDb,
    fresh_ledger_db,
    populate,
    running_ledger,
    sample_event,
    signer_for,
)

_TABLES = (
    "ledger.events",
    "ledger.checkpoints",
    "ledger.policy_versions",
    "ledger.tree_nodes",
    "ledger.verified_heads",
)
_TRIGGERS = {
    "events_chain",
    "events_no_update_delete",
    "events_no_truncate",
    "checkpoints_no_update_delete",
    "checkpoints_no_truncate",
    "policy_versions_no_update_delete",
    "policy_versions_no_truncate",
    "tree_nodes_no_update_delete",
    "tree_nodes_no_truncate",
    "verified_heads_no_update_delete",
    "verified_heads_no_truncate",
}

# The tamper scenarios: 25 rows, signed checkpoints at 10 and 20, 5 rows unsigned.
_ROWS = 25
_CHECKPOINTS = (10, 20)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _verify_in_process(dsn: str, settings: Settings) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        verifier = CheckpointVerifier([signer_for(settings).verifier_key()])
        report = await verify_ledger(conn, verifier=verifier, origin=settings.ledger_origin)
        return report.to_json()
    finally:
        await conn.close()


# --- what the writer role can and cannot do -------------------------------------------------


async def test_session_ledger_privileges_and_triggers(broker_settings: Settings) -> None:
    """Read-only look at the shared database: grants, ownership, ALWAYS triggers."""
    conn = await asyncpg.connect(broker_settings.database_url, timeout=10)
    try:
        role = await conn.fetchval("SELECT current_user")
        assert role == "broker_writer"
        attrs = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication"
            " FROM pg_roles WHERE rolname = current_user"
        )
        assert not any(attrs.values()), dict(attrs)
        for table in _TABLES:
            for priv in ("UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                assert not await conn.fetchval(
                    "SELECT has_table_privilege(current_user, $1, $2)", table, priv
                ), (table, priv)
            for priv in ("SELECT", "INSERT"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege(current_user, $1, $2)", table, priv
                ), (table, priv)
            owner = await conn.fetchval(
                "SELECT tableowner FROM pg_tables WHERE schemaname || '.' || tablename = $1",
                table,
            )
            assert owner != role
        assert not await conn.fetchval(
            "SELECT has_schema_privilege(current_user, 'ledger', 'CREATE')"
        )
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE r.rolname = current_user"
        )
        assert owned == 0, "the writer role must own nothing"
        triggers = dict(
            await conn.fetch(
                "SELECT t.tgname, t.tgenabled::text FROM pg_trigger t"
                " JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'ledger' AND NOT t.tgisinternal"
            )
        )
        assert set(triggers) == _TRIGGERS
        assert set(triggers.values()) == {"A"}, triggers  # ENABLE ALWAYS
    finally:
        await conn.close()


async def test_writer_cannot_change_or_remove_rows(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "writer_dml") as db:
        await populate(db, broker_settings, rows=3, checkpoint_at=(3,))
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            await conn.execute(
                "INSERT INTO ledger.policy_versions (version, first_seen, documents)"
                " VALUES ('v1', now(), '{}')"
            )
            statements = [
                "UPDATE ledger.events SET outcome = 'denied' WHERE seq = 2",
                "UPDATE ledger.checkpoints SET note = ''",
                "UPDATE ledger.policy_versions SET documents = '{}'",
            ]
            for table in _TABLES:
                statements += [
                    f"DELETE FROM {table}",  # noqa: S608 - constant table names
                    f"TRUNCATE {table}",
                    f"TRUNCATE {table} CASCADE",
                ]
            for sql in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
            before = await fetch_rows(conn)
        finally:
            await conn.close()
        assert [r["seq"] for r in before] == [1, 2, 3]
        report = await _verify_in_process(db.writer_dsn, broker_settings)
        assert report["ok"] and report["rows"] == 3, report


async def test_writer_cannot_alter_disable_or_drop(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "writer_ddl") as db:
        await populate(db, broker_settings, rows=2, checkpoint_at=())
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            for sql in (
                "ALTER TABLE ledger.events DISABLE TRIGGER ALL",
                "ALTER TABLE ledger.events DISABLE TRIGGER events_no_update_delete",
                "ALTER TABLE ledger.events ENABLE REPLICA TRIGGER events_chain",
                "ALTER TABLE ledger.events ADD COLUMN note text",
                "ALTER TABLE ledger.events ALTER COLUMN seq DROP NOT NULL",
                "ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL",
                "ALTER TABLE ledger.policy_versions DISABLE TRIGGER ALL",
                "DROP TRIGGER events_no_update_delete ON ledger.events",
                "DROP TABLE ledger.events",
                "DROP TABLE ledger.checkpoints",
                "DROP SCHEMA ledger CASCADE",
                "CREATE OR REPLACE FUNCTION ledger.check_chain() RETURNS trigger"
                " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
                "CREATE TABLE ledger.shadow (x int)",
                "ALTER TABLE ledger.events RENAME TO events_old",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
            # GRANT without the grant option only warns ("no privileges were granted").
            await conn.execute("GRANT UPDATE, DELETE ON ledger.events TO PUBLIC")
            assert not await conn.fetchval(
                "SELECT has_table_privilege('public', 'ledger.events', 'UPDATE')"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE ledger.events SET outcome = 'x'")
        finally:
            await conn.close()
        assert (await _verify_in_process(db.writer_dsn, broker_settings))["ok"]


async def test_writer_cannot_insert_rows_that_do_not_extend_the_chain(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "writer_chain") as db:
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            await populate(db, broker_settings, rows=3, checkpoint_at=())
            rows = await fetch_rows(conn)

            def forged(seq: int, prev: bytes) -> tuple[Any, ...]:
                # Correctly hashed for its claimed place: only the linkage is wrong.
                row = {**rows[0], "seq": seq, "prev_hash": prev}
                row["hash"] = chain_hash(prev, payload(row))
                return _as_args(row)

            head = rows[-1]
            cases = [
                (5, head["hash"]),  # a gap
                (3, rows[1]["hash"]),  # a second seq 3: a fork
                (4, rows[1]["hash"]),  # right seq, wrong predecessor
                (4, bytes(32)),  # right seq, genesis predecessor
                (1, bytes(32)),  # a second genesis
            ]
            for seq, prev in cases:
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.execute(_INSERT, *forged(seq, prev))
                assert "chain" in str(info.value) or isinstance(
                    info.value, asyncpg.UniqueViolationError
                ), (seq, info.value)
            # The rule is the trigger's, not only the primary key's: a gap is refused too.
            with pytest.raises(asyncpg.RaiseError, match="does not extend"):
                await conn.execute(_INSERT, *forged(4, rows[0]["hash"]))
            # Time never runs backwards: each month is then one contiguous run of seq.
            with pytest.raises(asyncpg.RaiseError, match="recorded before its predecessor"):
                await conn.execute(_INSERT, *forged(4, head["hash"]))
            # A correct extension is accepted (the writer's one permitted act).
            rows[0]["recorded_at"] = head["recorded_at"]
            await conn.execute(_INSERT, *forged(4, head["hash"]))
            assert await conn.fetchval("SELECT max(seq) FROM ledger.events") == 4
        finally:
            await conn.close()


async def test_empty_ledger_refuses_a_first_row_that_is_not_genesis(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "writer_genesis") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.append(sample_event(1))
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            template = (await fetch_rows(conn))[0]
            await as_superuser(db, "DELETE FROM ledger.events")
        finally:
            await conn.close()
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            for seq, prev in ((2, bytes(32)), (1, b"\x01" * 32)):
                row = {**template, "seq": seq, "prev_hash": prev}
                row["hash"] = chain_hash(prev, payload(row))
                with pytest.raises(asyncpg.RaiseError, match="first row"):
                    await conn.execute(_INSERT, *_as_args(row))
        finally:
            await conn.close()


async def test_replication_role_cannot_silence_the_triggers(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "replica_role") as db:
        await populate(db, broker_settings, rows=3, checkpoint_at=(3,))
        # The writer may not set it at all (superuser-only parameter) ...
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SET session_replication_role = replica")
            for sql in ("UPDATE ledger.events SET outcome = 'x'", "DELETE FROM ledger.events"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
        finally:
            await conn.close()
        # ... and even a superuser who sets it still hits the ALWAYS triggers.
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            await conn.execute("SET session_replication_role = replica")
            assert await conn.fetchval("SHOW session_replication_role") == "replica"
            for sql in (
                "UPDATE ledger.events SET outcome = 'x' WHERE seq = 2",
                "DELETE FROM ledger.events WHERE seq = 3",
                "TRUNCATE ledger.events",
                "UPDATE ledger.checkpoints SET note = ''",
                "DELETE FROM ledger.checkpoints",
                "TRUNCATE ledger.checkpoints",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await conn.execute(sql)
            row = (await fetch_rows(conn))[0]
            row = {**row, "seq": 9, "prev_hash": bytes(32)}
            row["hash"] = chain_hash(bytes(32), payload(row))
            with pytest.raises(asyncpg.RaiseError, match="chain"):
                await conn.execute(_INSERT, *_as_args(row))
        finally:
            await conn.close()
        report = await _verify_in_process(db.writer_dsn, broker_settings)
        assert report["ok"] and report["rows"] == 3, report


_COLUMNS = (
    "seq", "recorded_at", "event", "replica", "subject", "subject_kind", "secret", "role",
    "policy_version", "grant_id", "lease_id", "expires_at", "outcome", "request_id", "body",
    "dedupe_key", "prev_hash", "hash",
)  # fmt: skip
_INSERT = (
    f"INSERT INTO ledger.events ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608
    f"({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"
)


def _as_args(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(json.dumps(row[c]) if c == "body" else row[c] for c in _COLUMNS)


# --- superuser tampering, caught by `broker verify` (a real subprocess) ---------------------


async def _seeded(db: LedgerDb, settings: Settings) -> list[dict[str, Any]]:
    return await populate(db, settings, rows=_ROWS, checkpoint_at=_CHECKPOINTS)


def _assert_tampered(run: Any, first_bad_seq: int | None = None) -> dict[str, Any]:
    report: dict[str, Any] = run.report
    assert run.returncode == 1, (run.returncode, report, run.stderr[-2000:])
    assert report["ok"] is False, report
    assert report["problems"], report
    if first_bad_seq is not None:
        assert report["first_bad_seq"] == first_bad_seq, report
    return report


async def test_untampered_ledger_verifies(stack: DevStack, broker_settings: Settings) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tamper_none") as db:
        await _seeded(db, broker_settings)
        for dsn in (db.superuser_dsn, db.writer_dsn):
            run = await broker_verify(dsn, broker_settings)
            assert run.returncode == 0, (run.report, run.stderr[-2000:])
            report = run.report
            assert report["ok"] is True
            assert report["rows"] == report["head_seq"] == _ROWS
            assert report["checkpoints"] == len(_CHECKPOINTS)
            assert report["latest_checkpoint"] == _CHECKPOINTS[-1]
            assert report["unsigned_tail"] == _ROWS - _CHECKPOINTS[-1]
            assert report["first_bad_seq"] is None and report["problems"] == []


@pytest.mark.parametrize("seq", [23, 15], ids=["unsigned-tail", "under-checkpoint"])
async def test_edited_row_is_detected(stack: DevStack, broker_settings: Settings, seq: int) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tamper_edit") as db:
        await _seeded(db, broker_settings)
        await as_superuser(
            db,
            'UPDATE ledger.events SET body = body || \'{"reason": "nothing to see"}\''
            " WHERE seq = $1",
            seq,
        )
        _assert_tampered(await broker_verify(db.superuser_dsn, broker_settings), seq)


@pytest.mark.parametrize("seq", [23, 15], ids=["unsigned-tail", "under-checkpoint"])
async def test_deleted_row_is_detected(
    stack: DevStack, broker_settings: Settings, seq: int
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tamper_delete") as db:
        await _seeded(db, broker_settings)
        await as_superuser(db, "DELETE FROM ledger.events WHERE seq = $1", seq)
        _assert_tampered(await broker_verify(db.writer_dsn, broker_settings), seq)


async def test_forged_row_inserted_in_the_middle_is_detected(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tamper_insert") as db:
        rows = await _seeded(db, broker_settings)
        at = 15
        # The forger renumbers the rows after `at` and writes a well-formed row there.
        forged = {**rows[at - 2], "seq": at, "prev_hash": rows[at - 2]["hash"]}
        forged["body"] = {"engine": "database", "ttl": 900, "reason": "backdated"}
        forged["hash"] = chain_hash(forged["prev_hash"], payload(forged))
        shifted = [{**r, "seq": r["seq"] + 1} for r in rows[at - 1 :]]
        await replace_all_rows_conn(db, [*rows[: at - 1], forged, *shifted])
        report = _assert_tampered(await broker_verify(db.superuser_dsn, broker_settings))
        assert report["rows"] == _ROWS + 1
        assert report["first_bad_seq"] is not None and report["first_bad_seq"] <= at + 1


@pytest.mark.parametrize(
    ("edit_seq", "first_bad"),
    [(15, 11), (2, 1)],
    ids=["after-first-checkpoint", "before-every-checkpoint"],
)
async def test_rewritten_chain_is_caught_by_the_signed_checkpoint(
    stack: DevStack, broker_settings: Settings, edit_seq: int, first_bad: int
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tamper_rewrite") as db:
        rows = await _seeded(db, broker_settings)
        rows[edit_seq - 1] = {**rows[edit_seq - 1], "subject": "mallory"}
        rewritten = rechain(rows)
        # The forged chain is internally perfect: only the signed checkpoint can tell.
        assert rewritten[: edit_seq - 1] == rows[: edit_seq - 1]
        await replace_all_rows_conn(db, rewritten)
        report = _assert_tampered(await broker_verify(db.superuser_dsn, broker_settings))
        # verify's documented rule: the first row after the last checkpoint that matches.
        assert report["first_bad_seq"] == first_bad, report
        assert any("checkpoint" in p["problem"] for p in report["problems"]), report
        assert not any("edited" in p["problem"] for p in report["problems"]), report


async def test_truncated_and_replayed_ledger_is_detected(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tamper_truncate") as db:
        rows = await _seeded(db, broker_settings)
        # TRUNCATE, then replay the first 12 rows verbatim (and so a perfect chain of 12).
        await replace_all_rows_conn(db, rows[:12])
        report = _assert_tampered(await broker_verify(db.writer_dsn, broker_settings), 13)
        assert report["rows"] == 12
        assert any("truncated" in p["problem"] for p in report["problems"]), report


async def test_rewrite_with_checkpoints_deleted_is_detected(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """A superuser who rewrites the chain also removes the checkpoints that would betray it.

    The signed notes in the database are gone, so two things still catch it: a checkpoint
    the auditor kept outside the database (``--trusted-checkpoint``), and the rule that
    rows older than ``--max-unsigned-age`` must be covered by a signed checkpoint.
    """
    async with fresh_ledger_db(stack, broker_settings, "tamper_nocp") as db:
        rows = await _seeded(db, broker_settings)
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            kept = await conn.fetchval(
                "SELECT note FROM ledger.checkpoints ORDER BY size DESC LIMIT 1"
            )
        finally:
            await conn.close()
        trusted = tmp_path / "checkpoint.note"
        trusted.write_text(kept)

        rows[4] = {**rows[4], "subject": "mallory"}
        await replace_all_rows_conn(db, rechain(rows))
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            async with conn.transaction():
                await conn.execute("ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL")
                await conn.execute("DELETE FROM ledger.checkpoints")
                await conn.execute(
                    "ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER"
                    " checkpoints_no_update_delete"
                )
                await conn.execute(
                    "ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate"
                )
        finally:
            await conn.close()
        # Without outside knowledge and with fresh rows, the rewrite is self-consistent...
        run = await broker_verify(db.superuser_dsn, broker_settings)
        assert run.report["checkpoints"] == 0
        # ...but the auditor's kept checkpoint betrays it, naming the first unproven row,
        report = _assert_tampered(
            await broker_verify(
                db.superuser_dsn, broker_settings, "--trusted-checkpoint", str(trusted)
            ),
            1,
        )
        assert any("trusted" in p["problem"] for p in report["problems"]), report
        # ...and so does the age rule: these rows are not covered by any checkpoint.
        _assert_tampered(
            await broker_verify(db.superuser_dsn, broker_settings, "--max-unsigned-age", "0"), 1
        )


async def replace_all_rows_conn(db: LedgerDb, rows: list[dict[str, Any]]) -> None:
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        await replace_all_rows(conn, rows)
    finally:
        await conn.close()


async def test_audit_verify_endpoint(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{broker.url}/v1/audit/verify", headers=_auth(tokens["carol"])) as r:
        assert r.status == 200, await r.text()
        report = await r.json()
    assert report["ok"] is True, report
    assert report["rows"] >= 1 and report["first_bad_seq"] is None
    async with http.get(f"{broker.url}/v1/audit/verify", headers=_auth(tokens["alice"])) as r:
        assert r.status == 403, await r.text()
        assert "error" in await r.json()
    async with http.get(f"{broker.url}/v1/audit/verify") as r:
        assert r.status == 401


# --- fail closed: no ledger, no credential ----------------------------------------------------


def _orders_ro_leases(stack: DevStack) -> set[str]:
    client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=10)
    try:
        resp = client.adapter.list("/v1/sys/leases/lookup/database/creds/orders-ro/")
    except hvac.exceptions.InvalidPath:
        return set()
    return set(resp["data"]["keys"])


async def test_issuing_fails_closed_when_the_ledger_is_down(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    url = f"{broker.url}/v1/credentials"
    request = {"secret": "db/orders-ro", "reason": "fail-closed test"}
    async with http.post(url, json=request, headers=_auth(tokens["alice"])) as r:
        assert r.status == 201, await r.text()  # healthy first: the path works
    before = await asyncio.to_thread(_orders_ro_leases, stack)
    assert before, "the lease listing must see the lease just minted"
    try:
        await asyncio.to_thread(stack.pg.stop)
        async with http.post(url, json=request, headers=_auth(tokens["alice"])) as r:
            text = await r.text()
            assert r.status == 503, text
            body = json.loads(text)
        assert body["error"]["code"] in ("ledger_unavailable", "unavailable"), body
        assert "credential" not in body and "password" not in text, body
        async with http.get(f"{broker.url}/v1/health") as r:
            assert r.status == 503
            health = await r.json()
        assert health["checks"]["ledger"] == "unavailable", health
        after = await asyncio.to_thread(_orders_ro_leases, stack)
        assert not after - before, f"a lease was minted while the ledger was down: {after - before}"
    finally:
        if not stack.pg.is_running:
            await asyncio.to_thread(stack.pg.start)
    # Same broker process, no restart: it recovers on its own.
    deadline = time.monotonic() + 30
    last = ""
    while True:
        async with http.post(url, json=request, headers=_auth(tokens["alice"])) as r:
            last = f"{r.status} {await r.text()}"
            if r.status == 201:
                grant = json.loads(last.split(" ", 1)[1])
                break
        assert time.monotonic() < deadline, f"issuing did not recover after restart: {last}"
        await asyncio.sleep(0.25)
    assert grant["credential"]["username"]
    async with http.get(f"{broker.url}/v1/health") as r:
        assert r.status == 200, await r.text()


# --- the writer in one process: batching, gapless, dedupe ------------------------------------


async def test_concurrent_appends_are_batched_and_gapless(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "writer_concurrency") as db:
        batches: list[int] = []
        async with running_ledger(
            db.writer_dsn, broker_settings, on_commit=lambda n, _s, _h: batches.append(n)
        ) as ledger:
            results = await asyncio.gather(*(ledger.append(sample_event(i)) for i in range(300)))
            assert await ledger.checkpoint(signer_for(broker_settings)) is not None
        assert sorted(r.seq for r in results) == list(range(1, 301))  # type: ignore[type-var]
        assert not any(r.duplicate for r in results)
        assert sum(batches) == 300
        assert sum(batches) / len(batches) > 1, batches
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            rows = await fetch_rows(conn)
        finally:
            await conn.close()
        assert [r["seq"] for r in rows] == list(range(1, 301))
        by_seq = {r["seq"]: bytes(r["hash"]) for r in rows}
        assert all(by_seq[r.seq] == r.hash for r in results if r.seq is not None)
        report = await _verify_in_process(db.writer_dsn, broker_settings)
        assert report["ok"] and report["rows"] == 300 and report["unsigned_tail"] == 0, report


async def test_dedupe_key_records_once(stack: DevStack, broker_settings: Settings) -> None:
    async with fresh_ledger_db(stack, broker_settings, "writer_dedupe") as db:

        def ended(key: str) -> NewEvent:
            return NewEvent(event="grant.expired", outcome="expired", dedupe_key=key)

        async with (
            running_ledger(db.writer_dsn, broker_settings, replica="a") as one,
            running_ledger(db.writer_dsn, broker_settings, replica="b") as two,
        ):
            # Same writer, concurrently (one batch, or several).
            same = await asyncio.gather(*(one.append(ended("k-same")) for _ in range(10)))
            assert sum(not r.duplicate for r in same) == 1, same
            # Two writers on two pools, racing, several rounds.
            for round_ in range(10):
                key = f"k-race-{round_}"
                raced = await asyncio.gather(
                    *(w.append(ended(key)) for _ in range(3) for w in (one, two))
                )
                assert sum(not r.duplicate for r in raced) == 1, raced
                assert all(r.seq is None for r in raced if r.duplicate)
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            counts = dict(
                await conn.fetch(
                    "SELECT dedupe_key, count(*) FROM ledger.events GROUP BY dedupe_key"
                )
            )
            seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM ledger.events ORDER BY 1")]
        finally:
            await conn.close()
        assert counts == {"k-same": 1, **{f"k-race-{i}": 1 for i in range(10)}}, counts
        assert seqs == list(range(1, 12))
        assert (await _verify_in_process(db.writer_dsn, broker_settings))["ok"]


# --- canonical bytes survive Postgres jsonb ----------------------------------------------------

_LEGAL_BODIES: list[dict[str, Any]] = [
    {},
    {"reason": 'caf\u00e9 \u2014 \U0001f512 \u2028 "quoted" \\ back\tslash\n'},
    {"big": 2**70, "neg": -(2**63), "zero": 0, "flags": [True, False, None]},
    {"nested": {"b": [1, {"z": [], "a": {}}], "a": "x"}, "\u00fcnicode-key": 1},
    {"1": "numeric-looking key", "": "empty key", "long": "x" * 5000},
]


async def test_bodies_round_trip_through_jsonb(stack: DevStack, broker_settings: Settings) -> None:
    async with fresh_ledger_db(stack, broker_settings, "jsonb_roundtrip") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            for body in _LEGAL_BODIES:
                await ledger.append(NewEvent(event="broker.started", outcome="ok", body=body))
        report = await _verify_in_process(db.writer_dsn, broker_settings)
        assert report["ok"] and report["rows"] == len(_LEGAL_BODIES), report


async def test_float_body_cannot_raise_a_false_tamper_alarm(
    stack: DevStack, broker_settings: Settings
) -> None:
    """events.py: bodies "must be JSON without floats" -- but nothing enforces it.

    jsonb stores 1e16 as the number 10000000000000000, which reads back as an int, so the
    canonical bytes change and verify reports an honest row as edited. Either NewEvent
    refuses floats at the boundary, or the row must verify.
    """
    async with fresh_ledger_db(stack, broker_settings, "jsonb_float") as db:
        try:
            event = NewEvent(event="broker.started", outcome="ok", body={"elapsed": 1e16})
        except ValueError:
            return  # refused at the boundary: fine
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            try:
                await ledger.append(event)
            except LedgerUnavailable:
                return  # refused by the writer without harming the chain: fine
        report = await _verify_in_process(db.writer_dsn, broker_settings)
        assert report["ok"], report
