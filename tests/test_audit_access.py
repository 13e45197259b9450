"""Who had access to what, when, and why: ``/v1/audit/access``, ``/v1/audit/events``, CLI.

"Why did alice have access to stripe/prod in February?" is answered from a seeded history
(February cannot be reached through the API: the writer stamps its own time), written as
the superuser into a private database with a correctly recomputed chain; the service runs
on it through a real ``Ledger``. ``EXPLAIN`` shows the access query is an index range scan
on a 20k-row ledger. The API, its capability check and its errors are exercised on the
session broker, and the CLI as a real subprocess.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from broker.audit import AccessAudit, AccessQuery
from broker.audit.access import LONGEST_GRANT, end_of, rule_text
from broker.errors import BadRequest, PolicyError
from broker.ledger.audit_queries import (
    END_LAG,
    GrantEnd,
    IssuedGrant,
    access_query,
    ends_by_grant_query,
    events_query,
    grant_ends_query,
    window_bound_query,
)
from broker.ledger.events import Event
from broker.ledger.store import (
    COVERED_ROW_BYTES,
    COVERED_ROW_LIMIT,
    elevation_steps_query,
    secret_elevation_steps_query,
)
from broker.periods import MAX_QUERY_PERIOD, check_period, parse_instant
from broker.policy import load_policy_dir
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.commands import cli
from tests.support.forgery import rechain, replace_all_rows, unchained_row
from tests.support.http import auth, error_of, issue
from tests.support.ledger_db import fresh_ledger_db, running_ledger
from tests.support.paths import REPO
from tests.support.tokens import fresh_subject, mint

POLICY = load_policy_dir(REPO / "policies")
PAYMENTS = POLICY.role("payments-prod")
assert PAYMENTS is not None
T = datetime(2026, 2, 10, 9, 0, tzinfo=UTC)  # the February incident
FEB, MAR = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
REASON = "rotate webhook secret after INC-4711 alert"
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)


# --- pure parts ----------------------------------------------------------------------------


def test_rule_text_is_the_role_block_cited_by_source() -> None:
    file, _, line = PAYMENTS.source.rpartition(":")
    text = rule_text(POLICY.documents[file], int(line))
    assert text is not None
    lines = text.splitlines()
    assert lines[0] == "  - name: payments-prod"
    assert "      - stripe/prod" in lines
    assert "      ticket_required: true" in lines
    # Exactly the block: not the comment or role that follows, no trailing blank line.
    assert "name: auditors" not in text and lines[-1].strip()
    assert not any(ln.startswith("  - ") for ln in lines[1:])
    assert rule_text("roles:\n  - name: a\n", 9) is None


def test_rule_text_mapping_not_opened_by_a_dash() -> None:
    doc = "roles:\n  -\n    name: x\n    secrets: [a]\n\n  - name: y\n"
    assert rule_text(doc, 3) == "    name: x\n    secrets: [a]"


def test_parse_instant_dates_and_times() -> None:
    assert parse_instant("2026-02-01") == FEB
    assert parse_instant("2026-02-01T10:30:00") == FEB.replace(hour=10, minute=30)
    assert parse_instant("2026-02-01T10:30:00+02:00") == FEB.replace(hour=8, minute=30)
    assert parse_instant("2026-02-01T10:30:00Z") == FEB.replace(hour=10, minute=30)
    for bad in ("yesterday", "2026-13-01", "", "2026-02-01" + " " * 40):
        with pytest.raises(ValueError):
            parse_instant(bad)


def test_check_period_bounds() -> None:
    check_period(FEB, MAR, maximum=MAX_QUERY_PERIOD)
    check_period(FEB, FEB + timedelta(days=401), maximum=None)
    for start, end in ((MAR, FEB), (FEB, FEB), (FEB, FEB + timedelta(days=401))):
        with pytest.raises(BadRequest) as e:
            check_period(start, end, maximum=MAX_QUERY_PERIOD)
        assert e.value.code == "invalid_period"


def _event(**fields: Any) -> Event:
    base: dict[str, Any] = {
        "seq": 1,
        "recorded_at": T,
        "event": "grant.issued",
        "replica": "r",
        "subject": "alice",
        "subject_kind": "human",
        "secret": "stripe/prod",
        "role": "payments-prod",
        "policy_version": POLICY.version,
        "grant_id": uuid.uuid4(),
        "lease_id": None,
        "expires_at": T + timedelta(minutes=15),
        "outcome": "issued",
        "request_id": None,
        "body": {},
        "dedupe_key": None,
        "prev_hash": b"\0" * 32,
        "hash": b"\1" * 32,
    }
    return Event(**(base | fields))


def test_end_of_each_way_a_window_closes() -> None:
    issued = _event().expires_at
    later = T + timedelta(hours=1)
    assert end_of(issued, None, T) is None  # open
    assert end_of(issued, None, later) == {  # expired, the sweeper has not recorded it yet
        "how": "expired",
        "at": (T + timedelta(minutes=15)).isoformat(),
        "by": None,
        "reason": None,
        "recorded_at": None,
    }
    revoked = GrantEnd("grant.revoked", T + timedelta(minutes=5), "erin", {})
    assert end_of(issued, revoked, later)["how"] == "revoked"  # type: ignore[index]
    assert end_of(issued, revoked, later)["by"] == "erin"  # type: ignore[index]
    offboarded = GrantEnd(
        "grant.revoked", T, "erin", {"reason": "offboarding x", "offboarding_id": "x"}
    )
    assert end_of(issued, offboarded, later)["how"] == "offboarded"  # type: ignore[index]
    # Wording alone never makes a revocation an offboarding.
    worded = GrantEnd("grant.revoked", T, "bob", {"reason": "offboarding prep"})
    assert end_of(issued, worded, later)["how"] == "revoked"  # type: ignore[index]


def test_policy_loader_caps_max_ttl(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(
        "catalog:\n  a/b:\n    engine: kv2\n    mount: secret\n    path: a/b\n"
    )
    (tmp_path / "roles.yaml").write_text(
        "roles:\n  - name: r\n    members: {groups: [g]}\n    secrets: [a/b]\n    max_ttl: 32d\n"
    )
    with pytest.raises(PolicyError) as e:
        load_policy_dir(tmp_path)
    assert e.value.errors == ["roles.yaml:5: role 'r': max_ttl is longer than the 31d limit"]
    (tmp_path / "roles.yaml").write_text(
        "roles:\n  - name: r\n    members: {groups: [g]}\n    secrets: [a/b]\n    max_ttl: 31d\n"
    )
    assert load_policy_dir(tmp_path).roles[0].max_ttl == int(LONGEST_GRANT.total_seconds())


# --- a seeded history ----------------------------------------------------------------------


class History:
    """Ledger rows (as dicts) with explicit times; ``rows()`` chains them."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def add(self, at: datetime, event: str, outcome: str, **fields: Any) -> dict[str, Any]:
        row = unchained_row(at, event, outcome, **{"policy_version": POLICY.version, **fields})
        self._rows.append(row)
        return row

    def grant(
        self,
        at: datetime,
        subject: str,
        secret: str,
        *,
        minutes: int = 15,
        role: str = "engineering",
        **body: Any,
    ) -> uuid.UUID:
        grant_id = uuid.uuid4()
        source = POLICY.role(role)
        assert source is not None
        self.add(
            at,
            "grant.issued",
            "issued",
            subject=subject,
            subject_kind="human",
            secret=secret,
            role=role,
            grant_id=grant_id,
            expires_at=at + timedelta(minutes=minutes),
            body={
                "engine": "kv2",
                "mount": "secret",
                "path": secret,
                "ttl": minutes * 60,
                "role_source": source.source,
                "issuer": "dev",
                "groups": ["engineering"],
                "kv_version": 1,
                "reason": None,
                "ticket": None,
                **body,
            },
        )
        return grant_id

    def end(
        self,
        at: datetime,
        grant_id: uuid.UUID,
        event: str,
        by: str,
        reason: str | None = None,
        cause: dict[str, str] | None = None,
    ) -> None:
        issued = next(r for r in self._rows if r["grant_id"] == grant_id)
        body: dict[str, Any] = (
            {"grant_subject": issued["subject"], "reason": reason, **(cause or {})}
            if event == "grant.revoked"
            else {"expired_at": issued["expires_at"].isoformat()}
        )
        self.add(
            at,
            event,
            event.removeprefix("grant."),
            subject=by,
            subject_kind="human",
            secret=issued["secret"],
            role=issued["role"],
            grant_id=grant_id,
            expires_at=issued["expires_at"] if event == "grant.expired" else None,
            body=body,
            dedupe_key=f"grant:{grant_id}:end",
        )

    def elevation_requested(
        self,
        at: datetime,
        eid: str,
        subject: str,
        *,
        break_glass: bool = False,
        expires_in: timedelta = timedelta(days=7),
        **body: Any,
    ) -> None:
        """``subject`` asks for an elevation to stripe/prod (payments-prod), as INC-4711."""
        self.add(
            at,
            "elevation.requested",
            "break_glass" if break_glass else "pending",
            subject=subject,
            subject_kind="human",
            secret="stripe/prod",
            role="payments-prod",
            body={
                "elevation_id": eid,
                "reason": REASON,
                "ticket": "INC-4711",
                "duration": 3600,
                "request_expires_at": (at + expires_in).isoformat(),
                "factors": [{"approver_groups": ["sre-leads"], "approvals": 1}],
                "break_glass": break_glass,
                "break_glass_reviewers": ["sre-leads"],
                **body,
            },
        )

    def elevation_step(
        self, at: datetime, event: str, outcome: str, eid: str, by: str | None, **body: Any
    ) -> None:
        """A later event of elevation ``eid`` (approved, activated, closed, reviewed)."""
        self.add(
            at,
            event,
            outcome,
            subject=by,
            subject_kind="human",
            secret="stripe/prod",
            role="payments-prod",
            body={"elevation_id": eid, **body},
        )

    def rows(self) -> list[dict[str, Any]]:
        return rechain(sorted(self._rows, key=lambda r: r["recorded_at"]))


def february_history() -> tuple[History, dict[str, Any]]:
    h = History()
    h.add(T - timedelta(days=30), "policy.loaded", "active", body={"files": {}})
    # Noise: other months, other people, other secrets, windows that end before February.
    jan = h.grant(datetime(2026, 1, 15, 12, tzinfo=UTC), "alice", "stripe/test")
    h.end(datetime(2026, 1, 15, 12, 16, tzinfo=UTC), jan, "grant.expired", "alice")
    early = h.grant(datetime(2026, 1, 31, 23, 30, tzinfo=UTC), "alice", "stripe/prod")
    h.end(datetime(2026, 1, 31, 23, 46, tzinfo=UTC), early, "grant.expired", "alice")
    cut = h.grant(datetime(2026, 1, 31, 23, 50, tzinfo=UTC), "alice", "stripe/prod", minutes=60)
    h.end(datetime(2026, 1, 31, 23, 55, tzinfo=UTC), cut, "grant.revoked", "erin", "mistake")
    h.grant(datetime(2026, 3, 1, tzinfo=UTC), "alice", "stripe/prod")  # `to` is exclusive
    h.grant(datetime(2026, 2, 12, tzinfo=UTC), "alice", "stripe/test")
    dana = h.grant(
        datetime(2026, 2, 20, 8, tzinfo=UTC), "dana", "stripe/prod", role="payments-prod"
    )
    h.end(
        datetime(2026, 2, 20, 8, 3, tzinfo=UTC),
        dana,
        "grant.revoked",
        "erin",
        "offboarding ob1",
        cause={"offboarding_id": "ob1"},
    )
    # The February incident: alice asks, bob approves, the window opens, alice fetches.
    eid = str(uuid.uuid4())
    h.elevation_requested(
        T, eid, "alice", expires_in=timedelta(hours=24), groups=["engineering"], issuer="dev"
    )
    approved_at = T + timedelta(minutes=4)
    h.elevation_step(
        approved_at,
        "elevation.approved",
        "approved",
        eid,
        "bob",
        comment="matches INC-4711",
        approver_groups=["sre-leads"],
    )
    window_ends = approved_at + timedelta(hours=1)
    h.elevation_step(
        approved_at,
        "elevation.activated",
        "approved",
        eid,
        "alice",
        window_ends_at=window_ends.isoformat(),
    )
    issued_at = T + timedelta(minutes=6)
    grant = h.grant(
        issued_at,
        "alice",
        "stripe/prod",
        role="payments-prod",
        reason=REASON,
        ticket="INC-4711",
        elevation_id=eid,
    )
    h.end(issued_at + timedelta(minutes=16), grant, "grant.expired", "alice")
    h.elevation_step(
        window_ends + timedelta(seconds=30),
        "elevation.expired",
        "expired",
        eid,
        None,
        why="window elapsed",
    )
    facts = {
        "grant_id": str(grant),
        "elevation_id": eid,
        "issued_at": issued_at,
        "approved_at": approved_at,
        "window_ends": window_ends,
        "dana": str(dana),
    }
    return h, facts


async def _seed(dsn: str, rows: list[dict[str, Any]]) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await replace_all_rows(conn, rows)
        await conn.execute(
            "INSERT INTO ledger.policy_versions (version, first_seen, documents)"
            " VALUES ($1, $2, $3::jsonb)",
            POLICY.version,
            T - timedelta(days=30),
            json.dumps(dict(POLICY.documents)),
        )
        await conn.execute("ANALYZE ledger.events")
    finally:
        await conn.close()


async def test_why_did_alice_have_stripe_prod_in_february(
    stack: DevStack, broker_settings: Settings
) -> None:
    history, facts = february_history()
    async with fresh_ledger_db(stack, broker_settings, "audit_feb") as db:
        await _seed(db.superuser_dsn, history.rows())
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            audit = AccessAudit(ledger)
            query = AccessQuery(
                start=FEB, end=MAR, subject="alice", secret="stripe/prod", after=None, limit=50
            )
            answer = await audit.access(query)
            everyone = await audit.access(
                AccessQuery(
                    start=FEB, end=MAR, subject=None, secret="stripe/prod", after=None, limit=50
                )
            )
            # Paging: one window per page, in order, then no cursor.
            pages: list[str] = []
            after = None
            for _ in range(5):
                page = await audit.access(
                    AccessQuery(start=FEB, end=MAR, subject=None, secret=None, after=after, limit=1)
                )
                pages += [w["grant_id"] for w in page["access"]]
                if page["next_cursor"] is None:
                    break
                after = int(page["next_cursor"])

    assert answer["from"] == FEB.isoformat() and answer["to"] == MAR.isoformat()
    assert answer["next_cursor"] is None
    assert len(answer["access"]) == 1, answer
    w = answer["access"][0]
    issued_at = facts["issued_at"]
    assert {k: w[k] for k in ("grant_id", "subject", "secret", "role", "policy_version")} == {
        "grant_id": facts["grant_id"],
        "subject": "alice",
        "secret": "stripe/prod",
        "role": "payments-prod",
        "policy_version": POLICY.version,
    }
    assert w["rule"]["source"] == PAYMENTS.source
    assert w["rule"]["text"].startswith("  - name: payments-prod\n")
    assert "ticket_required: true" in w["rule"]["text"]
    assert (w["reason"], w["ticket"]) == (REASON, "INC-4711")
    assert w["issued_at"] == issued_at.isoformat()
    assert w["expires_at"] == (issued_at + timedelta(minutes=15)).isoformat()
    assert w["ended"] == {
        "how": "expired",
        "at": (issued_at + timedelta(minutes=15)).isoformat(),
        "by": None,
        "reason": None,
        "recorded_at": (issued_at + timedelta(minutes=16)).isoformat(),
    }
    el = w["elevation"]
    assert el["id"] == facts["elevation_id"]
    assert (el["requester"], el["reason"], el["ticket"], el["break_glass"]) == (
        "alice",
        REASON,
        "INC-4711",
        False,
    )
    assert el["requested_at"] == T.isoformat()
    assert el["approvals"] == [
        {"approver": "bob", "at": facts["approved_at"].isoformat(), "comment": "matches INC-4711"}
    ]
    assert el["activated_at"] == facts["approved_at"].isoformat()
    assert el["window_ends_at"] == facts["window_ends"].isoformat()
    assert el["closed"]["event"] == "elevation.expired"

    # "Everyone who had stripe/prod in February": alice's window and dana's, offboarded.
    by_subject = {x["subject"]: x for x in everyone["access"]}
    assert sorted(by_subject) == ["alice", "dana"]
    assert by_subject["dana"]["ended"]["how"] == "offboarded"
    assert by_subject["dana"]["ended"]["by"] == "erin"
    assert by_subject["dana"]["elevation"] is None
    # Everything in February, one per page: dana, alice's stripe/test, alice's stripe/prod.
    assert len(pages) == 3 and len(set(pages)) == 3
    assert pages[0] == facts["grant_id"] and facts["dana"] in pages


async def test_why_finds_elevation_events_far_from_the_grant(
    stack: DevStack, broker_settings: Settings
) -> None:
    """The page looks for an elevation's events near its grants first; what lies further
    away (a review days later, a request days earlier) is still found, an elevation still
    open is not remembered, and once it closes the page says so."""
    h = History()
    h.add(T - timedelta(days=30), "policy.loaded", "active", body={"files": {}})
    reviewed, early, still_open, ancient = (str(uuid.uuid4()) for _ in range(4))
    # Break-glass on Feb 10, reviewed five days later.
    h.elevation_requested(T, reviewed, "alice", break_glass=True)
    ends = (T + HOUR).isoformat()
    h.elevation_step(
        T, "elevation.activated", "break_glass", reviewed, "alice", window_ends_at=ends
    )
    h.grant(T + MINUTE, "alice", "stripe/prod", role="payments-prod", elevation_id=reviewed)
    h.elevation_step(T + HOUR, "elevation.expired", "expired", reviewed, None, why="elapsed")
    review_at = T + timedelta(days=5)
    h.elevation_step(review_at, "elevation.reviewed", "reviewed", reviewed, "bob", comment="fine")
    # Requested on Feb 13, approved and used on Feb 16.
    used = datetime(2026, 2, 16, 9, tzinfo=UTC)
    h.elevation_requested(used - timedelta(days=3), early, "carol")
    h.elevation_step(used, "elevation.approved", "approved", early, "bob", comment="ok")
    ends = (used + HOUR).isoformat()
    h.elevation_step(used, "elevation.activated", "approved", early, "carol", window_ends_at=ends)
    h.grant(used + MINUTE, "carol", "stripe/prod", role="payments-prod", elevation_id=early)
    h.elevation_step(used + HOUR, "elevation.expired", "expired", early, None, why="elapsed")
    # Requested on Jan 20, used on Feb 5: longer than any request may wait (a ledger the
    # broker did not write), still found, by reading the whole ledger.
    long_ago = datetime(2026, 1, 20, 9, tzinfo=UTC)
    h.elevation_requested(long_ago, ancient, "erin", expires_in=timedelta(days=30))
    used_late = datetime(2026, 2, 5, 9, tzinfo=UTC)
    h.elevation_step(used_late, "elevation.approved", "approved", ancient, "bob", comment="ok")
    ends = (used_late + HOUR).isoformat()
    h.elevation_step(
        used_late, "elevation.activated", "approved", ancient, "erin", window_ends_at=ends
    )
    h.grant(used_late + MINUTE, "erin", "stripe/prod", role="payments-prod", elevation_id=ancient)
    h.elevation_step(used_late + HOUR, "elevation.expired", "expired", ancient, None, why="x")
    # Approved on Feb 20, not closed yet.
    opened = datetime(2026, 2, 20, 9, tzinfo=UTC)
    h.elevation_requested(opened, still_open, "dana")
    h.elevation_step(opened, "elevation.approved", "approved", still_open, "bob", comment="ok")
    ends = (opened + HOUR).isoformat()
    h.elevation_step(
        opened, "elevation.activated", "approved", still_open, "dana", window_ends_at=ends
    )
    h.grant(opened + MINUTE, "dana", "stripe/prod", role="payments-prod", elevation_id=still_open)
    query = AccessQuery(
        start=FEB, end=MAR, subject=None, secret="stripe/prod", after=None, limit=50
    )
    async with fresh_ledger_db(stack, broker_settings, "audit_far") as db:
        await _seed(db.superuser_dsn, h.rows())
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            audit = AccessAudit(ledger)
            first = await audit.access(query, now=MAR)
            h.elevation_step(
                opened + HOUR, "elevation.ended", "ended", still_open, "dana", comment="done"
            )
            conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
            try:
                await replace_all_rows(conn, h.rows())
            finally:
                await conn.close()
            again = await audit.access(query, now=MAR)

    def elevations(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {w["elevation"]["id"]: w["elevation"] for w in answer["access"]}

    found = elevations(first)
    assert sorted(found) == sorted([reviewed, early, still_open, ancient])
    assert found[ancient]["requested_at"] == long_ago.isoformat()
    assert found[reviewed]["review"] == {
        "by": "bob",
        "at": (T + timedelta(days=5)).isoformat(),
        "comment": "fine",
    }
    assert found[reviewed]["closed"]["event"] == "elevation.expired"
    assert found[early]["requested_at"] == (used - timedelta(days=3)).isoformat()
    assert [a["approver"] for a in found[early]["approvals"]] == ["bob"]
    assert found[still_open]["closed"] is None
    later = elevations(again)
    assert later[still_open]["closed"]["event"] == "elevation.ended"
    assert later[reviewed] == found[reviewed] and later[early] == found[early]


async def test_why_shows_elevations_of_any_size(stack: DevStack, broker_settings: Settings) -> None:
    """An elevation whose row is too wide for 008's covering index (a long reason in a
    script of multi-byte letters) is read from the second index, whole; one just at the
    limit stays in the covering index; the page shows both as written."""
    h = History()
    h.add(T - timedelta(days=30), "policy.loaded", "active", body={"files": {}})
    at_limit, wide = str(uuid.uuid4()), str(uuid.uuid4())
    async with fresh_ledger_db(stack, broker_settings, "audit_wide") as db:
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            # The request row's bytes as the index predicate counts them, reason empty;
            # "é" is two bytes, so the reason below brings the row to 1,599 or 1,600.
            h.elevation_requested(T, at_limit, "alice", reason="")
            base = await conn.fetchval(
                f"SELECT {COVERED_ROW_BYTES} FROM jsonb_to_record($1::jsonb) AS r(body jsonb,"  # noqa: S608
                " subject text, subject_kind text, secret text, role text, policy_version text)",
                json.dumps(h._rows[-1], default=str),
            )
            h._rows.pop()
            long_reason = "é" * ((COVERED_ROW_LIMIT - base) // 2)
            wide_reason = "\N{CLOSED LOCK WITH KEY}" * 500  # 2,000 bytes
            for eid, who, reason in ((at_limit, "alice", long_reason), (wide, "dana", wide_reason)):
                h.elevation_requested(T, eid, who, reason=reason)
                h.elevation_step(T, "elevation.approved", "approved", eid, "bob", comment=reason)
                ends = (T + HOUR).isoformat()
                h.elevation_step(
                    T, "elevation.activated", "approved", eid, who, window_ends_at=ends
                )
                h.grant(T + MINUTE, who, "stripe/prod", role="payments-prod", elevation_id=eid)
                h.elevation_step(T + HOUR, "elevation.expired", "expired", eid, None, why="elapsed")
            await _seed(db.superuser_dsn, h.rows())
            sizes = dict(
                await conn.fetch(
                    f"SELECT body->>'elevation_id', max({COVERED_ROW_BYTES}) FROM ledger.events"  # noqa: S608
                    " WHERE event = 'elevation.requested' GROUP BY 1"
                )
            )
        finally:
            await conn.close()
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            query = AccessQuery(
                start=FEB, end=MAR, subject=None, secret="stripe/prod", after=None, limit=50
            )
            answer = await AccessAudit(ledger).access(query, now=MAR)
    assert COVERED_ROW_LIMIT - 1 <= sizes[at_limit] <= COVERED_ROW_LIMIT < sizes[wide], sizes
    shown = {w["subject"]: w["elevation"] for w in answer["access"]}
    assert shown["alice"] is not None and shown["dana"] is not None, shown
    assert (shown["alice"]["id"], shown["dana"]["id"]) == (at_limit, wide)
    assert shown["alice"]["reason"] == long_reason
    assert shown["dana"]["reason"] == wide_reason
    assert [a["comment"] for a in shown["dana"]["approvals"]] == [wide_reason]
    assert shown["dana"]["closed"]["event"] == "elevation.expired"
    assert shown["dana"]["activated_at"] == T.isoformat()


async def test_a_subjects_page_shows_grants_of_any_size(
    stack: DevStack, broker_settings: Settings
) -> None:
    """A subject's windows are read from 010's covering index, and a grant whose row is too
    wide for it (a long reason in a script of multi-byte letters) from the second index:
    both are on the page in time order, as written, one page or many."""
    h = History()
    h.add(T - timedelta(days=30), "policy.loaded", "active", body={"files": {}})
    async with fresh_ledger_db(stack, broker_settings, "audit_wide_grants") as db:
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            # The grant row's bytes as the index predicate counts them, reason empty; "é"
            # is two bytes, so the reason below brings the row to 1,599 or 1,600.
            h.grant(T, "alice", "stripe/prod", reason="")
            base = await conn.fetchval(
                f"SELECT {COVERED_ROW_BYTES} FROM jsonb_to_record($1::jsonb) AS r(body jsonb,"  # noqa: S608
                " subject text, subject_kind text, secret text, role text, policy_version text)",
                json.dumps(h._rows[-1], default=str),
            )
            h._rows.pop()
            reasons = [
                "short",
                "\N{CLOSED LOCK WITH KEY}" * 500,  # 2,000 bytes: the wide index
                "é" * ((COVERED_ROW_LIMIT - base) // 2),  # at the limit: the covering one
                "\N{CLOSED LOCK WITH KEY}" * 450,
                "short again",
            ]
            for n, reason in enumerate(reasons):
                h.grant(T + n * MINUTE, "alice", "stripe/prod", reason=reason)
            h.grant(T, "bob", "stripe/prod", reason="\N{CLOSED LOCK WITH KEY}" * 500)
            await _seed(db.superuser_dsn, h.rows())
            sizes = [
                r[0]
                for r in await conn.fetch(
                    f"SELECT {COVERED_ROW_BYTES} FROM ledger.events"  # noqa: S608
                    " WHERE event = 'grant.issued' AND subject = 'alice' ORDER BY seq"
                )
            ]
        finally:
            await conn.close()
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            audit = AccessAudit(ledger)
            pages: dict[int, list[dict[str, Any]]] = {}
            for limit in (50, 2, 1):
                cursor, shown = None, []
                while True:
                    page = await audit.access(
                        AccessQuery(
                            start=FEB, end=MAR, subject="alice", secret=None, after=cursor,
                            limit=limit,
                        ),
                        now=MAR,
                    )  # fmt: skip
                    shown += page["access"]
                    if (cursor := page["next_cursor"]) is None:
                        break
                    cursor = int(cursor)
                pages[limit] = shown
            both = await audit.access(
                AccessQuery(
                    start=FEB, end=MAR, subject="alice", secret="stripe/prod", after=None, limit=50
                ),
                now=MAR,
            )
    assert sizes[2] <= COVERED_ROW_LIMIT < sizes[1] and sizes[3] > COVERED_ROW_LIMIT, sizes
    for shown in (*pages.values(), both["access"]):
        assert [w["reason"] for w in shown] == reasons
        assert {w["subject"] for w in shown} == {"alice"}
        assert [w["issued_at"] for w in shown] == sorted(w["issued_at"] for w in shown)
        assert all(w["rule"]["text"] for w in shown), shown


async def test_how_a_window_ended_is_the_same_whichever_way_the_page_is_asked(
    stack: DevStack, broker_settings: Settings
) -> None:
    """A subject's or a secret's page reads its grants' ends as one range (009), the rest
    by grant id: revoked by someone else, swept long after expiry, still open. Every way
    of asking gives each window the same end, and a grant revoked before the period is
    on no page."""
    h = History()
    h.add(T - timedelta(days=30), "policy.loaded", "active", body={"files": {}})
    who, secret = fresh_subject("ends"), "stripe/test"
    day = datetime(2026, 2, 12, 9, tzinfo=UTC)
    expired = h.grant(day, who, secret)
    h.end(day + 16 * MINUTE, expired, "grant.expired", who)
    by_other = h.grant(day + HOUR, who, secret)
    h.end(
        day + HOUR + MINUTE,
        by_other,
        "grant.revoked",
        "erin",
        "offboarding",
        {"offboarding_id": "ob-1"},
    )
    by_self = h.grant(day + 2 * HOUR, who, secret)
    h.end(day + 2 * HOUR + MINUTE, by_self, "grant.revoked", who, "done with it")
    swept_late = h.grant(day + 3 * HOUR, who, secret)
    h.end(day + 3 * HOUR + 2 * END_LAG + timedelta(days=2), swept_late, "grant.expired", who)
    still_open = h.grant(MAR - 30 * MINUTE, who, secret, minutes=60)
    before = h.grant(FEB - 10 * MINUTE, who, secret)  # revoked before February
    h.end(FEB - 5 * MINUTE, before, "grant.revoked", "erin", "wrong role")
    across = h.grant(FEB - 5 * MINUTE, who, secret)  # revoked in February
    h.end(FEB + MINUTE, across, "grant.revoked", "erin", "wrong role")
    other = h.grant(day + 30 * MINUTE, "bob", secret)  # someone else's, around the same time
    h.end(day + 46 * MINUTE, other, "grant.expired", "bob")
    async with fresh_ledger_db(stack, broker_settings, "audit_ends") as db:
        await _seed(db.superuser_dsn, h.rows())
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            audit = AccessAudit(ledger)
            pages = {
                name: await audit.access(
                    AccessQuery(start=FEB, end=MAR, subject=s, secret=x, after=None, limit=50),
                    now=MAR,
                )
                for name, s, x in (
                    ("subject", who, None),
                    ("secret", None, secret),
                    ("both", who, secret),
                    ("neither", None, None),
                )
            }
            # Two windows a page: the same windows, in the same order, whichever way.
            paged: dict[str, list[str]] = {}
            for name, s, x in (("subject", who, None), ("secret", None, secret)):
                paged[name], after = [], None
                for _ in range(10):
                    page = await audit.access(
                        AccessQuery(start=FEB, end=MAR, subject=s, secret=x, after=after, limit=2),
                        now=MAR,
                    )
                    paged[name] += [w["grant_id"] for w in page["access"]]
                    if page["next_cursor"] is None:
                        break
                    after = int(page["next_cursor"])
    for name, ids in paged.items():
        assert ids == [w["grant_id"] for w in pages[name]["access"]], name
    ended = {
        name: {w["grant_id"]: w["ended"] for w in page["access"] if w["subject"] == who}
        for name, page in pages.items()
    }
    mine = [across, expired, by_other, by_self, swept_late, still_open]
    for name, windows in ended.items():
        assert list(windows) == [str(g) for g in mine], name  # oldest first; not "before"
        assert windows == ended["neither"], name
    assert {g: e["how"] if e else None for g, e in ended["subject"].items()} == {
        str(across): "revoked",
        str(expired): "expired",
        str(by_other): "offboarded",
        str(by_self): "revoked",
        str(swept_late): "expired",
        str(still_open): None,
    }
    subject_page = ended["subject"]
    assert subject_page[str(by_other)]["by"] == "erin"
    assert subject_page[str(by_self)]["reason"] == "done with it"
    late = subject_page[str(swept_late)]
    assert late["at"] == (day + 3 * HOUR + 15 * MINUTE).isoformat()
    assert late["recorded_at"] == (day + 3 * HOUR + 2 * END_LAG + timedelta(days=2)).isoformat()
    assert [w["subject"] for w in pages["secret"]["access"]].count("bob") == 1


# --- the plan ------------------------------------------------------------------------------

_SUBJECTS = [f"user-{i}" for i in range(40)]
# A past month with history on both sides, as an auditor asks (the history runs to mid-2026).
PLAN_FROM, PLAN_TO = datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)
_SECRETS = ["stripe/prod", "stripe/test", "db/orders-ro", "db/orders-admin", "pki/internal"]


def _big_history(n: int) -> list[dict[str, Any]]:
    """``n`` rows over two years: grants (issued, end) plus the chatter around them."""
    rng = random.Random(4)
    h = History()
    start = datetime(2024, 7, 1, tzinfo=UTC)
    step = timedelta(days=730) / n
    at = start
    while len(h._rows) < n:
        at += step * 3
        subject, secret = rng.choice(_SUBJECTS), rng.choice(_SECRETS)
        gid = h.grant(at, subject, secret)
        h.end(at + timedelta(minutes=15), gid, "grant.expired", subject)
        h.add(at + step, "grant.denied", "denied", subject=subject, secret=secret)
    return h.rows()


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan."""
    out = [plan]
    for child in plan.get("Plans", []):
        out += _nodes(child)
    return out


async def _analyzed(conn: asyncpg.Connection, sql: str, args: list[Any]) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, FORMAT JSON)`` of ``sql``: its plan (printed as text too)."""
    rows = await conn.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    text = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (COSTS OFF) " + sql, *args))
    print(f"--- {sql.split(chr(10))[0][:60]} ---\n{text}")
    plan: dict[str, Any] = json.loads(rows[0][0])[0]["Plan"]
    return plan


async def _index_parents(conn: asyncpg.Connection) -> dict[str, str]:
    """Each partition's index name -> the partitioned index it belongs to."""
    return dict(
        await conn.fetch(
            "SELECT c.relname, p.relname FROM pg_inherits h"
            " JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent"
            " WHERE p.relkind = 'I'"
        )
    )


def _grant_lookup(plan: dict[str, Any], parents: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(partition, index, condition)`` of each index scan reading the issued rows (alias
    ``i``, or ``i_N`` on a partition); ``index`` is the partitioned index it belongs to."""
    found: list[tuple[str, str, str]] = []
    for node in _nodes(plan):
        alias = node.get("Alias", "")
        if alias != "i" and not alias.startswith("i_"):
            continue
        if node["Node Type"] in ("Index Scan", "Index Only Scan"):
            found.append(
                (node["Relation Name"], parents.get(node["Index Name"], node["Index Name"]),
                 node.get("Index Cond", ""))
            )  # fmt: skip
        elif node["Node Type"] == "Bitmap Heap Scan":
            found += [
                (node["Relation Name"], parents.get(n["Index Name"], n["Index Name"]),
                 n.get("Index Cond", ""))
                for n in _nodes(node)
                if n["Node Type"] == "Bitmap Index Scan"
            ]  # fmt: skip
        elif node["Node Type"] != "Subquery Scan":  # the fence around a subject's wide rows
            raise AssertionError(f"issued rows read by {node['Node Type']}")
    return found


async def test_access_query_is_an_index_range_scan(
    stack: DevStack, broker_settings: Settings
) -> None:
    """Each query of a page reads one bounded range of an index: a subject's rows from
    010's indexes alone; any other page's last key from 003's index alone, and the rows up
    to it in a bitmap heap scan of the same range; how each ended from 007's index (by
    grant id) or 009's (by subject or secret) alone."""
    async with fresh_ledger_db(stack, broker_settings, "audit_plan") as db:
        await _seed(db.superuser_dsn, _big_history(20_000))
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ledger.events") >= 20_000
            await conn.execute("VACUUM ledger.events")  # the visibility map: no heap fetches
            bounds: dict[str, dict[str, Any]] = {}
            plans: dict[str, dict[str, Any]] = {}
            ends_by_id: dict[str, dict[str, Any]] = {}
            for name, subject, secret in (
                ("both", "user-3", "stripe/prod"),
                ("secret", None, "stripe/prod"),
                ("subject", "user-3", None),
                ("neither", None, None),
            ):
                shape = {"subject": subject, "secret": secret}
                bounded = subject is None  # as access_windows
                sql, args = window_bound_query(
                    overlaps_from=PLAN_FROM, issued_to=PLAN_TO, after=None, nth=100, **shape
                )
                bound = await conn.fetchrow(sql, *args) if bounded else None
                if bounded:
                    bounds[name] = await _analyzed(conn, sql, args)
                sql, args = access_query(
                    issued_from=PLAN_FROM - LONGEST_GRANT,
                    issued_to=PLAN_TO,
                    overlaps_from=PLAN_FROM,
                    after=None,
                    through=(bound["recorded_at"], bound["seq"]) if bound else None,
                    limit=100,
                    **shape,
                )
                await conn.execute(f"SET enable_indexscan = {not bounded}")  # as access_windows
                plans[name] = await _analyzed(conn, sql, args)
                issued = [IssuedGrant.of_row(r) for r in await conn.fetch(sql, *args)]
                await conn.execute("RESET enable_indexscan")
                print(f"--- access query, {name}: {len(issued)} windows ---")
                if issued:
                    sql, args = ends_by_grant_query(issued)
                    ends_by_id[name] = await _analyzed(conn, sql, args)
            sql, args = events_query(
                subject="user-3",
                secret=None,
                types=("grant.issued",),
                start=PLAN_FROM,
                end=PLAN_TO,
                after_seq=10,
                limit=100,
            )
            events_plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
            print(f"--- events query ---\n{events_plan}")
            # Each partition's index belongs to the partitioned index of migration 003/006.
            parents = await _index_parents(conn)
            # A page's ends, by its subject or its secret: one range of 009's indexes.
            ends_plans: dict[str, dict[str, Any]] = {}
            for name, subject, secret in (
                ("subject", "user-3", None),
                ("secret", None, "stripe/prod"),
            ):
                issued = [
                    IssuedGrant.of_row(r)
                    for r in await conn.fetch(
                        "SELECT * FROM ledger.events WHERE event = 'grant.issued'"
                        " AND recorded_at >= $1 AND coalesce(subject = $2, secret = $3)"
                        " ORDER BY recorded_at LIMIT 100",
                        PLAN_FROM + timedelta(days=5),
                        subject,
                        secret,
                    )
                ]
                sql, args = grant_ends_query(holder=subject, secret=secret, grants=issued)
                ends_plans[name] = await _analyzed(conn, sql, args)
        finally:
            await conn.close()

    def ran(plan: dict[str, Any], alias: str) -> list[dict[str, Any]]:
        """The scans of table alias ``alias`` (or its partitions') that ran."""
        return [
            n
            for n in _nodes(plan)
            if (n.get("Alias") == alias or n.get("Alias", "").startswith(alias + "_"))
            and n["Actual Loops"]
        ]

    def index_only(plan: dict[str, Any], alias: str, index: str, rows: int) -> None:
        scans = ran(plan, alias)
        read = {(n["Node Type"], parents.get(n["Index Name"])) for n in scans}
        assert read == {("Index Only Scan", index)}, (index, scans)
        assert sum(n["Heap Fetches"] for n in scans) == 0, (index, scans)
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) >= rows, (index, scans)

    for name, index in (
        ("subject", "events_grant_end_subject_idx"),
        ("secret", "events_grant_end_secret_idx"),
    ):
        index_only(ends_plans[name], "t", index, 100)
    shape_index = {
        "secret": ("events_issued_secret_idx",),
        "neither": ("events_issued_time_idx",),
    }
    months = {"events_2025_01", "events_2025_02"}  # [from - the longest grant, to)
    for name, bound_plan in bounds.items():
        # The page's last key, from the shape's index alone.
        scans = ran(bound_plan, "i")
        assert {n["Node Type"] for n in scans} == {"Index Only Scan"}, (name, scans)
        assert {parents.get(n["Index Name"]) for n in scans} <= set(shape_index[name]), name
        assert sum(n["Heap Fetches"] for n in scans) == 0, (name, scans)
    for name, plan in plans.items():
        # A sequential scan only of a partition next to empty (the months ahead).
        seq_scans = [n for n in _nodes(plan) if n["Node Type"] == "Seq Scan"]
        assert all(n["Total Cost"] < 2 for n in seq_scans), (
            name,
            [n["Relation Name"] for n in seq_scans],
        )
        lookups = _grant_lookup(plan, parents)
        # Only the period's partitions are read, each through an index bounded by the
        # period (recorded_at, or expires_at for grants still open): the cost follows the
        # period, not the size of the ledger.
        assert lookups and {partition for partition, _, _ in lookups} <= months, (name, lookups)
        for _, index, cond in lookups:
            assert "recorded_at >=" in cond or "expires_at >" in cond, (name, index, cond)
        if name in bounds:  # the rows up to the key: read ahead
            assert {n["Node Type"] for n in ran(plan, "i")} == {"Bitmap Heap Scan"}, name
        else:  # a subject's rows: 010's indexes only, the covering one alone (no heap)
            indexes = {index for _, index, _ in lookups}
            assert indexes == {
                "events_issued_subject_cover_idx",
                "events_issued_subject_wide_idx",
            }, (name, lookups)
            covered = [
                n
                for n in ran(plan, "i")
                if parents.get(n.get("Index Name", "")) == "events_issued_subject_cover_idx"
            ]
            assert {n["Node Type"] for n in covered} == {"Index Only Scan"}, (name, covered)
            assert sum(n["Heap Fetches"] for n in covered) == 0, (name, covered)
    assert len(ends_by_id) >= 3, ends_by_id.keys()
    for plan in ends_by_id.values():
        # How each grant ended, by grant id: 007's index of end rows alone (no heap).
        index_only(plan, "e", "events_grant_end_idx", 1)
    assert "events_issued_time_idx" in {i for _, i, _ in _grant_lookup(plans["neither"], parents)}
    assert "Seq Scan on events_2025" not in events_plan, events_plan


def _elevation_history(n: int) -> list[dict[str, Any]]:
    """``n`` elevations over 2025, each requested, approved, activated, used and expired,
    with some other traffic between them."""
    h = History()
    at = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(n):
        at += timedelta(days=365) / n
        eid, who = str(uuid.uuid4()), _SUBJECTS[i % len(_SUBJECTS)]
        h.elevation_requested(at, eid, who)
        h.add(at + MINUTE, "grant.denied", "denied", subject=who, secret="stripe/test")
        h.elevation_step(at + MINUTE, "elevation.approved", "approved", eid, "bob", comment="ok")
        ends = (at + HOUR).isoformat()
        h.elevation_step(
            at + MINUTE, "elevation.activated", "approved", eid, who, window_ends_at=ends
        )
        h.grant(at + 2 * MINUTE, who, "stripe/prod", role="payments-prod", elevation_id=eid)
        h.elevation_step(at + HOUR, "elevation.expired", "expired", eid, None, why="elapsed")
    return h.rows()


async def test_elevation_steps_are_read_from_indexes_alone(
    stack: DevStack, broker_settings: Settings
) -> None:
    """The page's elevation lookup reads 008's covering index (no table rows, once vacuum
    has marked the pages visible) and the index of rows too wide for it, nothing else."""
    for name in (
        "008_elevation_steps.sql",
        "009_why_by_subject_and_secret.sql",
        "010_why_subject_windows.sql",
    ):
        migration = (REPO / "broker/ledger/migrations" / name).read_text()
        assert " ".join(migration.split()).count(" ".join(COVERED_ROW_BYTES.split())) == 2, name
    async with fresh_ledger_db(stack, broker_settings, "audit_steps_plan") as db:
        await _seed(db.superuser_dsn, _elevation_history(3_000))
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            await conn.execute("VACUUM (ANALYZE) ledger.events")
            requested = await conn.fetch(
                "SELECT body->>'elevation_id' AS id, recorded_at FROM ledger.events"
                " WHERE event = 'elevation.requested' AND recorded_at >= $1 AND recorded_at < $2"
                " ORDER BY seq LIMIT 100",
                # Mid-month: the days around them lie in one partition. (Near a month's
                # edge the planner may read the few rows of the other month's sliver
                # through 007's index instead, a cost-based choice.)
                PLAN_FROM + timedelta(days=9),
                PLAN_FROM + timedelta(days=19),
            )
            ids = [uuid.UUID(r["id"]) for r in requested]
            day = timedelta(days=1)
            near = {
                uuid.UUID(r["id"]): (r["recorded_at"] - day, r["recorded_at"] + day)
                for r in requested
            }
            sql, args = elevation_steps_query(ids, near)
            await conn.execute("SET max_parallel_workers_per_gather = 0")  # as read_snapshot
            rows = await conn.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            explained = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, *args)
            text = "\n".join(r[0] for r in explained)
            print(f"--- elevation steps ---\n{text}")
            # A secret's page: its elevations as one range of 009's indexes.
            since, until = near[ids[0]][0], near[ids[-1]][1]
            sql, args = secret_elevation_steps_query("stripe/prod", since, until)
            rows_by_secret = await conn.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            parents = await _index_parents(conn)
        finally:
            await conn.close()
    plan = json.loads(rows[0][0])[0]["Plan"]
    # Each id's range leaves one month: the others are pruned as the query runs.
    scans = [n for n in _nodes(plan) if "Relation Name" in n and n["Actual Loops"] > 0]
    assert {n["Relation Name"] for n in scans} == {"events_2025_02"}, text
    read = {(n["Node Type"], parents.get(n.get("Index Name", ""), "")) for n in scans}
    assert read == {
        ("Index Only Scan", "events_elevation_steps_idx"),
        ("Index Scan", "events_elevation_steps_wide_idx"),
    }, text
    covered = [n for n in scans if n["Node Type"] == "Index Only Scan"]
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in covered) == 4 * len(ids), text
    assert all(n["Heap Fetches"] == 0 for n in covered), text
    by_secret = json.loads(rows_by_secret[0][0])[0]["Plan"]
    scans = [n for n in _nodes(by_secret) if "Relation Name" in n and n["Actual Loops"] > 0]
    read = {(n["Node Type"], parents.get(n.get("Index Name", ""), "")) for n in scans}
    assert read == {
        ("Index Only Scan", "events_elevation_secret_idx"),
        ("Index Scan", "events_elevation_secret_wide_idx"),
    }, by_secret
    covered = [n for n in scans if n["Node Type"] == "Index Only Scan"]
    assert sum(n["Actual Rows"] for n in covered) >= 4 * len(ids), by_secret
    assert all(n["Heap Fetches"] == 0 for n in covered), by_secret


# --- the API and the CLI on the session broker ---------------------------------------------


async def _get(
    http: aiohttp.ClientSession, url: str, token: str, params: dict[str, str]
) -> tuple[int, Any]:
    async with http.get(url, headers=auth(token), params=params) as r:
        if r.status != 200:
            return r.status, await error_of(r)
        return r.status, await r.json()


async def test_api_todays_window_and_events(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    grant = await issue(
        http, broker.url, tokens["alice"], "stripe/test", reason="check the test webhook"
    )
    today = datetime.now(UTC).date()
    period = {"from": today.isoformat(), "to": (today + timedelta(days=1)).isoformat()}
    # Other suites issue alice many stripe/test grants today: page until ours shows up.
    params = {**period, "subject": "alice", "secret": "stripe/test", "limit": "500"}
    mine: list[dict[str, Any]] = []
    while True:
        status, body = await _get(http, f"{broker.url}/v1/audit/access", tokens["carol"], params)
        assert status == 200, body
        mine += [w for w in body["access"] if w["grant_id"] == grant["id"]]
        if mine or not body.get("next_cursor"):
            break
        params["cursor"] = str(body["next_cursor"])
    assert len(mine) == 1
    w = mine[0]
    assert (w["subject"], w["secret"], w["role"]) == ("alice", "stripe/test", "engineering")
    assert w["reason"] == "check the test webhook"
    assert w["issued_at"] == grant["issued_at"] and w["expires_at"] == grant["expires_at"]
    assert w["rule"]["text"].startswith("  - name: engineering\n"), w["rule"]
    assert w["ended"] is None and w["elevation"] is None

    # Raw events: the issued row, filtered, with its chain link; paged by cursor.
    query = {"subject": "alice", "type": "grant.issued", **period, "limit": "500"}
    rows: list[dict[str, Any]] = []
    while True:
        status, events = await _get(http, f"{broker.url}/v1/audit/events", tokens["carol"], query)
        assert status == 200, events
        assert all(
            e["event"] == "grant.issued" and e["subject"] == "alice" for e in events["events"]
        )
        rows += [e for e in events["events"] if e["grant_id"] == grant["id"]]
        if rows or events["next_cursor"] is None:
            break
        query["cursor"] = str(events["next_cursor"])
    assert len(rows) == 1 and len(rows[0]["prev_hash"]) == 64
    # Paging by cursor, two at a time, walks the same sequence as one big page.
    events_url = f"{broker.url}/v1/audit/events"
    status, whole = await _get(http, events_url, tokens["carol"], {"limit": "9"})
    assert status == 200
    expected = [(e["recorded_at"], e["seq"]) for e in whole["events"]]
    assert expected == sorted(expected) and len(expected) >= 3
    paged: list[tuple[str, int]] = []
    params = {"limit": "2"}
    while len(paged) < len(expected):
        status, page = await _get(http, events_url, tokens["carol"], params)
        assert status == 200 and len(page["events"]) <= 2
        paged += [(e["recorded_at"], e["seq"]) for e in page["events"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": "2", "cursor": page["next_cursor"]}
    assert paged[: len(expected)] == expected


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("access", {"to": "2026-03-01"}, "missing_from"),
        ("access", {"from": "2026-02-01"}, "missing_to"),
        ("access", {"from": "February", "to": "2026-03-01"}, "invalid_from"),
        ("access", {"from": "2026-02-01", "to": "2026-02-30"}, "invalid_to"),
        ("access", {"from": "2026-03-01", "to": "2026-02-01"}, "invalid_period"),
        ("access", {"from": "2024-01-01", "to": "2026-03-01"}, "invalid_period"),
        ("access", {"from": "2026-02-01", "to": "2026-03-01", "form": "x"}, "unknown_parameter"),
        ("access", {"from": "2026-02-01", "to": "2026-03-01", "secret": "../x"}, "invalid_secret"),
        ("access", {"from": "2026-02-01", "to": "2026-03-01", "cursor": "-1"}, "invalid_cursor"),
        ("access", {"from": "2026-02-01", "to": "2026-03-01", "limit": "0"}, "invalid_limit"),
        ("events", {"type": "grant.nope"}, "invalid_type"),
        ("events", {"subject": "a\x00b"}, "invalid_subject"),
        ("events", {"from": "2026-03-01", "to": "2026-02-01"}, "invalid_period"),
    ],
)
async def test_api_bad_input_is_400_with_a_code(
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    path: str,
    params: dict[str, str],
    code: str,
) -> None:
    status, err = await _get(http, f"{broker.url}/v1/audit/{path}", tokens["carol"], params)
    assert (status, err["code"]) == (400, code), err


@pytest.mark.parametrize("path", ["access", "events"])
async def test_api_needs_the_audit_capability(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession, path: str
) -> None:
    params = {"from": "2026-02-01", "to": "2026-03-01"}
    status, err = await _get(http, f"{broker.url}/v1/audit/{path}", tokens["alice"], params)
    assert (status, err["code"]) == (403, "forbidden")
    async with http.get(f"{broker.url}/v1/audit/{path}", params=params) as r:
        assert r.status == 401


async def test_cli_audit_access_and_events(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A subject of its own: other suites issue alice thousands of grants the same day.
    subject = fresh_subject("cli-audit")
    engineer = mint(broker.settings, subject, ["engineering"])
    grant = await issue(http, broker.url, engineer, "stripe/test", reason="cli audit check")
    today = datetime.now(UTC).date()
    period = ["--from", today.isoformat(), "--to", (today + timedelta(days=1)).isoformat()]
    args = ["audit", "access", "--subject", subject, "--secret", "stripe/test", *period]
    run = await cli(*args, "--json", cwd=tmp_path, url=broker.url, token=tokens["carol"])
    assert run.returncode == 0, run.stderr
    assert grant["id"] in [w["grant_id"] for w in run.json()["access"]]
    run = await cli(*args, "--limit", "1", cwd=tmp_path, url=broker.url, token=tokens["carol"])
    assert run.returncode == 0, run.stderr
    assert f"{subject} had stripe/test from" in run.stdout
    assert "role:       engineering (roles.yaml:" in run.stdout
    assert "reason:     cli audit check" in run.stdout
    assert "|   - name: engineering" in run.stdout
    run = await cli(
        "audit", "events", "--type", "grant.issued", "--subject", "alice", "--limit", "1",
        cwd=tmp_path, url=broker.url, token=tokens["carol"],
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "grant.issued" in run.stdout and "more: add --cursor" in run.stderr
    run = await cli(*args, cwd=tmp_path, url=broker.url, token=tokens["alice"])
    assert run.returncode == 1 and "forbidden" in run.stderr
