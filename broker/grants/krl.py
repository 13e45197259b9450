"""The SSH key revocation list hosts install (``RevokedKeys``), built from the ledger.

SSH certificates cannot be recalled once signed, so ending an SSH grant early means
telling every host to refuse it: the KRL lists, by serial and by key id, each certificate
of the mount's CA that is still valid and whose grant was revoked (by its holder, an
admin, an offboarding), plus any that may have been signed without a committed issued
row. It is built on each request from the ledger, so a revocation is in the very next
list; hosts fetch it on a timer (docs/ssh.md).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from broker.errors import NotFound
from broker.ledger import Ledger
from broker.ledger.ssh_queries import ssh_revocations
from broker.policy.active import ActivePolicy
from broker.ssh import build_krl
from broker.vault import VaultClient

__all__ = ["RevocationList"]

# A mint whose intent is younger than this may still be signing: not listed yet.
_SETTLE = timedelta(seconds=60)
# The CA key changes only when an operator rotates it: re-read it this often.
_CA_CACHE_SECONDS = 60.0


class RevocationList:
    def __init__(self, *, ledger: Ledger, vault: VaultClient, policy: ActivePolicy) -> None:
        self._ledger = ledger
        self._vault = vault
        self._policy = policy
        self._ca: dict[str, tuple[float, str]] = {}

    def mounts(self) -> list[str]:
        return sorted({e.mount for e in self._policy.current.catalog.values() if e.engine == "ssh"})

    async def ca_public_key(self, mount: str | None) -> str:
        """The CA key of ``mount`` (as ``krl`` picks it): what hosts put in
        ``TrustedUserCAKeys``."""
        return await self._ca_key(self._mount(mount))

    def _mount(self, mount: str | None) -> str:
        mounts = self.mounts()
        if mount is None and len(mounts) == 1:
            mount = mounts[0]
        if mount is None or mount not in mounts:
            known = ", ".join(mounts) or "none"
            raise NotFound(
                f"no SSH mount {mount!r} in the catalog (known: {known}); name one with ?mount="
                if mount
                else f"several SSH mounts ({known}): name one with ?mount=",
                code="unknown_ssh_mount",
            )
        return mount

    async def krl(self, mount: str | None) -> bytes:
        """The KRL for ``mount`` (default: the catalog's one SSH mount); NotFound when the
        catalog has no such SSH mount, or several and none was named."""
        mount = self._mount(mount)
        policy = self._policy.current
        longest = max(
            (
                r.max_ttl
                for r in policy.roles
                if r.ssh is not None
                and any(e.engine == "ssh" and r.grants(e.name) for e in policy.catalog.values())
            ),
            default=0,
        )
        serials, key_ids = await ssh_revocations(
            self._ledger,
            mount,
            horizon=timedelta(seconds=longest + 300),
            settle=_SETTLE,
        )
        now = datetime.now(UTC)
        return build_krl(
            await self._ca_key(mount),
            serials=sorted(serials),
            key_ids=sorted(key_ids),
            version=int(now.timestamp()),
            generated_at=now,
            comment=f"jit-broker {mount}",
        )

    async def _ca_key(self, mount: str) -> str:
        cached = self._ca.get(mount)
        if cached is not None and time.monotonic() - cached[0] < _CA_CACHE_SECONDS:
            return cached[1]
        key = await self._vault.ssh_ca_public_key(mount)
        self._ca[mount] = (time.monotonic(), key)
        return key
