"""Who had access to what, when, and why — answered from the ledger alone.

An *access window* is one grant: from its ``grant.issued`` row to the first of its expiry
(``expires_at``: the credential stops working then, whenever the sweeper records it) and
its revocation. A window overlaps the period ``[start, end)`` iff it was issued before
``end`` and had not ended by ``start``.

Invariants the answer relies on:
- no grant outlives the ``max_ttl`` of its role in the policy version that issued it, and
  no version allows more than ``MAX_GRANT_TTL`` (the loader refuses it); so every
  overlapping grant was issued in ``[start - longest, end)``, ``longest`` being the largest
  ``max_ttl`` of any recorded version (a few minutes' slack added): one index range, whatever
  the ledger's size, and no wider than the policies make it (an hour, not a month);
- policy versions are immutable (``ledger.policy_versions`` refuses updates), so the rule
  text of a version is cached without expiry (bounded by count); so is a settled
  elevation (``Elevation.settled``: closed, and reviewed if break-glass: the writer's
  dedupe keys refuse any later event), as the page shows it;
- a page is a few queries, in one read-only snapshot (``read_snapshot``: no parallel
  workers, which cost more to start than these index lookups take): the recorded policy
  versions (and the longest grant of any not seen before); the windows
  (``access_windows``: a subject's from 010's covering index alone, any other page's
  last key from an index alone and the rows up to it read ahead in a bitmap heap scan;
  how they ended as one range of 009's indexes on a subject's or a secret's page, those
  not there by grant id; a second round only if windows revoked before the period took
  places); the elevations of the elevated ones not
  yet cached (a secret's page reads them as one range of 009's indexes, other pages by id
  near their grants from 008's; then by id, anywhere, those not found whole; all from
  indexes alone, no table rows); and the policy versions not yet cached.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Generic, TypeVar

import asyncpg

from broker.elevation.model import Elevation, fold
from broker.errors import PolicyError
from broker.ledger import ElevationStep, Ledger
from broker.ledger.audit_queries import AccessRow, GrantEnd, access_windows, events_page
from broker.ledger.policy_queries import policy_documents, policy_versions
from broker.ledger.store import (
    END_OF_TIME,
    elevation_steps,
    read_snapshot,
    secret_elevation_steps,
)
from broker.periods import MAX_QUERY_PERIOD, check_period
from broker.policy.loader import MAX_GRANT_TTL, load_policy_documents
from broker.policy.model import MAX_REQUEST_EXPIRY

__all__ = [
    "LONGEST_GRANT",
    "AccessAudit",
    "AccessQuery",
    "EventQuery",
    "end_of",
    "rule_text",
]

LONGEST_GRANT = timedelta(seconds=MAX_GRANT_TTL)
_SLACK = timedelta(minutes=5)  # recorded_at is taken a little after the ttl was fixed
DEFAULT_POLICY_CACHE = 64  # policy versions kept in memory (each <= a few hundred KiB)
DEFAULT_ELEVATION_CACHE = 4096  # settled elevations kept in memory (each ~2 KiB)
_SETTLING = timedelta(minutes=1)  # an elevation's last write is this old before it is cached
_NEAR = timedelta(days=1)  # where an elevation's events are looked for first, around its grants
_REQUESTED_WITHIN = timedelta(seconds=MAX_REQUEST_EXPIRY, days=1)  # before its first grant


@lru_cache(maxsize=4096)  # pure, and a page of windows cites a handful of blocks many times
def rule_text(document: str, line: int) -> str | None:
    """The YAML lines of the role block that starts at 1-based ``line`` of ``document``.

    The block is that line plus every following line indented deeper than its ``- `` (or,
    for a mapping not opened by ``- ``, at least as deep as its first key); trailing blank
    lines are dropped. None if ``line`` is outside the document. Pure: no YAML is parsed.
    """
    lines = document.splitlines()
    if not 1 <= line <= len(lines):
        return None
    first = lines[line - 1]
    indent = len(first) - len(first.lstrip(" "))
    item = first.lstrip(" ")
    deeper_than = indent if item == "-" or item.startswith("- ") else indent - 1
    block = [first]
    for text in lines[line:]:
        stripped = text.strip()
        if stripped and len(text) - len(text.lstrip(" ")) <= deeper_than:
            break
        block.append(text)
    while block and not block[-1].strip():
        block.pop()
    return "\n".join(block)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def end_of(expires: datetime | None, end: GrantEnd | None, now: datetime) -> dict[str, Any] | None:
    """How a window that expires at ``expires`` ended: ``{how, at, by, reason,
    recorded_at}``, or None while open.

    ``how`` is ``revoked``, ``offboarded`` (a revocation the offboarding flow made) or
    ``expired``; ``at`` is when access stopped (for expiry: ``expires_at``, even if the
    sweeper recorded it later or not yet); ``by`` who revoked (None for expiry).
    """
    if end is not None and end.event == "grant.revoked":
        body = end.body
        reason = body.get("reason")
        # Structural, not by wording: the offboarding flow names itself in the body.
        offboarded = bool(body.get("offboarding_id"))
        return {
            "how": "offboarded" if offboarded else "revoked",
            "at": end.recorded_at.isoformat(),
            "by": end.subject,
            "reason": reason,
            "recorded_at": end.recorded_at.isoformat(),
        }
    if end is None and (expires is None or expires > now):
        return None
    return {
        "how": "expired",
        "at": _iso(expires),
        "by": None,
        "reason": None,
        "recorded_at": _iso(end.recorded_at) if end is not None else None,
    }


def _elevation_json(el: Elevation) -> dict[str, Any]:
    closed = None
    if el.closed_event is not None:
        closed = {
            "event": el.closed_event,
            "at": _iso(el.closed_at),
            "by": el.closed_by,
            "comment": el.closed_comment or el.closed_why,
        }
    review = None
    if el.reviewed_by is not None:
        review = {"by": el.reviewed_by, "at": _iso(el.reviewed_at), "comment": el.review_comment}
    return {
        "id": str(el.id),
        "requester": el.requester,
        "requested_at": el.requested_at.isoformat(),
        "reason": el.reason,
        "ticket": el.ticket,
        "break_glass": el.break_glass,
        "approvals": [
            {"approver": v.approver, "at": v.at.isoformat(), "comment": v.comment}
            for v in el.approvals
        ],
        "activated_at": _iso(el.activated_at),
        "window_ends_at": _iso(el.window_ends_at),
        "closed": closed,
        "review": review,
    }


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Recent(Generic[_K, _V]):
    """At most ``size`` values, the least recently used dropped first (both caches below
    hold immutable things: recorded policy versions, settled elevations)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._items[key] = value
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class AccessQuery:
    """Windows overlapping ``[start, end)``, optionally of one subject and/or secret."""

    start: datetime
    end: datetime
    subject: str | None
    secret: str | None
    after: int | None  # cursor: the seq of the last window of the previous page
    limit: int


@dataclass(frozen=True)
class EventQuery:
    """Raw events matching every given filter, oldest first."""

    subject: str | None
    secret: str | None
    types: tuple[str, ...]
    start: datetime | None
    end: datetime | None
    after: int | None  # cursor: the seq of the last event of the previous page
    limit: int


class AccessAudit:
    """The read side for auditors: access windows and raw events, straight from the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        policy_cache_size: int = DEFAULT_POLICY_CACHE,
        elevation_cache_size: int = DEFAULT_ELEVATION_CACHE,
    ) -> None:
        self._ledger = ledger
        self._documents: _Recent[str, Mapping[str, str]] = _Recent(policy_cache_size)
        self._settled: _Recent[str, Elevation] = _Recent(elevation_cache_size)
        self._max_ttl: dict[str, int] = {}  # version -> its longest max_ttl (immutable)

    async def _longest_grant(self, conn: asyncpg.Connection) -> timedelta:
        """The longest grant any recorded policy version allows (plus slack)."""
        versions = await policy_versions(conn)
        new = [v for v in versions if v not in self._max_ttl]
        for version, documents in (await policy_documents(conn, new)).items():
            try:
                roles = load_policy_documents(documents).roles
                self._max_ttl[version] = max((r.max_ttl for r in roles), default=0)
            except PolicyError:  # unreadable now: assume the loader's ceiling
                self._max_ttl[version] = MAX_GRANT_TTL
        longest = max((self._max_ttl.get(v, MAX_GRANT_TTL) for v in versions), default=0)
        return min(LONGEST_GRANT, timedelta(seconds=longest) + _SLACK)

    async def access(self, q: AccessQuery, *, now: datetime | None = None) -> dict[str, Any]:
        """``{"from", "to", "access": [window...], "next_cursor"}``; raises BadRequest for
        a bad period. ``next_cursor`` is None on the last page."""
        check_period(q.start, q.end, maximum=MAX_QUERY_PERIOD)
        async with read_snapshot(self._ledger.pool) as conn:
            rows = await access_windows(
                conn,
                issued_from=q.start - await self._longest_grant(conn),
                issued_to=q.end,
                overlaps_from=q.start,
                subject=q.subject,
                secret=q.secret,
                after_seq=q.after,
                limit=q.limit,
            )
            moment = now or datetime.now(UTC)
            elevations = await self._elevations(conn, rows, q.secret, moment)
            documents = await self._policies(conn, {r.issued.policy_version or "" for r in rows})
        windows = [self._window(r, elevations, documents, moment) for r in rows]
        more = len(rows) == q.limit
        return {
            "from": q.start.isoformat(),
            "to": q.end.isoformat(),
            "access": windows,
            "next_cursor": str(rows[-1].issued.seq) if more and rows else None,
        }

    async def events(self, q: EventQuery) -> dict[str, Any]:
        """``{"events": [event + prev_hash...], "next_cursor"}``, oldest first."""
        if q.start is not None and q.end is not None:
            check_period(q.start, q.end, maximum=None)
        events = await events_page(
            self._ledger.pool,
            subject=q.subject,
            secret=q.secret,
            types=q.types,
            start=q.start,
            end=q.end,
            after_seq=q.after,
            limit=q.limit,
        )
        more = len(events) == q.limit
        return {
            "events": [{**e.to_json(), "prev_hash": e.prev_hash.hex()} for e in events],
            "next_cursor": str(events[-1].seq) if more and events else None,
        }

    async def _elevations(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[AccessRow],
        secret: str | None,
        now: datetime,
    ) -> dict[str, Elevation]:
        """The elevations the elevated windows were issued under (without the grants under
        them, which the page does not show); settled ones come from memory once read."""
        issued: dict[str, list[datetime]] = {}
        for r in rows:
            if eid := r.issued.body.get("elevation_id"):
                issued.setdefault(str(eid), []).append(r.issued.recorded_at)
        out: dict[str, Elevation] = {}
        for eid in issued:
            if (cached := self._settled.get(eid)) is not None:
                out[eid] = cached
        missing = [uuid.UUID(i) for i in sorted(issued.keys() - out.keys())]
        if not missing:
            return out
        # First only the days around the grants: an elevation found there from its request
        # to its final event is whole, since recorded_at never runs backwards (check_chain)
        # and nothing follows a final event. On a secret's page that is one range of the
        # secret's elevations (their rows side by side); otherwise each id's own days.
        # The rest (still open, reviewed much later, requested long before) are read by
        # id, further out.
        if secret is not None:
            times = [t for uid in missing for t in issued[str(uid)]]
            found = await secret_elevation_steps(
                conn, secret, min(times) - _NEAR, max(times) + _NEAR, missing
            )
        else:
            near = {
                uid: (min(issued[str(uid)]) - _NEAR, max(issued[str(uid)]) + _NEAR)
                for uid in missing
            }
            found = await elevation_steps(conn, missing, near=near)
        rest = [uid for uid, events in found.items() if not self._keep(uid, events, out, now)]
        # Then everything from a week (and a day) before the grants on: an elevation is
        # activated within its request's expiry (at most MAX_REQUEST_EXPIRY), its grants
        # after that, and nothing precedes its request; so it is whole there if its
        # request is. One whose request is not there (a ledger the broker did not write)
        # is read from the whole ledger.
        since = {uid: (min(issued[str(uid)]) - _REQUESTED_WITHIN, END_OF_TIME) for uid in rest}
        later = await elevation_steps(conn, rest, near=since)
        unbounded = [uid for uid, events in later.items() if fold(events) is None]
        later.update(await elevation_steps(conn, unbounded))
        for uid, events in later.items():
            self._keep(uid, events, out, now, whole=True)
        return out

    def _keep(
        self,
        uid: uuid.UUID,
        events: Sequence[ElevationStep],
        out: dict[str, Elevation],
        now: datetime,
        *,
        whole: bool = False,
    ) -> bool:
        """Fold ``events`` into ``out`` if they are the whole elevation (``whole``, or
        found final); cache it once settled. False if more may lie outside them."""
        el = fold(events)
        if el is None or not (whole or el.final):
            return whole
        out[str(uid)] = el
        if el.settled(now, _SETTLING):
            self._settled.put(str(uid), el)
        return True

    async def _policies(
        self, conn: asyncpg.Connection, versions: set[str]
    ) -> Mapping[str, Mapping[str, str]]:
        versions.discard("")
        found: dict[str, Mapping[str, str]] = {}
        for v in versions:
            if (docs := self._documents.get(v)) is not None:
                found[v] = docs
        missing = sorted(versions - found.keys())
        if missing:
            for version, docs in (await policy_documents(conn, missing)).items():
                self._documents.put(version, docs)
                found[version] = docs
        return found

    @staticmethod
    def _window(
        row: AccessRow,
        elevations: Mapping[str, Elevation],
        documents: Mapping[str, Mapping[str, str]],
        now: datetime,
    ) -> dict[str, Any]:
        issued = row.issued
        body = issued.body
        source = body.get("role_source")
        text = None
        version = issued.policy_version
        if isinstance(source, str) and version is not None and version in documents:
            file, _, line = source.rpartition(":")
            doc = documents[version].get(file)
            if doc is not None and line.isdigit():
                text = rule_text(doc, int(line))
        elevation_id = body.get("elevation_id")
        elevation = elevations.get(str(elevation_id)) if elevation_id else None
        return {
            "grant_id": str(issued.grant_id) if issued.grant_id else None,
            "seq": issued.seq,
            "subject": issued.subject,
            "subject_kind": issued.subject_kind,
            "secret": issued.secret,
            "role": issued.role,
            "policy_version": issued.policy_version,
            "rule": {"source": source, "text": text},
            "reason": body.get("reason"),
            "ticket": body.get("ticket"),
            "engine": body.get("engine"),
            "issued_at": issued.recorded_at.isoformat(),
            "expires_at": _iso(issued.expires_at),
            "ended": end_of(issued.expires_at, row.end, now),
            "elevation": _elevation_json(elevation) if elevation is not None else None,
        }
