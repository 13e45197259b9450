"""Continuity on a real broker: heartbeats, the gap while no replica ran, its annotation.

Runs on a private ledger database so no other broker's heartbeats fall into the silence.
The API's gaps (SQL) are checked against the offline analyzer's (``findings.analyze`` over
the same rows): both must implement the one definition in ``broker.evidence.continuity``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg

from broker.evidence import analyze
from broker.evidence.continuity import Gap, gaps_in
from broker.ledger.continuity_queries import liveness_at_or_after, liveness_before
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker, start_broker
from tests.support.forgery import rechain, replace_all_rows, unchained_row
from tests.support.http import auth, error_of
from tests.support.ledger import fetch_rows
from tests.support.ledger_db import fresh_ledger_db, running_ledger
from tests.support.polling import poll

HEARTBEAT = 0.2


async def _rows(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await fetch_rows(conn)
    finally:
        await conn.close()


def _beats(rows: list[dict[str, Any]], replica: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["event"] == "broker.heartbeat" and r["replica"] == replica]


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row as a package event record."""
    return {
        **row,
        "recorded_at": row["recorded_at"].isoformat(),
        "grant_id": str(row["grant_id"]) if row["grant_id"] else None,
        "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
        "prev_hash": bytes(row["prev_hash"]).hex(),
        "hash": bytes(row["hash"]).hex(),
    }


async def _gaps(
    http: aiohttp.ClientSession, b: RunningBroker, token: str, start: datetime, end: datetime
) -> dict[str, Any]:
    query = urlencode({"from": start.isoformat(), "to": end.isoformat()})
    async with http.get(f"{b.url}/v1/audit/gaps?{query}", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    return body


async def test_gap_between_replicas_is_reported_and_annotated(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "continuity") as db:
        settings = broker_settings.with_overrides(
            database_url=db.writer_dsn, heartbeat_seconds=HEARTBEAT, checkpoint_witness_path=None
        )
        began = datetime.now(UTC)
        a = await start_broker(settings.with_overrides(replica_id="continuity-a"))
        try:
            rows = await poll(
                lambda: _rows(db.superuser_dsn), lambda r: len(_beats(r, "continuity-a")) >= 3
            )
        finally:
            await a.runner.cleanup()
        beats = _beats(rows, "continuity-a")
        assert len(beats) >= 3
        assert (
            beats[0]["body"]["interval_ms"] == 200 and beats[0]["body"]["replica"] == "continuity-a"
        )
        assert beats[-1]["body"]["head_seq"] < beats[-1]["seq"]

        await asyncio.sleep(1.5)  # nobody running: a gap of more than 2 x 0.2s
        b = await start_broker(settings.with_overrides(replica_id="continuity-b"))
        try:
            rows = await poll(
                lambda: _rows(db.superuser_dsn), lambda r: len(_beats(r, "continuity-b")) >= 2
            )
            stopped = next(r for r in rows if r["event"] == "broker.stopped")
            started = [r for r in rows if r["event"] == "broker.started"][-1]
            assert started["replica"] == "continuity-b"
            end = _beats(rows, "continuity-b")[1]["recorded_at"] + timedelta(microseconds=1)

            listing = await _gaps(http, b, tokens["carol"], began, end)
            assert listing["threshold_seconds"] == 2 * HEARTBEAT
            ours = [g for g in listing["gaps"] if g["start"] == stopped["recorded_at"].isoformat()]
            assert len(ours) == 1, listing
            gap = ours[0]
            assert gap["end"] == started["recorded_at"].isoformat()
            assert gap["duration_seconds"] >= 1.5
            assert gap["annotated"] is False and gap["annotation"] is None

            # Only auditors read gaps; only admins annotate them.
            query = urlencode({"from": began.isoformat()})
            async with http.get(
                f"{b.url}/v1/audit/gaps?{query}", headers=auth(tokens["alice"])
            ) as r:
                assert r.status == 403
                assert (await error_of(r))["code"] == "forbidden"
            note = {"from": gap["start"], "to": gap["end"], "remediation": "planned restart, CHG-7"}
            async with http.post(
                f"{b.url}/v1/audit/gaps/annotate", json=note, headers=auth(tokens["carol"])
            ) as r:
                assert r.status == 403
            async with http.post(
                f"{b.url}/v1/audit/gaps/annotate",
                json={**note, "to": "yesterday"},
                headers=auth(tokens["erin"]),
            ) as r:
                assert r.status == 400
                assert (await error_of(r))["code"] == "invalid_to"
            async with http.post(
                f"{b.url}/v1/audit/gaps/annotate", json=note, headers=auth(tokens["erin"])
            ) as r:
                assert r.status == 201, await r.text()
                annotation = (await r.json())["annotation"]
            assert annotation["by"] == "erin"
            assert annotation["remediation"] == "planned restart, CHG-7"

            listing = await _gaps(http, b, tokens["carol"], began, end)
            gap = next(
                g for g in listing["gaps"] if g["start"] == stopped["recorded_at"].isoformat()
            )
            assert gap["annotated"] is True
            assert gap["annotation"]["remediation"] == "planned restart, CHG-7"
            assert gap["annotation"]["seq"] == annotation["seq"]

            # The offline analyzer, over the same rows and period, finds the same gaps.
            rows = await _rows(db.superuser_dsn)
            noted = [r for r in rows if r["event"] == "gap.annotated"]
            assert len(noted) == 1 and noted[0]["subject"] == "erin"
            findings = analyze(
                (_record(r) for r in rows),
                period_from=began,
                period_to=end,
                policies={},
                heartbeat_seconds=HEARTBEAT,
                offboarding_sla_seconds=3600,
            )
            assert all(f.kind.startswith("gap_") for f in findings), findings
            found = {(f.details["start"], f.details["end"], f.kind) for f in findings}
            listed = {
                (g["start"], g["end"], "gap_annotated" if g["annotated"] else "gap_unannotated")
                for g in listing["gaps"]
            }
            assert found == listed
            assert (gap["start"], gap["end"], "gap_annotated") in found
        finally:
            await b.runner.cleanup()


def _heartbeat(at: datetime) -> dict[str, Any]:
    body = {"replica": "continuity-far", "interval_ms": 30_000}
    return unchained_row(at, "broker.heartbeat", "ok", replica="continuity-far", body=body)


async def test_the_liveness_points_around_a_period_are_found_however_far_away(
    stack: DevStack, broker_settings: Settings
) -> None:
    """The lookups try the day next to the period first (so a plan can skip the other
    months' partitions), then the whole ledger: a period deep inside a 40-day silence, in
    another month than either end, still gets the silence's two ends."""
    t = datetime(2026, 3, 30, 12, tzinfo=UTC)
    beats = [t + timedelta(seconds=30 * i) for i in range(3)]
    beats += [t + timedelta(days=40, seconds=30 * i) for i in range(3)]
    silence = Gap(beats[2], beats[3])
    async with fresh_ledger_db(stack, broker_settings, "continuity_far") as db:
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            await replace_all_rows(conn, rechain([_heartbeat(at) for at in beats]))
        finally:
            await conn.close()
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            deep_from, deep_to = t + timedelta(days=10), t + timedelta(days=20)
            near_from, near_to = beats[2] - timedelta(seconds=1), beats[3] + timedelta(seconds=1)
            async with ledger.pool.acquire() as c:
                assert await liveness_before(c, deep_from) == beats[2]  # 10 days back
                assert await liveness_at_or_after(c, deep_to) == beats[3]  # 20 days on
                assert await liveness_before(c, near_from) == beats[1]  # within the day
                assert await liveness_at_or_after(c, near_to) == beats[4]
                assert await liveness_before(c, beats[0]) is None  # nothing before row 1
                assert await liveness_at_or_after(c, beats[-1] + timedelta(seconds=1)) is None
            for period in ((deep_from, deep_to), (near_from, near_to)):
                found = await gaps_in(
                    ledger,
                    period_from=period[0],
                    period_to=period[1],
                    heartbeat_seconds=30,
                    limit=10,
                )
                assert [gap for gap, _ in found] == [silence], period
