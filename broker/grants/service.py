"""Grants: issue, revoke and expire just-in-time credentials.

The request path (one place, in order):
  decide (pure policy) -> issuance rate (``Quotas.take_rate``) -> [leased engines: live-grant
  quota and ledger ``grant.intent``, under one lock] -> engine bulkhead -> Vault mint
  -> ledger ``grant.issued`` (committed) -> credential returned.
A quota refusal mints nothing and writes no row of its own (it is counted for the
aggregated ``quota.refused`` row).
Fail closed: if the issued row does not commit, the credential is never returned and
the lease/certificate just minted is revoked. KV v2 reads mint nothing revocable, so they
skip the intent row; their single issued row still commits before the value leaves.

Nothing secret is recorded: lease ids, usernames, serial numbers, KV versions — never
passwords, private keys or secret values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.auth.principal import Principal
from broker.durations import format_duration
from broker.errors import (
    BackendUnavailable,
    BrokerError,
    Conflict,
    Forbidden,
    LedgerUnavailable,
    NotFound,
    TooManyRequests,
    VaultError,
)
from broker.ledger import GrantRecord, Ledger, NewEvent
from broker.metrics import Metrics
from broker.policy.active import ActivePolicy
from broker.policy.decide import Decision, capabilities, decide
from broker.policy.model import CatalogEntry, Role
from broker.quotas import Effective, Quotas
from broker.vault import VaultClient

from .ssh import SSHAsk, check_fields, key_id_for, prepare
from .ssh import sign as sign_ssh

__all__ = ["GrantService", "IssueRequest", "common_name_for"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssueRequest:
    secret: str
    reason: str | None = None
    ticket: str | None = None
    ttl: int | None = None
    # Which API and client asked (e.g. the Vault front door and its user-agent): recorded.
    client: Mapping[str, str] | None = None
    # SSH secrets only: the caller's OpenSSH public key, and the principals it asks for
    # (None: all its role allows).
    public_key: str | None = None
    principals: tuple[str, ...] | None = None

    @property
    def ssh_principals(self) -> frozenset[str] | None:
        return frozenset(self.principals) if self.principals is not None else None


def _end_key(grant_id: uuid.UUID) -> str:
    # One end per grant, whichever replica or path gets there first.
    return f"grant:{grant_id}:end"


# Vault starts a lease's clock when it processes our call, a little after we measured.
_WINDOW_MARGIN_SECONDS = 1


def note_clipped_ttl(
    grant: dict[str, Any], requested: int | None, decision: Decision
) -> dict[str, Any]:
    """``grant`` with a warning when the requested TTL exceeded the role's ``max_ttl``
    (clipped, as Vault does, but said: a caller must not believe it got more time)."""
    if requested is not None and requested > decision.ttl:
        role = decision.role.name if decision.role else "the role"
        grant["warnings"] = [
            f"ttl {format_duration(requested)} was clipped to {format_duration(decision.ttl)},"
            f" the max_ttl of role {role!r}"
        ]
    return grant


def _clip(ttl: int, not_after: datetime | None) -> int:
    """``ttl`` clipped so the credential ends before ``not_after``; raise if no time is left."""
    if not_after is None:
        return ttl
    left = math.floor((not_after - datetime.now(UTC)).total_seconds()) - _WINDOW_MARGIN_SECONDS
    if left < 1:
        raise Conflict("the elevation window has ended", code="elevation_not_active")
    return min(ttl, left)


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and retrieve its outcome, whatever it is (no "never retrieved")."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def _refusal(guard: tuple[str, ...]) -> BrokerError:
    """Why the ledger refused the issued row: a guard key appeared while we minted."""
    if any(k.startswith("elevation:") for k in guard):
        return Conflict(
            "the elevation closed (or the subject was offboarded) before issuance",
            code="elevation_not_active",
        )
    return Forbidden("this subject has been offboarded", code="subject_offboarded")


def _principal_fields(p: Principal) -> dict[str, Any]:
    return {"subject": p.subject, "subject_kind": p.kind}


def common_name_for(p: Principal) -> str:
    """Certificates are for the caller's own identity only: no caller-chosen names."""
    sa = p.service_account
    if sa:
        namespace, _, name = sa.partition(":")
        return f"{name}.{namespace}.internal"
    return f"{p.subject}.users.internal"


class GrantService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        vault: VaultClient,
        policy: ActivePolicy,
        metrics: Metrics,
        quotas: Quotas,
        issue_guard: Callable[[Principal], tuple[str, ...]] = lambda _: (),
    ) -> None:
        self._ledger = ledger
        self._quotas = quotas
        self._vault = vault
        self._policy = policy
        self._metrics = metrics
        # Ledger keys whose presence must stop an issuance (the subject's offboarding).
        self._issue_guard = issue_guard
        # Leases seen in Vault without a ledger row on the previous orphan sweep.
        self._orphan_suspects: set[str] = set()

    def _count(self, secret: str, outcome: str) -> None:
        known = secret in self._policy.current.catalog
        self._metrics.count_issuance(secret if known else "other", outcome)

    async def _take_rate(
        self, principal: Principal, role: Role | None, entry: CatalogEntry | None, secret: str
    ) -> Effective:
        """``Quotas.take_rate``, with a refusal counted as this secret's issuance outcome."""
        try:
            return await self._quotas.take_rate(principal, role, entry, secret)
        except BrokerError:
            self._count(secret, "rate_limited")
            raise

    async def issue(
        self,
        principal: Principal,
        req: IssueRequest,
        *,
        request_id: str,
        decision: Decision | None = None,
    ) -> dict[str, Any]:
        """Issue a credential or raise. Every outcome is ledgered before it is returned.

        ``decision``: ``decide()`` for this request on the current policy, if the caller
        has just made it (the Vault API needs it first to look for an elevation).
        """
        policy = self._policy.current
        if decision is None:
            decision = decide(
                policy, principal, req.secret, req.ttl, ssh_principals=req.ssh_principals
            )
        limits = await self._take_rate(principal, decision.role, decision.entry, req.secret)
        if decision.outcome != "allow":
            await self.record_denial(
                principal,
                req.secret,
                decision,
                request_id=request_id,
                reason=req.reason,
                ticket=req.ticket,
                client=req.client,
            )
            self._count(req.secret, decision.outcome)
            if decision.outcome == "elevation_required":
                raise Forbidden(decision.message, code="elevation_required", recorded=True)
            if decision.outcome == "unknown_secret":
                raise NotFound(decision.message, code="unknown_secret", recorded=True)
            raise Forbidden(decision.message, code="denied", recorded=True)
        assert decision.entry is not None and decision.role is not None
        ssh = self.ssh_ask(decision.entry, decision.role, req.public_key, req.principals)
        grant = await self._issue_allowed(
            principal,
            entry=decision.entry,
            role=decision.role,
            ttl=decision.ttl,
            policy_version=policy.version,
            reason=req.reason,
            ticket=req.ticket,
            request_id=request_id,
            limits=limits,
            extra={"client": dict(req.client)} if req.client else None,
            ssh=ssh,
        )
        return note_clipped_ttl(grant, req.ttl, decision)

    @staticmethod
    def ssh_ask(
        entry: CatalogEntry,
        role: Role,
        public_key: str | None,
        principals: tuple[str, ...] | None,
    ) -> SSHAsk | None:
        """The checked SSH part of a request (None for other engines); 400/403 first."""
        check_fields(entry, public_key, principals)
        if entry.engine != "ssh":
            return None
        assert public_key is not None
        return prepare(role, public_key, principals)

    async def issue_elevated(
        self,
        principal: Principal,
        *,
        entry: CatalogEntry,
        role: Role,
        ttl: int,
        policy_version: str,
        elevation_id: uuid.UUID,
        guard: str,
        not_after: datetime,
        reason: str | None,
        ticket: str | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
        ssh: SSHAsk | None = None,
    ) -> dict[str, Any]:
        """Issue under an approved elevation (the caller checked it is open and theirs).

        The credential never outlives ``not_after`` (the window's end): the TTL is measured
        against it when Vault mints, not when the request arrived, less a one-second margin
        for Vault's own clock. The issued row carries ``elevation_id`` and is written only
        if ``guard`` (the
        elevation's closing key) is absent at commit: a cancel racing this redemption
        either lands first (nothing issued, lease revoked, 409) or after (it revokes this).
        """
        limits = await self._take_rate(principal, role, entry, entry.name)
        return await self._issue_allowed(
            principal,
            entry=entry,
            role=role,
            ttl=ttl,
            policy_version=policy_version,
            reason=reason,
            ticket=ticket,
            request_id=request_id,
            limits=limits,
            extra={
                "elevation_id": str(elevation_id),
                **({"client": dict(client)} if client else {}),
            },
            guard=(guard,),
            not_after=not_after,
            ssh=ssh,
        )

    async def _issue_allowed(
        self,
        principal: Principal,
        *,
        entry: CatalogEntry,
        role: Role,
        ttl: int,
        policy_version: str,
        reason: str | None,
        ticket: str | None,
        request_id: str,
        limits: Effective,
        extra: dict[str, Any] | None = None,
        guard: tuple[str, ...] = (),
        not_after: datetime | None = None,
        ssh: SSHAsk | None = None,
    ) -> dict[str, Any]:
        secret = entry.name
        base = {
            **_principal_fields(principal),
            "secret": secret,
            "role": role.name,
            "policy_version": policy_version,
            "grant_id": uuid.uuid4(),
            "request_id": request_id,
        }
        context = {
            "engine": entry.engine,
            "mount": entry.mount,
            "path": entry.path,
            "ttl": ttl,
            "reason": reason,
            "ticket": ticket,
            "role_source": role.source,
            "issuer": principal.issuer,
            # Groups as the token stated them: policy-vs-log checks replay decide() later.
            "groups": sorted(principal.groups),
            **(extra or {}),
        }
        if ssh is not None:  # in the intent row too: a certificate without an issued
            # row is revoked by its key id (GET /v1/ssh/krl)
            context["key_id"] = key_id_for(base["grant_id"], principal.subject)
            context["principals"] = list(ssh.principals)
            context["public_key_fingerprint"] = ssh.public_key.fingerprint
        try:
            grant = await self._mint(
                entry,
                ttl,
                principal,
                base,
                context,
                guard + self._issue_guard(principal),
                not_after,
                limits,
                ssh,
            )
        except TooManyRequests:
            self._count(secret, "quota_exceeded")
            raise
        except BrokerError:
            self._count(secret, "error")
            raise
        self._count(secret, "issued")
        return grant

    async def _mint(
        self,
        entry: CatalogEntry,
        ttl: int,
        principal: Principal,
        base: dict[str, Any],
        context: dict[str, Any],
        guard: tuple[str, ...],
        not_after: datetime | None,
        limits: Effective,
        ssh: SSHAsk | None,
    ) -> dict[str, Any]:
        if entry.engine == "kv2":
            async with self._quotas.backend(principal, entry):
                return await self._read_kv(entry, ttl, base, context, guard, not_after)

        # Leased engines: the intent row exists before Vault mints anything, admitted by
        # the live-grant quota under the same lock (so it counts for the next request).
        async with self._quotas.live_grant(principal, entry, limits):
            await self._ledger.append(
                NewEvent(event="grant.intent", outcome="pending", body=context, **base)
            )
        revoke: Callable[[], Awaitable[None]] | None = None
        try:
            async with self._quotas.backend(principal, entry):
                if entry.engine == "database":
                    creds = await self._vault.database_creds(entry.mount, entry.path)
                    lease_id, revoke = creds.lease_id, self._lease_revoker(creds.lease_id)
                    # Measured now, after the mint: the window keeps running meanwhile.
                    ttl = _clip(ttl, not_after)
                    duration = creds.lease_duration
                    if ttl < duration:
                        # Let Vault itself end the login at our TTL, not only our sweeper.
                        duration = await self._vault.renew_lease(creds.lease_id, ttl) or ttl
                    duration = min(duration, ttl)
                    expires = datetime.now(UTC) + timedelta(seconds=duration)
                    if not_after is not None:
                        expires = min(expires, not_after)
                    record = {**context, "username": creds.username, "lease_duration": duration}
                    credential: dict[str, Any] = {
                        "username": creds.username,
                        "password": creds.password,
                    }
                elif entry.engine == "ssh":
                    assert ssh is not None
                    key_id = str(context["key_id"])
                    # Nothing to revoke in Vault: without an issued row the KRL lists it.
                    revoke = self._ssh_revoker(key_id)
                    signed, credential, expires = await sign_ssh(
                        self._vault, entry, ssh, ttl=_clip(ttl, not_after), key_id=key_id
                    )
                    lease_id, record = None, {**context, **signed}
                else:
                    ttl = _clip(ttl, not_after)
                    cert = await self._vault.pki_issue(
                        entry.mount, entry.path, common_name=common_name_for(principal), ttl=ttl
                    )
                    lease_id, revoke = None, self._cert_revoker(entry.mount, cert.serial_number)
                    expires = datetime.fromtimestamp(cert.expiration, UTC)
                    record = {
                        **context,
                        "serial_number": cert.serial_number,
                        "common_name": common_name_for(principal),
                    }
                    credential = {
                        "certificate": cert.certificate,
                        "private_key": cert.private_key,
                        "issuing_ca": cert.issuing_ca,
                        "ca_chain": list(cert.ca_chain),
                        "serial_number": cert.serial_number,
                    }
        except BrokerError as e:
            if revoke is not None:  # minted, then failed (renewal, window): kill it now
                await revoke()
            with contextlib.suppress(LedgerUnavailable):
                await self._ledger.append(
                    NewEvent(
                        event="grant.failed",
                        outcome=e.code,
                        body={**context, "error": e.message},
                        **base,
                    )
                )
            raise
        try:
            appended = await self._ledger.append(
                NewEvent(
                    event="grant.issued",
                    outcome="issued",
                    lease_id=lease_id,
                    expires_at=expires,
                    body=record,
                    requires_absent=guard,
                    **base,
                )
            )
        except LedgerUnavailable:
            # No committed row: the credential must die before anyone can use it.
            await revoke()
            raise
        if appended.refused:
            await revoke()
            raise _refusal(guard)
        return self._grant_body(base, appended.recorded_at, expires, lease_id, credential)

    async def _read_kv(
        self,
        entry: CatalogEntry,
        ttl: int,
        base: dict[str, Any],
        context: dict[str, Any],
        guard: tuple[str, ...],
        not_after: datetime | None,
    ) -> dict[str, Any]:
        """A KV read and its ``grant.issued`` row, at once.

        A KV value mints nothing that would need revoking, so its row need not wait for
        the read (the latency of one commit saved per issuance): the row is committed
        while OpenBao answers, and the value goes out only when both succeeded. If the
        read fails after the row committed, the grant is ended at once with a
        ``grant.revoked`` row saying nothing was delivered: the ledger may overstate
        access for that instant, never understate it. The row therefore cannot carry
        the KV version (the response does).
        """
        ttl = _clip(ttl, not_after)
        expires = datetime.now(UTC) + timedelta(seconds=ttl)
        read = asyncio.ensure_future(self._vault.read_kv2(entry.mount, entry.path))
        try:
            appended = await self._ledger.append(
                NewEvent(
                    event="grant.issued",
                    outcome="issued",
                    expires_at=expires,
                    body=context,
                    requires_absent=guard,
                    **base,
                )
            )
        except BaseException:
            _discard(read)
            raise
        if appended.refused:
            _discard(read)
            raise _refusal(guard)
        try:
            kv = await read
        except BrokerError as e:
            with contextlib.suppress(LedgerUnavailable):  # the sweeper ends it at expiry
                await self._ledger.append(
                    NewEvent(
                        event="grant.revoked",
                        outcome="not_delivered",
                        body={
                            "grant_subject": base["subject"],
                            "reason": "not delivered: the KV read failed",
                            "error": e.message,
                        },
                        dedupe_key=_end_key(base["grant_id"]),
                        **base,
                    )
                )
            raise
        credential: dict[str, Any] = {"data": dict(kv.data), "version": kv.version}
        return self._grant_body(base, appended.recorded_at, expires, None, credential)

    def _lease_revoker(self, lease_id: str) -> Any:
        async def revoke() -> None:
            try:
                await self._vault.revoke_lease(lease_id)
            except BrokerError:
                _log.error("could not revoke unrecorded lease; orphan sweep will retry")

        return revoke

    @staticmethod
    def _ssh_revoker(key_id: str) -> Any:
        async def revoke() -> None:
            _log.warning(
                "SSH certificate %s was signed but not recorded: GET /v1/ssh/krl revokes it",
                key_id,
            )

        return revoke

    def _cert_revoker(self, mount: str, serial: str) -> Any:
        async def revoke() -> None:
            try:
                await self._vault.pki_revoke(mount, serial)
            except BrokerError:
                _log.error("could not revoke unrecorded certificate %s", serial)

        return revoke

    @staticmethod
    def _grant_body(
        base: dict[str, Any],
        issued_at: datetime | None,
        expires: datetime,
        lease_id: str | None,
        credential: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": str(base["grant_id"]),
            "secret": base["secret"],
            "subject": base["subject"],
            "role": base["role"],
            "policy_version": base["policy_version"],
            "issued_at": issued_at.isoformat() if issued_at else None,
            "expires_at": expires.isoformat(),
            "lease_id": lease_id,
            "credential": credential,
        }

    async def record_denial(
        self,
        principal: Principal,
        secret: str,
        decision: Decision,
        *,
        request_id: str,
        reason: str | None,
        ticket: str | None,
        client: Mapping[str, str] | None = None,
    ) -> None:
        extra = {"client": dict(client)} if client else {}
        await self._ledger.append(
            NewEvent(
                event="grant.denied",
                outcome=decision.outcome,
                secret=secret[:128],
                role=decision.role.name if decision.role else None,
                policy_version=self._policy.current.version,
                request_id=request_id,
                body={
                    "message": decision.message,
                    "reason": reason,
                    "ticket": ticket,
                    **extra,
                },
                **_principal_fields(principal),
            )
        )

    async def list_grants(
        self, principal: Principal, *, active_only: bool, limit: int
    ) -> list[GrantRecord]:
        return await self._ledger.grants_for(
            principal.subject, active_only=active_only, limit=limit
        )

    async def revoke(
        self, principal: Principal, grant_id: uuid.UUID, *, request_id: str, reason: str | None
    ) -> dict[str, Any]:
        """End a grant now: Vault first (so the ledger never understates access), then ledger.

        Owners may revoke their own grants; the ``admin`` capability may revoke anyone's.
        Someone else's grant is reported as not found so ids cannot be probed.
        """
        record = await self._ledger.grant(grant_id)
        is_admin = "admin" in capabilities(self._policy.current, principal)
        if record is None or (record.issued.subject != principal.subject and not is_admin):
            raise NotFound("no such grant", code="grant_not_found")
        now = datetime.now(UTC)
        if record.status(now) != "active":
            raise Conflict(f"grant is already {record.status(now)}", code="grant_not_active")
        ended = await self._revoke_record(record, principal, request_id=request_id, reason=reason)
        if ended is None:
            raise Conflict("grant already ended", code="grant_not_active")
        result = record.to_json(ended)
        result.update(status="revoked", ended_at=ended.isoformat(), ended_by=principal.subject)
        return result

    async def _own_lease(self, principal: Principal, lease_id: str) -> GrantRecord:
        """The active grant holding ``lease_id``, if it is the caller's (or they are admin)."""
        record = await self._ledger.grant_by_lease(lease_id)
        is_admin = "admin" in capabilities(self._policy.current, principal)
        if record is None or (record.issued.subject != principal.subject and not is_admin):
            raise NotFound("no such lease", code="lease_not_found")
        now = datetime.now(UTC)
        if record.status(now) != "active":
            raise Conflict(f"the lease's grant is {record.status(now)}", code="grant_not_active")
        return record

    async def revoke_lease(
        self, principal: Principal, lease_id: str, *, request_id: str, reason: str | None
    ) -> dict[str, Any]:
        """``revoke`` addressed by lease id (Vault clients know leases, not grants)."""
        record = await self._own_lease(principal, lease_id)
        return await self.revoke(principal, record.grant_id, request_id=request_id, reason=reason)

    async def renew_lease(
        self,
        principal: Principal,
        lease_id: str,
        increment: int | None,
        *,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> int:
        """Renew a lease of the caller's, never past the grant's recorded end; return its TTL.

        The grant's window was fixed (and ledgered) at issuance, so a renewal only restores
        Vault's TTL up to it: the evidence keeps saying exactly when access ended.
        """
        record = await self._own_lease(principal, lease_id)
        expires = record.issued.expires_at
        assert expires is not None  # leased grants always carry their end
        left = math.floor((expires - datetime.now(UTC)).total_seconds())
        if left < 1:
            raise Conflict("the lease's grant has ended", code="grant_not_active")
        wanted = left if increment is None or increment <= 0 else min(increment, left)
        duration = min(await self._vault.renew_lease(lease_id, wanted) or wanted, left)
        await self._ledger.append(
            NewEvent(
                event="grant.renewed",
                outcome="renewed",
                subject=principal.subject,
                subject_kind=principal.kind,
                secret=record.issued.secret,
                role=record.issued.role,
                policy_version=record.issued.policy_version,
                grant_id=record.grant_id,
                lease_id=lease_id,
                expires_at=expires,
                request_id=request_id,
                body={
                    "increment": increment,
                    "lease_duration": duration,
                    **({"client": dict(client)} if client else {}),
                },
            )
        )
        return duration

    async def revoke_grants(
        self,
        grant_ids: list[str],
        actor: Principal,
        *,
        request_id: str,
        reason: str,
        cause: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Revoke each still-active grant (the caller has the authority); return those ended.

        ``cause`` (e.g. ``{"offboarding_id": ...}``) goes into each ``grant.revoked`` body,
        so evidence says structurally, not by wording, why the grant ended.
        """
        ended: list[str] = []
        now = datetime.now(UTC)
        for gid in grant_ids:
            record = await self._ledger.grant(uuid.UUID(gid))
            if record is None or record.status(now) != "active":
                continue
            if await self._revoke_record(
                record, actor, request_id=request_id, reason=reason, cause=cause
            ):
                ended.append(gid)
        return ended

    async def _revoke_record(
        self,
        record: GrantRecord,
        actor: Principal,
        *,
        request_id: str,
        reason: str | None,
        cause: Mapping[str, Any] | None = None,
    ) -> datetime | None:
        """Vault first, then the ``grant.revoked`` row; None if another path ended it first."""
        await self._end_in_vault(record)
        appended = await self._ledger.append(
            NewEvent(
                event="grant.revoked",
                outcome="revoked",
                subject=actor.subject,
                subject_kind=actor.kind,
                secret=record.issued.secret,
                role=record.issued.role,
                policy_version=self._policy.current.version,
                grant_id=record.grant_id,
                lease_id=record.issued.lease_id,
                request_id=request_id,
                body={"grant_subject": record.issued.subject, "reason": reason, **(cause or {})},
                dedupe_key=_end_key(record.grant_id),
            )
        )
        if appended.duplicate:
            return None
        self._metrics.revocations.labels("revoked").inc()
        return appended.recorded_at or datetime.now(UTC)

    async def _end_in_vault(self, record: GrantRecord) -> None:
        body = record.issued.body
        if record.issued.lease_id:
            await self._vault.revoke_lease(record.issued.lease_id)
        elif body.get("engine") == "pki" and body.get("serial_number"):
            await self._vault.pki_revoke(str(body["mount"]), str(body["serial_number"]))
        # KV v2 values are static: the grant's window ends here; rotating is a separate act.
        # SSH certificates cannot be recalled: the grant.revoked row puts them in the KRL.

    async def expire_due(self, *, limit: int = 200) -> int:
        """Record ``grant.expired`` for grants past their end; revoke leftovers in Vault.

        Safe on every replica at once: the dedupe key records each expiry once.
        """
        done = 0
        for record in await self._ledger.due_for_expiry(limit):
            try:
                if record.issued.lease_id:
                    await self._vault.revoke_lease(record.issued.lease_id)
            except BackendUnavailable:
                return done  # Vault down: try again next sweep
            except BrokerError:
                _log.warning("revoke at expiry failed for grant %s", record.grant_id)
            appended = await self._ledger.append(
                NewEvent(
                    event="grant.expired",
                    outcome="expired",
                    subject=record.issued.subject,
                    subject_kind=record.issued.subject_kind,
                    secret=record.issued.secret,
                    role=record.issued.role,
                    policy_version=record.issued.policy_version,
                    grant_id=record.grant_id,
                    lease_id=record.issued.lease_id,
                    expires_at=record.issued.expires_at,
                    body={
                        "expired_at": record.issued.expires_at.isoformat()
                        if record.issued.expires_at
                        else None
                    },
                    dedupe_key=_end_key(record.grant_id),
                )
            )
            if not appended.duplicate:
                done += 1
                self._metrics.revocations.labels("expired").inc()
        return done

    async def _revoke_orphan(self, lease_id: str) -> bool:
        """Revoke; True when Vault could only drop the lease because the database role
        behind it no longer exists (revoked twice at once, or dropped by hand): Vault keeps
        such a lease forever otherwise, and every sweep would stop at it."""
        try:
            await self._vault.revoke_lease(lease_id)
        except VaultError as e:
            if "does not exist" not in e.message:
                raise
            await self._vault.revoke_lease_force(lease_id)
            return True
        return False

    async def reconcile_orphan_leases(self) -> int:
        """Revoke database leases Vault holds that no ``grant.issued`` row accounts for.

        Such a lease exists when a replica died between minting and committing its issued
        row (or its post-failure revoke failed). A lease must be unknown on two consecutive
        sweeps before it is revoked, so a mint whose row is committing right now is safe.
        Each revocation is ledgered as ``lease.orphan_revoked``. Returns how many.
        """
        prefixes = sorted(
            {
                f"{e.mount}/creds/{e.path}"
                for e in self._policy.current.catalog.values()
                if e.engine == "database"
            }
        )
        seen: list[str] = []
        for prefix in prefixes:
            seen.extend(await self._vault.list_leases(prefix))
        unknown = set(seen) - await self._ledger.known_lease_ids(seen) if seen else set()
        confirmed = unknown & self._orphan_suspects
        self._orphan_suspects = unknown - confirmed
        revoked = 0
        for lease_id in sorted(confirmed):
            try:
                forced = await self._revoke_orphan(lease_id)
            except BackendUnavailable:
                raise
            except BrokerError as e:  # one bad lease must not stop the sweep for the rest
                _log.warning("orphan lease %s not revoked: %s", lease_id, e.message)
                continue
            await self._ledger.append(
                NewEvent(
                    event="lease.orphan_revoked",
                    outcome="revoked",
                    lease_id=lease_id,
                    policy_version=self._policy.current.version,
                    body={
                        "why": "lease has no committed grant.issued row",
                        **({"forced": "its database role was already gone"} if forced else {}),
                    },
                    dedupe_key=f"lease:{lease_id}:orphan",
                )
            )
            self._metrics.revocations.labels("orphan").inc()
            revoked += 1
        return revoked
