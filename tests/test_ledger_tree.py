"""The ledger at audit scale: Merkle proofs, verification from a head, monthly partitions,
archived segments and the migration of today's ledgers (issue 15's "Must show").

Proofs are checked against an RFC 6962 implementation written here from the RFC (leaf
0x00, node 0x01, split at the largest power of two below n), not the broker's own. Each
test runs in a private database (``fresh_ledger_db``): they tamper.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from broker.ledger import Checkpoint, CheckpointVerifier, NewEvent, verify_ledger
from broker.ledger.archive import archive_before, check_segment
from broker.ledger.chain import GENESIS, canonical_row, chain_hash
from broker.ledger.migrate import apply_migrations
from broker.ledger.proofs import consistency_document, inclusion_document
from broker.ledger.verify import record_verified_head
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.forgery import INSERT_EVENT, as_superuser, event_args
from tests.support.http import auth
from tests.support.ledger_db import (
    LedgerDb,
    fresh_ledger_db,
    running_ledger,
    sample_event,
    signer_for,
    writer_password,
    writer_role,
)
from tests.support.polling import poll

# --- RFC 6962, independently ----------------------------------------------------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1: MTH of the leaf *data*."""
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return _h(b"\x00" + leaves[0])
    k = _k(len(leaves))
    return _h(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.1: PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    """RFC 6962 2.1.2: SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def root_from_path(leaf: bytes, m: int, n: int, proof: list[bytes]) -> bytes:
    """Recompute MTH from a leaf and its PATH by following the RFC's recursion."""

    def up(m: int, n: int, proof: list[bytes]) -> bytes:
        if n == 1:
            assert not proof
            return _h(b"\x00" + leaf)
        k = _k(n)
        if m < k:
            return _h(b"\x01" + up(m, k, proof[:-1]) + proof[-1])
        return _h(b"\x01" + proof[-1] + up(m - k, n - k, proof[:-1]))

    return up(m, n, proof)


# --- helpers ------------------------------------------------------------------------------


def _row(seq: int, at: datetime, prev: bytes, subject: str) -> tuple[dict[str, Any], bytes]:
    row: dict[str, Any] = {
        "seq": seq,
        "recorded_at": at,
        "event": "grant.issued",
        "replica": "tree-test",
        "subject": subject,
        "subject_kind": "human",
        "secret": "db/orders-ro",
        "role": "engineering",
        "policy_version": None,
        "grant_id": uuid.uuid4(),
        "lease_id": None,
        "expires_at": at + timedelta(minutes=5),
        "outcome": "issued",
        "request_id": f"tree-{seq}",
        "body": {"ttl": 300, "reason": f"ticket {seq} \u2014 caf\u00e9"},
        "dedupe_key": None,
    }
    payload = canonical_row(**row)
    return {**row, "prev_hash": prev, "hash": chain_hash(prev, payload)}, payload


async def _seed_months(db: LedgerDb, months: list[datetime], per_month: int) -> list[bytes]:
    """As the owner, chained rows (triggers on) spread over old ``months``; the leaf data."""
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    leaves: list[bytes] = []
    try:
        await conn.execute("SELECT ledger.create_partitions($1, now())", months[0])
        prev, seq = GENESIS, 0
        for month in months:
            for i in range(per_month):
                seq += 1
                row, payload = _row(seq, month + timedelta(hours=i), prev, f"user-{seq % 5}")
                await conn.execute(INSERT_EVENT, *event_args(row))
                leaves.append(payload)
                prev = row["hash"]
    finally:
        await conn.close()
    return leaves


async def _verify(db: LedgerDb, settings: Settings, **kw: Any) -> dict[str, Any]:
    from broker.ledger import connect_one

    conn = await connect_one(db.writer_dsn)
    try:
        verifier = CheckpointVerifier([signer_for(settings).verifier_key()])
        report = await verify_ledger(
            conn, verifier=verifier, origin=settings.ledger_origin, max_unsigned_seconds=None, **kw
        )
        if kw.get("mode") != "from_checkpoint":
            await record_verified_head(conn, report, signer_for(settings), settings.ledger_origin)
        return report.to_json()
    finally:
        await conn.close()


async def _leaves(db: LedgerDb) -> list[bytes]:
    from broker.ledger import connect_one
    from broker.ledger.chain import canonical_event
    from broker.ledger.events import row_to_event

    conn = await connect_one(db.superuser_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM ledger.events ORDER BY seq")
        return [canonical_event(row_to_event(r)) for r in rows]
    finally:
        await conn.close()


def _b(items: list[str]) -> list[bytes]:
    return [base64.b64decode(x) for x in items]


# --- proofs --------------------------------------------------------------------------------


async def test_proofs_match_an_independent_rfc6962(
    stack: DevStack, broker_settings: Settings
) -> None:
    """Inclusion and consistency proofs (stored nodes of 256 leaves and up, the rest from
    rows) equal RFC 6962's PATH/SUBPROOF computed here, and the signed roots equal MTH."""
    signer = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "tree_proofs") as db:
        sizes = []
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            for i in range(1, 701):
                await ledger.append(sample_event(i))
                if i in (1, 255, 256, 257, 600, 700):
                    cp = await ledger.checkpoint(signer)
                    assert cp is not None and cp.root is not None
                    sizes.append(cp.size)
        leaves = await _leaves(db)
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM ledger.tree_nodes")
            assert stored == 2 + 1  # two blocks of 256 and their parent
            for size in sizes:
                root = base64.b64decode((await consistency_document(conn, size, size))["new_root"])
                assert root == mth(leaves[:size]), size
                for seq in {min(2, size), 1, size // 2 + 1, size}:
                    doc = await inclusion_document(conn, seq, size)
                    assert _b(doc["proof"]) == path(seq - 1, leaves[:size]), (seq, size)
                    assert root_from_path(leaves[seq - 1], seq - 1, size, _b(doc["proof"])) == root
                    assert base64.b64decode(doc["leaf_hash"]) == _h(b"\x00" + leaves[seq - 1])
                for old in sizes:
                    if old <= size:
                        doc = await consistency_document(conn, old, size)
                        assert _b(doc["proof"]) == subproof(old, leaves[:size], True), (old, size)
                        assert base64.b64decode(doc["old_root"]) == mth(leaves[:old])
        finally:
            await conn.close()


async def test_blocks_two_writers_share_are_built_from_their_rows(
    stack: DevStack, broker_settings: Settings
) -> None:
    """A writer keeps the tree node of each block it committed whole (the checkpointer
    then reads none of its rows); a block another replica wrote into is read from the
    table. Either way the signed roots equal RFC 6962's MTH of the rows."""
    signer = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "tree_cache") as db:
        async with (
            running_ledger(db.writer_dsn, broker_settings, replica="a") as a,
            running_ledger(db.writer_dsn, broker_settings, replica="b") as b,
        ):
            for i in range(1, 257):  # block 0: all a's
                await a.append(sample_event(i))
            for i in range(257, 600):  # block 1 and on: a and b take turns
                await (a if i % 3 else b).append(sample_event(i))
            assert 0 in a.writer.recent_blocks
            assert 1 not in a.writer.recent_blocks and 1 not in b.writer.recent_blocks
            first = await a.checkpoint(signer)
            await b.append(sample_event(600))
            second = await b.checkpoint(signer)
        leaves = await _leaves(db)
        for cp in (first, second):
            assert cp is not None and cp.root == mth(leaves[: cp.size]), cp
        assert 0 not in a.writer.recent_blocks  # used once, then forgotten


async def test_forged_proofs_are_refused(stack: DevStack, broker_settings: Settings) -> None:
    """A proof with one hash changed, or for another leaf, does not verify."""
    from broker.ledger.merkle import ProofError, verify_consistency, verify_inclusion

    signer = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "tree_forged") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            for i in range(1, 301):
                await ledger.append(sample_event(i))
                if i in (100, 300):
                    await ledger.checkpoint(signer)
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            doc = await inclusion_document(conn, 42)
            consistency = await consistency_document(conn, 100)
        finally:
            await conn.close()
    leaf, proof, root = base64.b64decode(doc["leaf_hash"]), _b(doc["proof"]), _b([doc["root"]])[0]
    verify_inclusion(leaf, 41, 300, proof, root)
    forged = [*proof[:2], _h(b"forged"), *proof[3:]]
    with pytest.raises(ProofError, match="leaf 41"):
        verify_inclusion(leaf, 41, 300, forged, root)
    with pytest.raises(ProofError):
        verify_inclusion(_h(b"\x00other row"), 41, 300, proof, root)
    old_root, new_root = _b([consistency["old_root"], consistency["new_root"]])
    cproof = _b(consistency["proof"])
    verify_consistency(100, 300, old_root, new_root, cproof)
    with pytest.raises(ProofError, match="size 100"):
        verify_consistency(100, 300, _h(b"another history"), new_root, cproof)
    with pytest.raises(ProofError):
        verify_consistency(100, 300, old_root, new_root, [*cproof[:-1], _h(b"x")])


async def test_proof_api_for_an_auditor(
    broker: RunningBroker, http: aiohttp.ClientSession, tokens: dict[str, str]
) -> None:
    """``GET /v1/audit/proofs/*`` on the live broker: checked with RFC 6962 here."""
    from broker.ledger.merkle import verify_consistency, verify_inclusion

    url = broker.url

    async def inclusion() -> tuple[int, Any]:
        async with http.get(
            f"{url}/v1/audit/proofs/inclusion?seq=1", headers=auth(tokens["carol"])
        ) as r:
            return r.status, await r.json()

    # The broker signs a checkpoint every second in the tests; the first may be pending.
    status, doc = await poll(inclusion, lambda result: result[0] == 200)
    assert status == 200, doc
    verify_inclusion(
        base64.b64decode(doc["leaf_hash"]),
        0,
        doc["tree_size"],
        _b(doc["proof"]),
        base64.b64decode(doc["root"]),
    )
    assert doc["event"]["seq"] == 1 and doc["checkpoint"].split("\n")[1] == str(doc["tree_size"])
    async with http.get(
        f"{url}/v1/audit/proofs/consistency?old=1", headers=auth(tokens["carol"])
    ) as r:
        assert r.status == 200
        c = await r.json()
    verify_consistency(
        1, c["new_size"], base64.b64decode(c["old_root"]), base64.b64decode(c["new_root"]),
        _b(c["proof"]),
    )  # fmt: skip
    for query, status in (("seq=0", 400), ("seq=x", 400), ("seq=1&size=999999999", 404)):
        async with http.get(
            f"{url}/v1/audit/proofs/inclusion?{query}", headers=auth(tokens["carol"])
        ) as r:
            body = await r.json()
            assert r.status == status, (query, body)
            assert set(body["error"]) >= {"code", "message"}
    async with http.get(
        f"{url}/v1/audit/proofs/inclusion?seq=1", headers=auth(tokens["alice"])
    ) as r:
        assert r.status == 403


# --- verification: full, incremental, from a kept checkpoint, inconsistent checkpoints ------


async def test_incremental_and_kept_checkpoint_verification(
    stack: DevStack, broker_settings: Settings
) -> None:
    signer = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "tree_incremental") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            for i in range(1, 401):
                await ledger.append(sample_event(i))
            kept = await ledger.checkpoint(signer)
            assert kept is not None
            full = await _verify(db, broker_settings)
            assert full["ok"] and full["mode"] == "full" and full["rows"] == 400, full
            for i in range(401, 451):
                await ledger.append(sample_event(i))
            await ledger.checkpoint(signer)
        inc = await _verify(db, broker_settings, mode="incremental")
        assert inc["ok"] and inc["mode"] == "incremental", inc
        assert (inc["verified_from"], inc["rows"]) == (400, 50)
        assert inc["root"] == full["root"] or inc["head_seq"] == 450
        note = signer.sign(kept)
        from_kept = await _verify(db, broker_settings, mode="from_checkpoint", from_checkpoint=note)
        assert from_kept["ok"] and from_kept["rows"] == 50, from_kept
        assert any(
            "consistent with the kept checkpoint at size 400" in n for n in from_kept["notes"]
        )

        # A kept checkpoint from another history: same size, another root.
        other = signer.sign(Checkpoint(kept.origin, 400, kept.head_hash, _h(b"other")))
        bad = await _verify(db, broker_settings, mode="from_checkpoint", from_checkpoint=other)
        assert not bad["ok"] and "kept checkpoint" in bad["problems"][0]["problem"], bad

        # A checkpoint in the database whose root is not the rows' (signed by the real key):
        # named by its size.
        head = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            h = bytes(await head.fetchval("SELECT hash FROM ledger.events WHERE seq = 420"))
        finally:
            await head.close()
        wrong = Checkpoint(kept.origin, 420, h, _h(b"not this tree"))
        await as_superuser(
            db,
            "INSERT INTO ledger.checkpoints (size, head_hash, root_hash, signed_at, key_id, note)"
            " VALUES ($1, $2, $3, now(), $4, $5)",
            420, h, wrong.root, signer.key_id, signer.sign(wrong),
        )  # fmt: skip
        report = await _verify(db, broker_settings)
        assert not report["ok"]
        assert any(
            "checkpoint at size 420" in p["problem"] and "Merkle root" in p["problem"]
            for p in report["problems"]
        ), report

        # A forged verified head (not signed by the key) is not trusted: full instead.
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.append(sample_event(451))
            newest = await ledger.checkpoint(signer)
            assert newest is not None
        forged = signer.sign(
            Checkpoint(f"{kept.origin}/verified", 451, newest.head_hash, newest.root)
        )
        await as_superuser(
            db,
            "INSERT INTO ledger.verified_heads (size, verified_at, full_scan, note)"
            " VALUES (451, now(), true, $1)",
            forged.replace(newest.origin, "forged", 1),
        )
        fallback = await _verify(db, broker_settings, mode="incremental")
        assert fallback["mode"] == "full" and fallback["notes"], fallback


async def test_rewrite_before_the_verified_head_is_found_by_a_full_run(
    stack: DevStack, broker_settings: Settings
) -> None:
    """Incremental runs trust what was verified; the full run (CLI, admin API) does not."""
    signer = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "tree_rewrite") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            for i in range(1, 301):
                await ledger.append(sample_event(i))
            await ledger.checkpoint(signer)
        assert (await _verify(db, broker_settings))["ok"]
        await as_superuser(db, "UPDATE ledger.events SET subject = 'mallory' WHERE seq = 77")
        full = await _verify(db, broker_settings, workers=2, dsn=db.writer_dsn, batch_rows=40)
        assert not full["ok"] and full["first_bad_seq"] == 77, full


# --- partitions, archives, retention ---------------------------------------------------------


def _months_ago(n: int) -> datetime:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def test_archive_months_and_verify_the_whole_history(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """Three old months: two archived to signed segments and dropped; verification still
    proves all of it; a tampered segment row is named; every step is a ledger event."""
    signer = signer_for(broker_settings)
    verifier = CheckpointVerifier([signer.verifier_key()])
    origin = broker_settings.ledger_origin
    months = [_months_ago(16), _months_ago(15), _months_ago(14)]
    async with fresh_ledger_db(stack, broker_settings, "tree_archive") as db:
        leaves = await _seed_months(db, months, per_month=300)
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.append(sample_event(1))  # this month
            cp = await ledger.checkpoint(signer)
            assert cp is not None and cp.root is not None
            leaves += (await _leaves(db))[900:]
            assert cp.root == mth(leaves)
            owner = await asyncpg.connect(db.superuser_dsn, timeout=10)
            try:
                from broker.ledger.store import _init_connection

                await _init_connection(owner)
                done = await archive_before(
                    owner,
                    ledger.append,
                    before=months[2].date(),
                    out_dir=tmp_path,
                    signer=signer,
                    verifier=verifier,
                    origin=origin,
                )
                partitions = await owner.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'ledger.events'::regclass"
                )
                events = await owner.fetch(
                    "SELECT event, body FROM ledger.events WHERE event LIKE 'ledger.%' ORDER BY seq"
                )
            finally:
                await owner.close()
            await ledger.checkpoint(signer)
        assert [(a.first_seq, a.last_seq) for a in done] == [(1, 300), (301, 600)]
        names = {r["relname"] for r in partitions}
        assert f"events_{months[0]:%Y_%m}" not in names and f"events_{months[2]:%Y_%m}" in names
        assert [e["event"] for e in events] == ["ledger.archived", "ledger.partition_dropped"] * 2
        for a in done:
            assert a.segment is not None
            seg = check_segment(a.segment, verifier, origin)
            assert seg.ok and seg.rows == 300, seg.to_json()

        report = await _verify(db, broker_settings)
        assert report["ok"], report
        assert report["archived_rows"] == 600 and report["verified_from"] == 600
        assert report["rows"] == len(leaves) - 600 + 4  # + the four archive events

        # A tampered row in an archived segment: named by its seq.
        first = done[1].segment
        assert first is not None
        lines = first.read_bytes().splitlines(keepends=True)
        rec = json.loads(lines[57])
        rec["subject"] = "mallory"
        lines[57] = json.dumps(rec).encode() + b"\n"
        tampered = tmp_path / "tampered.segment.jsonl"
        tampered.write_bytes(b"".join(lines))
        bad = check_segment(tampered, verifier, origin)
        assert not bad.ok and bad.first_bad_seq == rec["seq"] == 357, bad.to_json()


async def test_a_partition_dropped_without_its_archive_is_named(
    stack: DevStack, broker_settings: Settings
) -> None:
    signer = signer_for(broker_settings)
    months = [_months_ago(15), _months_ago(14)]
    async with fresh_ledger_db(stack, broker_settings, "tree_dropped") as db:
        await _seed_months(db, months, per_month=50)
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.checkpoint(signer)
        assert (await _verify(db, broker_settings))["ok"]
        name = f"events_{months[0]:%Y_%m}"
        await as_superuser(
            db,
            f"ALTER TABLE ledger.events DETACH PARTITION ledger.{name}; DROP TABLE ledger.{name}",
        )
        report = await _verify(db, broker_settings)
        assert not report["ok"] and report["first_bad_seq"] == 1, report
        assert "dropped without its archive" in report["problems"][0]["problem"]


async def test_every_partition_keeps_its_append_only_triggers(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tree_triggers") as db:
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            # The writer can create partitions ahead (a fixed SECURITY DEFINER function) …
            created = await conn.fetchval(
                "SELECT ledger.create_partitions(now(), now() + interval '14 months')"
            )
            assert created >= 10
            # … but owns none of them and cannot empty one.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"TRUNCATE ledger.events_{datetime.now(UTC):%Y_%m}")
        finally:
            await conn.close()
        name = f"events_{datetime.now(UTC):%Y_%m}"
        owner = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            await owner.execute(f"ALTER TABLE ledger.{name} DISABLE TRIGGER events_no_truncate")
        finally:
            await owner.close()
        report = await _verify(db, broker_settings)
        assert not report["ok"]
        assert any(
            p["problem"] == f"trigger events_no_truncate on ledger.{name} is not ENABLE ALWAYS (D)"
            for p in report["problems"]
        ), report


# --- migration of today's ledgers ------------------------------------------------------------


async def test_a_ledger_from_before_the_tree_migrates_and_keeps_verifying(
    stack: DevStack, broker_settings: Settings
) -> None:
    """Migrations 001-005, rows and chain-only checkpoints; then 006: the old checkpoints
    verify against the chain, new ones sign the Merkle root too."""
    signer = signer_for(broker_settings)
    name = f"tree_migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.superuser_dsn("postgres"), timeout=10)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = stack.superuser_dsn(name)
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(
                "CREATE SCHEMA ledger; CREATE TABLE ledger.schema_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for migration in ("001_ledger.sql", "002_elevation_index.sql",
                              "003_access_indexes.sql", "004_session_index.sql",
                              "005_signin.sql"):  # fmt: skip
                sql = resources.files("broker.ledger").joinpath("migrations", migration)
                await conn.execute(sql.read_text())
                await conn.execute("INSERT INTO ledger.schema_migrations VALUES ($1)", migration)
            prev, at = GENESIS, datetime.now(UTC) - timedelta(hours=1)
            for seq in range(1, 31):
                row, _ = _row(seq, at + timedelta(seconds=seq), prev, "old-ledger")
                await conn.execute(INSERT_EVENT, *event_args(row))
                prev = row["hash"]
                if seq in (10, 30):  # the chain-only note of before the tree
                    old = Checkpoint(broker_settings.ledger_origin, seq, prev)
                    assert len(signer.sign(old).split("\n\n")[0].split("\n")) == 3
                    await conn.execute(
                        "INSERT INTO ledger.checkpoints VALUES ($1, $2, now(), $3, $4)",
                        seq, prev, signer.key_id, signer.sign(old),
                    )  # fmt: skip
        finally:
            await conn.close()
        applied = await apply_migrations(
            dsn,
            writer_role=writer_role(broker_settings),
            writer_password=writer_password(broker_settings),
        )
        assert applied == [
            "006_partitions_tree.sql",
            "007_why_indexes.sql",
            "008_elevation_steps.sql",
            "009_why_by_subject_and_secret.sql",
            "010_why_subject_windows.sql",
        ]
        from tests.support.ledger_db import with_database

        db = LedgerDb(name, dsn, with_database(broker_settings.database_url, name))
        before = await _verify(db, broker_settings)
        assert before["ok"] and before["checkpoints"] == 2 and before["rows"] == 30, before
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.append(NewEvent(event="broker.started", outcome="ok"))
            cp = await ledger.checkpoint(signer)
            assert cp is not None and cp.root == mth(await _leaves(db))
        after = await _verify(db, broker_settings)
        assert after["ok"] and after["checkpoints"] == 3 and after["rows"] == 31, after
    finally:
        admin = await asyncpg.connect(stack.superuser_dsn("postgres"), timeout=10)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- evidence for a period, tied to the tree -------------------------------------------------


async def test_period_packages_prove_themselves_and_their_consistency(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """Two adjacent periods: each package rebuilds its signed root from its own rows plus
    proofs.json; the second proves itself consistent with the checkpoint an auditor kept
    from the first; a checkpoint from another history is refused."""
    from broker.evidence.check import check_package
    from broker.evidence.package import export_package
    from broker.ledger import connect_one

    signer = signer_for(broker_settings)
    verifier = CheckpointVerifier([signer.verifier_key()])
    origin = broker_settings.ledger_origin
    async with fresh_ledger_db(stack, broker_settings, "tree_evidence") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            for i in range(1, 301):
                await ledger.append(sample_event(i))
            await ledger.checkpoint(signer)
            middle = datetime.now(UTC)
            for i in range(301, 551):
                await ledger.append(sample_event(i))
            await ledger.checkpoint(signer)
        packages = []
        conn = await connect_one(db.writer_dsn)
        try:
            for start, end in ((middle - timedelta(hours=1), middle), (middle, datetime.now(UTC))):
                out = tmp_path / f"evidence-{len(packages)}.zip"
                await export_package(
                    conn, out, period_from=start, period_to=end, signer=signer, origin=origin
                )
                packages.append(out)
        finally:
            await conn.close()
        import zipfile

        with zipfile.ZipFile(packages[0]) as zf:
            notes = zf.read("checkpoints.txt").decode().strip("\n").split("\n\n")
            kept = f"{notes[-2]}\n\n{notes[-1]}\n"
            assert json.loads(zf.read("proofs.json"))["tree_size"] == 300
        with zipfile.ZipFile(packages[1]) as zf:
            proofs = json.loads(zf.read("proofs.json"))
            assert [c["size"] for c in proofs["consistency"]] == [300]

        # (Findings about the synthetic rows' policy versions are not the point here.)
        def intact(report: Any) -> bool:
            return not report.integrity and not any(
                f.kind == "chain_break" for f in report.findings
            )

        first = check_package(packages[0], verifier)
        assert intact(first), first.to_json()
        second = check_package(packages[1], verifier, [kept])
        assert intact(second) and second.consistent_with == [300], second.to_json()
        forged = signer.sign(Checkpoint(origin, 300, _h(b"head"), _h(b"another history")))
        refused = check_package(packages[1], verifier, [forged])
        assert not intact(refused)
        assert any("size 300" in p for p in refused.integrity), refused.to_json()


# --- the command line -------------------------------------------------------------------------


async def test_ledger_commands(stack: DevStack, broker_settings: Settings, tmp_path: Path) -> None:
    """``broker ledger archive`` (retention enforced), ``check-segment``, ``prove`` and
    ``broker verify --workers/--incremental/--from-checkpoint``, as an operator runs them."""
    from tests.support.commands import run_broker, subprocess_env

    signer = signer_for(broker_settings)
    months = [_months_ago(15), _months_ago(14)]
    async with fresh_ledger_db(stack, broker_settings, "tree_cli") as db:
        await _seed_months(db, months, per_month=120)
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.append(sample_event(1))
            kept = await ledger.checkpoint(signer)
            assert kept is not None
        env = subprocess_env(
            BROKER_DATABASE_URL=db.writer_dsn,
            BROKER_ADMIN_DATABASE_URL=db.superuser_dsn,
            BROKER_CHECKPOINT_KEY=str(broker_settings.checkpoint_key_path),
            BROKER_CHECKPOINT_KEY_NAME=broker_settings.checkpoint_key_name,
            BROKER_LEDGER_ORIGIN=broker_settings.ledger_origin,
        )
        out = tmp_path / "segments"
        before = f"{months[1]:%Y-%m}"
        keep_forever = await run_broker(
            "ledger", "archive", "--before", before, "--out", str(out), env=env
        )
        assert keep_forever.returncode == 2 and "keep forever" in keep_forever.stderr
        env["BROKER_LEDGER_RETENTION_MONTHS"] = "12"
        too_new = await run_broker(
            "ledger", "archive", "--before", f"{_months_ago(6):%Y-%m}", "--out", str(out), env=env
        )
        assert too_new.returncode == 2 and "retention is 12 months" in too_new.stderr
        done = await run_broker("ledger", "archive", "--before", before, "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
        [archived] = done.json()["archived"]
        assert (archived["first_seq"], archived["last_seq"], archived["rows"]) == (1, 120, 120)
        checked = await run_broker("ledger", "check-segment", archived["segment"], env=env)
        assert checked.returncode == 0 and checked.json()[0]["ok"], checked.stdout

        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            await ledger.checkpoint(signer)
        full = await run_broker("verify", "--workers", "2", "--max-unsigned-age", "3600", env=env)
        assert full.returncode == 0, full.stdout
        report = full.json()
        assert report["mode"] == "full" and report["archived_rows"] == 120, report
        inc = await run_broker("verify", "--incremental", "--max-unsigned-age", "3600", env=env)
        assert inc.returncode == 0 and inc.json()["mode"] == "incremental", inc.stdout
        note = tmp_path / "kept.note"
        note.write_text(signer.sign(kept))
        from_kept = await run_broker(
            "verify", "--from-checkpoint", str(note), "--max-unsigned-age", "3600", env=env
        )
        assert from_kept.returncode == 0, from_kept.stdout
        assert from_kept.json()["verified_from"] == kept.size

        proof = await run_broker("ledger", "prove", "inclusion", "200", env=env)
        assert proof.returncode == 0 and proof.json()["verified"], proof.stderr
        gone = await run_broker("ledger", "prove", "inclusion", "5", env=env)
        assert gone.returncode == 1 and "row_archived" in gone.stderr
        consistent = await run_broker("ledger", "prove", "consistency", str(kept.size), env=env)
        assert consistent.returncode == 0 and consistent.json()["verified"], consistent.stderr
