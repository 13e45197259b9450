"""The benches' ledger seeder: realistic chained ledgers, COPYed fast, with the Merkle tree.

One module for ``export.py``, ``console.py`` and ``ledger_scale.py``. A *mix* says what
happens (which events, when, by whom); ``seed()`` turns its rows into a ledger the broker
itself would have written:

- every row chained (``broker.ledger.chain``: canonical bytes, ``hash = H(prev, row)``);
- leaf ``i`` = ``merkle.leaf_hash`` of row ``seq = i + 1``'s canonical bytes, and every
  perfect subtree of 256 leaves and up in ``ledger.tree_nodes``, as ``CompactRange`` makes
  them;
- a signed checkpoint (size, chain head and Merkle root, ``root_hash`` set) every
  ``checkpoint_every`` rows and one at the head, as the broker's checkpointer would;
- each policy version the rows cite in ``ledger.policy_versions``;
- monthly partitions covering the rows (``ledger.create_partitions``).

The rows are generated, hashed and spelled as ``COPY`` text in a second process (spawned),
while this one streams them to PostgreSQL: one core generates, the other runs the server.

Two modes. ``fast=False``: the superuser COPYs with every trigger on, so ``check_chain``
checks each row. ``fast=True``: ``events_chain`` is disabled for the COPY only, in the same
transaction, and re-enabled as ENABLE ALWAYS on the parent and on every partition (checked
before COMMIT: a plain ENABLE would let replica-mode sessions skip it); the secondary
indexes of ``ledger.events`` are dropped for the COPY and recreated from their own
definitions (``pg_get_indexdef``) afterwards, exactly as the migrations made them. Both
end with ``VACUUM (ANALYZE)``, which is what autovacuum does to a real ledger.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import json
import multiprocessing
import queue
import random
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "COLUMNS",
    "AuditMix",
    "ExportMix",
    "SeedReport",
    "seed",
]

COLUMNS = (
    "seq", "recorded_at", "event", "replica", "subject", "subject_kind", "secret", "role",
    "policy_version", "grant_id", "lease_id", "expires_at", "outcome", "request_id", "body",
    "dedupe_key", "prev_hash", "hash",
)  # fmt: skip

TREE_LEVEL_MIN = 8  # ledger.tree_nodes keeps perfect subtrees of 2**8 leaves and up
_BATCH_ROWS = 20_000  # rows per chunk handed from the generator to the COPY
_CHAIN_TRIGGER = "events_chain"


# --- mixes ------------------------------------------------------------------------------
#
# A mix is a picklable description (it crosses to the generator process); ``rows()`` yields
# dicts with every column but the two hashes, seq gapless from 1, recorded_at never
# decreasing; ``policy_versions()`` gives (version, first_seen, documents) for each version
# its rows cite.


@dataclass(frozen=True)
class ExportMix:
    """The export and console benches' ledger (unchanged from ``bench/export.py``): one
    event every ~2 s of ledger time from ``start``, a heartbeat every minute, 200 engineers
    fetching ``stripe/test`` and ``db/orders-ro`` (5-minute grants, each expiring)."""

    events: int
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    policies_dir: Path = REPO / "policies"
    heartbeat_seconds: int = 60

    def _policy(self) -> Any:
        from broker.policy import load_policy_dir

        return load_policy_dir(self.policies_dir)

    def policy_versions(self) -> list[tuple[str, datetime, dict[str, str]]]:
        policy = self._policy()
        return [(policy.version, self.start, dict(policy.documents))]

    def rows(self) -> Iterator[dict[str, Any]]:
        from broker.auth.principal import Principal
        from broker.policy.decide import decide

        policy = self._policy()
        people = [
            Principal(f"user-{i:03d}", "human", "https://idp.example", frozenset({"engineering"}))
            for i in range(200)
        ]
        secrets = ["stripe/test", "db/orders-ro"]
        decisions = {s: decide(policy, people[0], s) for s in secrets}
        for s, d in decisions.items():
            assert d.outcome == "allow" and d.role is not None, (s, d.outcome)
        open_grants: list[tuple[datetime, uuid.UUID, Principal, str]] = []
        t = self.start
        next_beat = self.start
        seq = 0
        while seq < self.events:
            seq += 1
            body: dict[str, Any]
            row: dict[str, Any] = dict.fromkeys(COLUMNS[:-2])
            row.update(seq=seq, recorded_at=t, replica="bench-1", policy_version=None)
            if seq == 1:
                row.update(event="policy.loaded", outcome="active", policy_version=policy.version)
                body = {"files": sorted(policy.documents)}
            elif t >= next_beat:
                row.update(event="broker.heartbeat", outcome="ok")
                body = {"interval_seconds": self.heartbeat_seconds}
                next_beat = t + timedelta(seconds=self.heartbeat_seconds)
            elif open_grants and open_grants[0][0] <= t:
                expires, gid, who, secret = open_grants.pop(0)
                d = decisions[secret]
                assert d.role is not None
                row.update(
                    event="grant.expired",
                    outcome="expired",
                    subject=who.subject,
                    subject_kind=who.kind,
                    secret=secret,
                    role=d.role.name,
                    policy_version=policy.version,
                    grant_id=gid,
                    expires_at=expires,
                    dedupe_key=f"grant:{gid}:end",
                )
                body = {"expired_at": expires.isoformat()}
            else:
                who = people[seq % len(people)]
                secret = secrets[seq % len(secrets)]
                d = decisions[secret]
                assert d.role is not None and d.entry is not None
                gid = uuid.uuid4()
                ttl = min(d.ttl, 300)
                expires = t + timedelta(seconds=ttl)
                row.update(
                    event="grant.issued",
                    outcome="issued",
                    subject=who.subject,
                    subject_kind=who.kind,
                    secret=secret,
                    role=d.role.name,
                    policy_version=policy.version,
                    grant_id=gid,
                    expires_at=expires,
                    request_id=f"bench-{seq}",
                )
                body = {
                    "engine": d.entry.engine,
                    "mount": d.entry.mount,
                    "path": d.entry.path,
                    "ttl": ttl,
                    "reason": None,
                    "ticket": None,
                    "role_source": d.role.source,
                    "issuer": who.issuer,
                    "groups": sorted(who.groups),
                }
                open_grants.append((expires, gid, who, secret))
            row["body"] = body
            yield row
            t += timedelta(milliseconds=1800 + (seq * 7919) % 400)


def month_start(t: datetime, back: int = 0) -> datetime:
    """00:00 UTC on the first day of ``t``'s month, ``back`` months earlier."""
    index = t.year * 12 + t.month - 1 - back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


_TEAMS_HEADER = """\
# Bench teams, generated by bench/ledger_seed.py: {teams} teams, each with three KV secrets,
# a read-only and an admin database login and a certificate role. Revision {revision}.
catalog:
"""

_TEAM_CATALOG = """\
  team-{n:02d}/api-key:
    engine: kv2
    mount: secret
    path: team-{n:02d}/api-key
  team-{n:02d}/signing-key:
    engine: kv2
    mount: secret
    path: team-{n:02d}/signing-key
  team-{n:02d}/webhook-secret:
    engine: kv2
    mount: secret
    path: team-{n:02d}/webhook-secret
  db/team-{n:02d}-ro:
    engine: database
    mount: database
    role: team-{n:02d}-ro
  db/team-{n:02d}-admin:
    engine: database
    mount: database
    role: team-{n:02d}-admin
  pki/team-{n:02d}:
    engine: pki
    mount: pki
    role: team-{n:02d}
"""

_TEAM_ROLES = """\
  - name: team-{n:02d}
    description: Team {n:02d} engineers
    members:
      groups: [team-{n:02d}]
    secrets: [team-{n:02d}/*, db/team-{n:02d}-ro, pki/team-{n:02d}]
    max_ttl: 1h
  - name: team-{n:02d}-services
    description: Team {n:02d} workloads
    members:
      service_accounts: [{accounts}]
    secrets: [team-{n:02d}/*, db/team-{n:02d}-ro, pki/team-{n:02d}]
    max_ttl: 15m
  - name: team-{n:02d}-dba
    description: Team {n:02d} database changes (privileged)
    members:
      groups: [team-{n:02d}]
    secrets: [db/team-{n:02d}-admin]
    max_ttl: 30m
    privileged: true
    elevation:
      approver_groups: [sre-leads]
      approvals: 1
      max_duration: 1h
      request_expiry: 4h
      break_glass: true
      break_glass_reviewers: [security-admins]
"""

_REASONS = (
    "Backfill missing order rows after the import job failed",
    "Apply the reviewed schema migration for the billing tables",
    "Fix a stuck lock held by the nightly batch",
    "Rotate the replication slot after the failover drill",
    "Investigate a data mismatch reported by support",
)
_DENY_REASON = "Need to debug the shared staging integration"


@dataclass
class _Person:
    subject: str
    kind: str
    issuer: str
    groups: tuple[str, ...]
    team: int
    principal: Any = None


@dataclass(frozen=True)
class AuditMix:
    """A year of a 1,000-engineer company's ledger: ``events`` rows at a steady rate over the
    ``months`` calendar months ending with ``end``'s (the current one up to ``end``).

    Who: ``teams`` teams of ``engineers`` people (groups ``team-NN`` and ``engineering``;
    every 50th also ``sre-leads``) and ``services`` Kubernetes workloads each, 5 security
    admins. What: the policy is the repository's ``policies/`` plus a generated
    ``teams.yaml`` (``teams`` x 6 secrets, a privileged ``team-NN-dba`` role with
    break-glass), a new revision loaded by both replicas on the 15th of every month. Events,
    by share of the activities that start a row sequence:

    - 50% a workload fetches its team's database login, certificate (intent, issued,
      expired) or KV secret (issued, expired): 15-minute grants;
    - 36% an engineer fetches one of the team's or ``engineering``'s secrets (15-60 min),
      6% of them revoked early by the holder;
    - 3% ``auth.failed`` aggregates; 3% ``grant.denied`` (another team's secret);
    - 2% elevations: requested, approved by an SRE lead, activated, an elevated grant
      issued and expired, the window expiring; 5% denied, 5% left to expire, 10%
      break-glass (activated at once, reviewed by a security admin later);
    - a ``broker.heartbeat`` per replica (two replicas) every ``heartbeat_seconds`` (about
      10% of the rows; 60 s at 10 M rows a year).

    Everything is drawn from ``random.Random(seed)``: the same arguments give the same
    events (grant ids included).
    """

    events: int
    end: datetime
    months: int = 12
    teams: int = 40
    engineers: int = 25
    services: int = 5
    seed: int = 15
    revision_at: timedelta = timedelta(days=14, hours=10)  # into each month, after the first

    @property
    def start(self) -> datetime:
        return month_start(self.end, self.months - 1)

    @property
    def heartbeat_seconds(self) -> int:
        span = (self.end - self.start).total_seconds()
        return max(60, round(20 * span / self.events))

    def month_starts(self) -> list[datetime]:
        return [month_start(self.end, back) for back in range(self.months - 1, -1, -1)]

    def teams_yaml(self, revision: int) -> str:
        parts = [_TEAMS_HEADER.format(teams=self.teams, revision=revision)]
        parts += [_TEAM_CATALOG.format(n=n) for n in range(self.teams)]
        parts.append("roles:\n")
        for n in range(self.teams):
            accounts = ", ".join(f'"team-{n:02d}:svc-{i}"' for i in range(self.services))
            parts.append(_TEAM_ROLES.format(n=n, accounts=accounts))
        return "".join(parts)

    def policy_documents(self, revision: int) -> dict[str, str]:
        """The policy files of one revision: the repository's, plus ``teams.yaml``."""
        docs = {
            p.name: p.read_text()
            for p in sorted((REPO / "policies").iterdir())
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
        }
        docs["teams.yaml"] = self.teams_yaml(revision)
        return docs

    def revision_times(self) -> list[datetime]:
        """When each policy revision is loaded: revision 0 at the start, then one each
        month at ``revision_at`` into it (default the 15th, 10:00 UTC: a working day's
        edit, not a month boundary)."""
        times = [self.start]
        for m in self.month_starts()[1:]:
            at = m + self.revision_at
            if at < self.end:
                times.append(at)
        return times

    def policy_sets(self) -> list[tuple[datetime, Any]]:
        """(first_seen, PolicySet) of each revision."""
        from broker.policy.loader import load_policy_documents

        return [
            (first_seen, load_policy_documents(self.policy_documents(revision)))
            for revision, first_seen in enumerate(self.revision_times())
        ]

    def policy_versions(self) -> list[tuple[str, datetime, dict[str, str]]]:
        return [(p.version, at, dict(p.documents)) for at, p in self.policy_sets()]

    def people(self) -> tuple[list[_Person], list[_Person], list[_Person], list[_Person]]:
        """(engineers, workloads, SRE leads, security admins)."""
        idp, k8s = "https://idp.example.com", "https://kubernetes.default.svc"
        engineers, services = [], []
        for n in range(self.teams):
            for i in range(self.engineers):
                number = n * self.engineers + i
                groups = [f"team-{n:02d}", "engineering"]
                if number % 50 == 7:
                    groups.append("sre-leads")
                engineers.append(_Person(f"user-{number:04d}", "human", idp, tuple(groups), n))
            for i in range(self.services):
                sa = f"system:serviceaccount:team-{n:02d}:svc-{i}"
                services.append(_Person(sa, "service", k8s, (), n))
        leads = [p for p in engineers if "sre-leads" in p.groups]
        admins = [
            _Person(f"secadmin-{i}", "human", idp, ("security-admins",), -1) for i in range(5)
        ]
        return engineers, services, leads, admins

    def rows(self) -> Iterator[dict[str, Any]]:
        return _AuditRows(self).run()


class _AuditRows:
    """The generator behind ``AuditMix.rows``: one row per time slot.

    Slot ``k`` is at ``start + (k + u) * dt`` (u in [0.1, 0.9): strictly increasing). It
    holds the most overdue row some earlier row made due (an issue after its intent, an
    expiry, a vote, a heartbeat), else the first row of a new activity. Due rows are
    recorded at their slot, so late by at most a slot or two, as a busy broker's are.
    """

    def __init__(self, mix: AuditMix) -> None:
        from broker.auth.principal import Principal

        self.mix = mix
        self.rng = random.Random(mix.seed)
        self.engineers, self.services, self.leads, self.admins = mix.people()
        for p in (*self.engineers, *self.services, *self.admins):
            p.principal = Principal(p.subject, p.kind, p.issuer, frozenset(p.groups))  # type: ignore[arg-type]
        self.policies = mix.policy_sets()
        self.policy = self.policies[0][1]
        self.decisions: dict[tuple[str, str, str], Any] = {}
        self.due: list[tuple[datetime, int, Callable[[datetime], dict[str, Any] | None]]] = []
        self.order = 0
        self.replicas = ("bench-1", "bench-2")

    # -- helpers ---------------------------------------------------------------------------

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def token(self, n: int) -> str:
        """``n`` random hex digits (request ids, lease ids, usernames)."""
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def later(self, at: datetime, make: Callable[[datetime], dict[str, Any] | None]) -> None:
        self.order += 1
        heapq.heappush(self.due, (at, self.order, make))

    def decide(self, who: _Person, secret: str) -> Any:
        from broker.policy.decide import decide

        key = (self.policy.version, who.subject, secret)
        d = self.decisions.get(key)
        if d is None:
            d = self.decisions[key] = decide(self.policy, who.principal, secret)
        return d

    def row(self, at: datetime, event: str, outcome: str, **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "seq": 0,
            "recorded_at": at,
            "event": event,
            "replica": fields.pop("replica", None) or self.rng.choice(self.replicas),
            "subject": None,
            "subject_kind": None,
            "secret": None,
            "role": None,
            "policy_version": None,
            "grant_id": None,
            "lease_id": None,
            "expires_at": None,
            "outcome": outcome,
            "request_id": None,
            "body": {},
            "dedupe_key": None,
        }
        row.update(fields)
        return row

    def who(self, p: _Person) -> dict[str, Any]:
        return {"subject": p.subject, "subject_kind": p.kind}

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Iterator[dict[str, Any]]:
        mix = self.mix
        start, span = mix.start, (mix.end - mix.start).total_seconds()
        dt_us = span * 1e6 / mix.events
        beat = timedelta(seconds=mix.heartbeat_seconds)
        for i, replica in enumerate(self.replicas):
            self.later(start + beat * (i + 1) / 2, self.heartbeat(replica, beat))
        pending: list[Callable[[datetime], dict[str, Any] | None]] = [
            self.started(r) for r in self.replicas
        ]
        next_policy = 0
        activities = (
            (0.50, self.service_grant),
            (0.86, self.engineer_grant),
            (0.89, self.auth_failed),
            (0.92, self.denied),
            (0.94, self.elevation),
            (1.00, self.service_grant),
        )
        cut = [c for c, _ in activities]
        for k in range(mix.events):
            at = start + timedelta(microseconds=(k + 0.1 + 0.8 * self.rng.random()) * dt_us)
            if next_policy < len(self.policies) and at >= self.policies[next_policy][0]:
                self.policy = self.policies[next_policy][1]
                pending += [self.policy_loaded(r, self.policy) for r in self.replicas]
                next_policy += 1
            row = None
            while row is None:
                if pending:
                    row = pending.pop(0)(at)
                elif self.due and self.due[0][0] <= at:
                    row = heapq.heappop(self.due)[2](at)
                else:
                    pick = activities[bisect.bisect(cut, self.rng.random())][1]
                    row = pick(at)
            row["seq"] = k + 1
            yield row

    # -- activities: each returns its first row and schedules the rest --------------------

    def started(self, replica: str) -> Callable[[datetime], dict[str, Any]]:
        from broker import __version__

        return lambda at: self.row(
            at, "broker.started", "ok", replica=replica, body={"version": __version__}
        )

    def policy_loaded(self, replica: str, policy: Any) -> Callable[[datetime], dict[str, Any]]:
        return lambda at: self.row(
            at,
            "policy.loaded",
            "active",
            replica=replica,
            policy_version=policy.version,
            body={"files": policy.to_json()["files"]},
        )

    def heartbeat(self, replica: str, beat: timedelta) -> Callable[[datetime], dict[str, Any]]:
        def make(at: datetime) -> dict[str, Any]:
            self.later(at + beat, self.heartbeat(replica, beat))
            ms = round(beat.total_seconds() * 1000)
            return self.row(
                at,
                "broker.heartbeat",
                "ok",
                replica=replica,
                body={"interval_ms": ms, "replica": replica},
            )

        return make

    def auth_failed(self, at: datetime) -> dict[str, Any]:
        by_reason = {"expired_token": self.rng.randint(1, 40)}
        if self.rng.random() < 0.3:
            by_reason["bad_signature"] = self.rng.randint(1, 5)
        return self.row(
            at,
            "auth.failed",
            "rejected",
            body={
                "window_start": (at - timedelta(seconds=60)).isoformat(),
                "window_end": at.isoformat(),
                "total": sum(by_reason.values()),
                "by_reason": by_reason,
            },
        )

    def denied(self, at: datetime) -> dict[str, Any]:
        who = self.rng.choice(self.engineers)
        other = (who.team + 1 + self.rng.randrange(self.mix.teams - 1)) % self.mix.teams
        secret = f"team-{other:02d}/api-key"
        d = self.decide(who, secret)
        return self.row(
            at,
            "grant.denied",
            d.outcome,
            **self.who(who),
            secret=secret,
            role=d.role.name if d.role else None,
            policy_version=self.policy.version,
            request_id=self.token(16),
            body={"message": d.message, "reason": _DENY_REASON, "ticket": None},
        )

    def service_grant(self, at: datetime) -> dict[str, Any]:
        who = self.rng.choice(self.services)
        r = self.rng.random()
        team = f"team-{who.team:02d}"
        secret = f"db/{team}-ro" if r < 0.6 else f"pki/{team}" if r < 0.85 else f"{team}/api-key"
        return self.grant(at, who, secret, ttl=900)

    def engineer_grant(self, at: datetime) -> dict[str, Any]:
        who = self.rng.choice(self.engineers)
        team = f"team-{who.team:02d}"
        secret = self.rng.choice(
            (
                f"{team}/api-key",
                f"{team}/signing-key",
                f"{team}/webhook-secret",
                f"db/{team}-ro",
                f"db/{team}-ro",
                f"pki/{team}",
                "stripe/test",
                "db/orders-ro",
            )
        )
        ttl = self.rng.choice((900, 1800, 3600))
        return self.grant(at, who, secret, ttl=ttl, revoke=self.rng.random() < 0.06)

    def grant(
        self,
        at: datetime,
        who: _Person,
        secret: str,
        *,
        ttl: int,
        revoke: bool = False,
        elevation: tuple[uuid.UUID, datetime] | None = None,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """The grant's first row (its intent, or for KV its issue); the rest scheduled."""
        d = self.decide(who, secret)
        assert d.outcome in ("allow", "elevation_required") and d.role and d.entry, d
        entry, role = d.entry, d.role
        ttl = min(ttl, role.max_ttl)
        base = {
            **self.who(who),
            "secret": secret,
            "role": role.name,
            "policy_version": self.policy.version,
            "grant_id": self.new_id(),
            "request_id": self.token(16),
        }
        context: dict[str, Any] = {
            "engine": entry.engine,
            "mount": entry.mount,
            "path": entry.path,
            "ttl": ttl,
            "reason": reason,
            "ticket": ticket,
            "role_source": role.source,
            "issuer": who.issuer,
            "groups": sorted(who.groups),
        }
        if elevation is not None:
            context["elevation_id"] = str(elevation[0])
        not_after = elevation[1] if elevation is not None else None

        def issued(at: datetime) -> dict[str, Any]:
            expires = at + timedelta(seconds=ttl)
            if not_after is not None:
                expires = min(expires, not_after - timedelta(seconds=1))
            body = dict(context)
            lease_id = None
            if entry.engine == "database":
                lease_id = f"{entry.mount}/creds/{entry.path}/{self.token(24)}"
                body["username"] = f"v-jwt-{entry.path[:10]}-{self.token(20)}"
                body["lease_duration"] = ttl
            elif entry.engine == "pki":
                serial = f"{self.rng.getrandbits(160):040x}"
                body["serial_number"] = ":".join(serial[i : i + 2] for i in range(0, 40, 2))
                body["common_name"] = (
                    f"{who.subject.rsplit(':', 1)[-1]}.{who.subject.split(':')[2]}.internal"
                    if who.kind == "service"
                    else f"{who.subject}.users.internal"
                )
            else:
                body["kv_version"] = 1 + self.rng.randrange(5)
            if revoke:
                gone = at + timedelta(seconds=self.rng.uniform(60, ttl - 30))
                self.later(gone, self.revoked(base, lease_id, expires))
            else:
                sweep = expires + timedelta(seconds=self.rng.uniform(1, 30))
                self.later(sweep, self.expired(base, lease_id, expires))
            return self.row(
                at,
                "grant.issued",
                "issued",
                **base,
                lease_id=lease_id,
                expires_at=expires,
                body=body,
            )

        if entry.engine == "kv2":
            return issued(at)
        self.later(at + timedelta(milliseconds=150), issued)
        return self.row(at, "grant.intent", "pending", **base, body=context)

    def expired(
        self, base: Mapping[str, Any], lease_id: str | None, expires: datetime
    ) -> Callable[[datetime], dict[str, Any]]:
        return lambda at: self.row(
            at,
            "grant.expired",
            "expired",
            **{k: v for k, v in base.items() if k != "request_id"},
            lease_id=lease_id,
            expires_at=expires,
            body={"expired_at": expires.isoformat()},
            dedupe_key=f"grant:{base['grant_id']}:end",
        )

    def revoked(
        self, base: Mapping[str, Any], lease_id: str | None, expires: datetime
    ) -> Callable[[datetime], dict[str, Any]]:
        return lambda at: self.row(
            at,
            "grant.revoked",
            "revoked",
            **{**base, "request_id": self.token(16), "policy_version": self.policy.version},
            lease_id=lease_id,
            body={"grant_subject": base["subject"], "reason": "done with it"},
            dedupe_key=f"grant:{base['grant_id']}:end",
        )

    def elevation(self, at: datetime) -> dict[str, Any]:
        from broker.elevation.model import activated_key, closed_key, reviewed_key, vote_key

        who = self.rng.choice(self.engineers)
        stripe = self.rng.random() < 0.2
        secret = "stripe/prod" if stripe else f"db/team-{who.team:02d}-admin"
        d = self.decide(who, secret)
        assert d.outcome == "elevation_required" and d.role is not None, d
        rule = d.role.elevation
        eid = self.new_id()
        ticket = f"INC-{self.rng.randrange(1000, 99999)}" if stripe else None
        reason = self.rng.choice(_REASONS)
        break_glass = not stripe and self.rng.random() < 0.1
        fate = self.rng.random()
        common = {**self.who(who), "secret": secret, "role": d.role.name}

        def row(
            at: datetime, event: str, outcome: str, body: dict[str, Any], **kw: Any
        ) -> dict[str, Any]:
            fields = {**common, "policy_version": self.policy.version, **kw}
            fields.setdefault("request_id", self.token(16))
            return self.row(at, event, outcome, **fields, body={"elevation_id": str(eid), **body})

        def activated(approvers: list[str]) -> Callable[[datetime], dict[str, Any]]:
            def make(at: datetime) -> dict[str, Any]:
                window = at + timedelta(seconds=rule.max_duration)
                use = at + timedelta(seconds=self.rng.uniform(20, 300))
                self.later(use, lambda at: self.grant(
                    at, who, secret, ttl=rule.max_duration, elevation=(eid, window),
                    reason=reason, ticket=ticket,
                ))  # fmt: skip
                end = window + timedelta(seconds=self.rng.uniform(1, 60))
                self.later(end, lambda at: row(
                    at, "elevation.expired", "window_elapsed", {"why": "window_elapsed"},
                    request_id=None, dedupe_key=closed_key(eid),
                ))  # fmt: skip
                if break_glass:
                    admin = self.rng.choice(self.admins)
                    review = at + timedelta(minutes=self.rng.uniform(10, 50))
                    self.later(review, lambda at: row(
                        at, "elevation.reviewed", "reviewed",
                        {"comment": "Checked the incident notes: justified"},
                        **self.who(admin), dedupe_key=reviewed_key(eid),
                    ))  # fmt: skip
                return row(
                    at,
                    "elevation.activated",
                    "break_glass" if break_glass else "approved",
                    {
                        "window_ends_at": window.isoformat(),
                        "approvers": approvers,
                        "break_glass": break_glass,
                    },
                    dedupe_key=activated_key(eid),
                )

            return make

        if break_glass:
            self.later(at + timedelta(milliseconds=200), activated([]))
        else:
            approver = self.rng.choice([p for p in self.leads if p.subject != who.subject][:8])
            decided = at + timedelta(minutes=self.rng.uniform(2, 30))
            if fate < 0.05:
                self.later(decided, lambda at: row(
                    at, "elevation.denied", "denied", {"comment": "Use the runbook instead"},
                    **self.who(approver), dedupe_key=closed_key(eid),
                ))  # fmt: skip
            elif fate < 0.10:
                gone = at + timedelta(seconds=rule.request_expiry + self.rng.uniform(1, 60))
                self.later(gone, lambda at: row(
                    at, "elevation.expired", "request_expired", {"why": "request_expired"},
                    request_id=None, dedupe_key=closed_key(eid),
                ))  # fmt: skip
            else:

                def approved(at: datetime) -> dict[str, Any]:
                    self.later(at + timedelta(milliseconds=100), activated([approver.subject]))
                    return row(
                        at,
                        "elevation.approved",
                        "approved",
                        {
                            "comment": "ok",
                            "approver_groups": ["sre-leads"],
                            "requester": who.subject,
                        },
                        **self.who(approver),
                        dedupe_key=vote_key(eid, approver.subject),
                    )

                self.later(decided, approved)
        factors = [
            {"approver_groups": sorted(f.approver_groups), "approvals": f.approvals}
            for f in rule.factors
        ]
        return row(
            at,
            "elevation.requested",
            "break_glass" if break_glass else "pending",
            {
                "reason": reason,
                "ticket": ticket,
                "duration": rule.max_duration,
                "requested_duration": None,
                "request_expires_at": (at + timedelta(seconds=rule.request_expiry)).isoformat(),
                "factors": factors,
                "break_glass": break_glass,
                "break_glass_reviewers": sorted(rule.break_glass_reviewers),
                "issuer": who.issuer,
                "groups": sorted(who.groups),
            },
        )


# --- the generator process --------------------------------------------------------------


def _text(value: str | None) -> str:
    """A COPY text-format field."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def _stamp(value: datetime | None) -> str:
    return "\\N" if value is None else value.isoformat()


@dataclass
class _Chunk:
    data: bytes
    rows: int
    nodes: list[tuple[int, int, bytes]]
    heads: list[tuple[int, bytes, bytes, datetime]]  # (size, chain head, root, recorded_at)
    last_at: datetime


def _produce(mix: Any, checkpoint_every: int, out: Any) -> None:
    """Generator process: every row chained, leaf-hashed, merged into the tree, and spelled
    as COPY text; chunks of ``_BATCH_ROWS`` rows go to ``out``, then None (or the traceback
    as a str when anything fails)."""
    try:
        import msgspec

        from broker.ledger.chain import GENESIS, canonical_row, chain_hash
        from broker.ledger.merkle import CompactRange, leaf_hash

        nodes: list[tuple[int, int, bytes]] = []

        def keep(level: int, index: int, digest: bytes) -> None:
            if level >= TREE_LEVEL_MIN:
                nodes.append((level, index, digest))

        tree = CompactRange(on_node=keep)
        prev = GENESIS
        lines: list[str] = []
        heads: list[tuple[int, bytes, bytes, datetime]] = []
        at: datetime | None = None
        n = 0
        dumps = msgspec.json.Encoder().encode  # jsonb: any spelling of the same document
        for row in mix.rows():
            n += 1
            if row["seq"] != n:
                raise AssertionError(f"mix gave seq {row['seq']} for row {n}")
            if at is not None and row["recorded_at"] < at:
                raise AssertionError(f"mix went back in time at seq {n}")
            at = row["recorded_at"]
            canonical = canonical_row(**row)
            digest = chain_hash(prev, canonical)
            tree.push_leaf(leaf_hash(canonical))
            gid = row["grant_id"]
            lines.append(
                f"{n}\t{at.isoformat()}\t{_text(row['event'])}\t{_text(row['replica'])}\t"
                f"{_text(row['subject'])}\t{_text(row['subject_kind'])}\t"
                f"{_text(row['secret'])}\t{_text(row['role'])}\t"
                f"{_text(row['policy_version'])}\t{gid if gid else chr(92) + 'N'}\t"
                f"{_text(row['lease_id'])}\t{_stamp(row['expires_at'])}\t"
                f"{_text(row['outcome'])}\t{_text(row['request_id'])}\t"
                f"{_text(dumps(row['body']).decode())}\t{_text(row['dedupe_key'])}\t"
                f"\\\\x{prev.hex()}\t\\\\x{digest.hex()}\n"
            )
            prev = digest
            if n % checkpoint_every == 0:
                heads.append((n, digest, tree.root(), at))
            if len(lines) >= _BATCH_ROWS:
                out.put(_Chunk("".join(lines).encode(), len(lines), nodes, heads, at))
                lines, nodes, heads = [], [], []
        if at is None:
            raise AssertionError("the mix gave no rows")
        if n % checkpoint_every:
            heads.append((n, prev, tree.root(), at))
        out.put(_Chunk("".join(lines).encode(), len(lines), nodes, heads, at))
        out.put(None)
    except BaseException:
        out.put(traceback.format_exc())


# --- seeding ----------------------------------------------------------------------------


@dataclass
class SeedReport:
    rows: int
    first_at: datetime
    last_at: datetime
    copy_seconds: float  # generate + hash + COPY (overlapped), tree nodes, checkpoints
    index_seconds: float  # fast mode: recreating the secondary indexes
    vacuum_seconds: float
    seconds: float  # the whole seeding, wall
    checkpoints: int
    tree_nodes: int
    chain_trigger: str
    partitions: dict[str, int] = field(default_factory=dict)
    indexes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "first_at": self.first_at.isoformat(),
            "last_at": self.last_at.isoformat(),
            "seconds": round(self.seconds, 1),
            "copy_seconds": round(self.copy_seconds, 1),
            "index_seconds": round(self.index_seconds, 1),
            "vacuum_seconds": round(self.vacuum_seconds, 1),
            "rows_per_second": round(self.rows / self.copy_seconds) if self.copy_seconds else 0,
            "checkpoints": self.checkpoints,
            "tree_nodes": self.tree_nodes,
            "chain_trigger": self.chain_trigger,
            "partitions": self.partitions,
        }


async def _ensure_partitions(conn: Any, since: datetime, through: datetime) -> None:
    """Monthly partitions from ``since``'s month through ``through``'s, by the ledger's own
    ``create_partitions``. That function only extends forward from the newest partition,
    and the migration made this month's and the next ones; a history that starts earlier
    needs them dropped first (only ever on an empty ledger)."""
    first = await conn.fetchval(
        "SELECT min(to_date(substr(c.relname, 8), 'YYYY_MM')) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ledger.events'::regclass"
    )
    if first is not None and first > since.date():
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM ledger.events)"):
            raise RuntimeError("the ledger has rows: cannot seed history before them")
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger.events'::regclass"
        )
        for r in names:
            await conn.execute(f'DROP TABLE ledger."{r["relname"]}"')
    await conn.execute("SELECT ledger.create_partitions($1, $2)", since, through)


async def _index_definitions(conn: Any) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(c.oid) AS def FROM pg_index x"
        " JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = 'ledger.events'::regclass AND NOT x.indisprimary"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid)"
        " ORDER BY c.relname"
    )
    # A partitioned parent's definition reads "ON ONLY ledger.events": built that way it
    # would cover no partition. Without ONLY it is built on every partition, as migrated.
    return [(r["relname"], r["def"].replace(" ON ONLY ", " ON ", 1)) for r in rows]


async def _build_indexes(dsn: str, definitions: list[tuple[str, str]]) -> None:
    """Two at a time (CREATE INDEX takes a SHARE lock: builds do not block each other)."""
    import asyncpg

    todo = list(definitions)

    async def builder() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute("SET max_parallel_maintenance_workers = 0")
            while todo:
                _, ddl = todo.pop(0)
                await conn.execute(ddl)
        finally:
            await conn.close()

    await asyncio.gather(builder(), builder())


async def _trigger_states(conn: Any) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT c.relname, t.tgenabled::text AS state FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'ledger' AND t.tgname = $1",
        _CHAIN_TRIGGER,
    )
    return {r["relname"]: r["state"] for r in rows}


async def seed(
    dsn: str,
    mix: Any,
    *,
    signer: Any,
    origin: str,
    fast: bool = True,
    checkpoint_every: int = 100_000,
    progress: bool = True,
) -> SeedReport:
    """Seed an empty, migrated ledger at superuser ``dsn`` with ``mix``'s rows.

    Returns what was done and how long each part took. Raises RuntimeError if the ledger
    is not empty or the generator fails; the transaction then rolls back (trigger state
    included).
    """
    import asyncpg

    from broker.ledger import Checkpoint

    started = time.perf_counter()
    versions = mix.policy_versions()
    ctx = multiprocessing.get_context("spawn")
    chunks: Any = ctx.Queue(maxsize=3)
    proc = ctx.Process(target=_produce, args=(mix, checkpoint_every, chunks), daemon=True)
    proc.start()
    conn = await asyncpg.connect(dsn, timeout=10)
    nodes: list[tuple[int, int, bytes]] = []
    heads: list[tuple[int, bytes, bytes, datetime]] = []
    done = 0
    last_at: datetime | None = None
    loop = asyncio.get_running_loop()

    def next_chunk() -> Any:
        while True:
            try:
                return chunks.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive():
                    return f"generator process exited ({proc.exitcode}) without a result"

    async def source() -> AsyncIterator[bytes]:
        nonlocal done, last_at
        while True:
            item = await loop.run_in_executor(None, next_chunk)
            if item is None:
                return
            if isinstance(item, str):
                raise RuntimeError(f"ledger generator failed:\n{item}")
            nodes.extend(item.nodes)
            heads.extend(item.heads)
            done += item.rows
            last_at = item.last_at
            if progress:
                print(f"\r# seeded {done:,} rows", end="", file=sys.stderr, flush=True)
            yield item.data

    definitions: list[tuple[str, str]] = []
    try:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM ledger.events)"):
            raise RuntimeError("the ledger is not empty")
        first_at = versions[0][1]
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO ledger.policy_versions (version, first_seen, documents)"
                " VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
                [(v, at, json.dumps(docs)) for v, at, docs in versions],
            )
            await _ensure_partitions(conn, first_at, datetime.now(UTC) + timedelta(days=92))
            if fast:
                definitions = await _index_definitions(conn)
                for name, _ in definitions:
                    await conn.execute(f'DROP INDEX ledger."{name}"')
                await conn.execute(f"ALTER TABLE ledger.events DISABLE TRIGGER {_CHAIN_TRIGGER}")
            await conn.copy_to_table(
                "events", schema_name="ledger", source=source(), columns=list(COLUMNS)
            )
            if progress:
                print(file=sys.stderr)
            if fast:  # ALWAYS: a plain ENABLE would let replica-mode sessions skip it
                tables = ["events", *(await _trigger_states(conn))]
                for table in dict.fromkeys(tables):
                    await conn.execute(
                        f'ALTER TABLE ledger."{table}" ENABLE ALWAYS TRIGGER {_CHAIN_TRIGGER}'
                    )
            states = await _trigger_states(conn)
            partitions = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'ledger.events'::regclass"
            )
            missing = {"events", *(r["relname"] for r in partitions)} - set(states)
            wrong = {t: s for t, s in states.items() if s != "A"}
            if missing or wrong:
                raise RuntimeError(f"events_chain not ENABLE ALWAYS: {wrong}, missing {missing}")
            await conn.copy_records_to_table(
                "tree_nodes", schema_name="ledger", records=nodes, columns=["level", "idx", "hash"]
            )
            now = datetime.now(UTC)
            await conn.executemany(
                "INSERT INTO ledger.checkpoints (size, head_hash, root_hash, signed_at, key_id,"
                " note) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (
                        size,
                        head,
                        root,
                        min(at + timedelta(seconds=5), now),
                        signer.key_id,
                        signer.sign(Checkpoint(origin, size, head, root)),
                    )
                    for size, head, root, at in heads
                ],
            )
        copied = time.perf_counter()
        if definitions:
            await _build_indexes(dsn, definitions)
        indexed = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) ledger.events")
        await conn.execute("ANALYZE ledger.tree_nodes")
        await conn.execute("ANALYZE ledger.checkpoints")
        vacuumed = time.perf_counter()
        per_partition = {
            r["name"]: r["rows"]
            for r in await conn.fetch(
                "SELECT tableoid::regclass::text AS name, count(*) AS rows FROM ledger.events"
                " GROUP BY 1 ORDER BY 1"
            )
        }
        indexes = [
            r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'ledger'"
                " AND tablename = 'events' ORDER BY indexname"
            )
        ]
    finally:
        await conn.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
        with contextlib.suppress(Exception):
            chunks.close()
    assert last_at is not None
    return SeedReport(
        rows=done,
        first_at=first_at,
        last_at=last_at,
        copy_seconds=copied - started,
        index_seconds=indexed - copied,
        vacuum_seconds=vacuumed - indexed,
        seconds=vacuumed - started,
        checkpoints=len(heads),
        tree_nodes=len(nodes),
        chain_trigger="disabled for the COPY, re-enabled ALWAYS on the parent and every"
        " partition (checked)"
        if fast
        else "on (every row checked)",
        partitions=per_partition,
        indexes=indexes,
    )
