"""The only module that talks to Vault/OpenBao on the request path.

A thin aiohttp client for the few hot endpoints (KV v2 read, database creds, PKI issue,
lease renew/revoke, health): hvac is synchronous and costs ~1.5 ms CPU a call, this costs
~0.3 ms. Responses are parsed into frozen dataclasses here; callers never see aiohttp or
Vault's JSON. Errors are translated at this boundary:

- connection failure / timeout / 5xx / sealed  -> VaultUnavailable (503, fail closed)
- a certificate that does not verify            -> VaultUnavailable code ``vault_tls``
                                                   (names the address and the reason)
- 403 / 404 / 400 from Vault                   -> VaultError (502: our config is wrong)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from broker.errors import VaultError, VaultUnavailable
from broker.tls.outbound import ClientTLS, describe_tls_failure

__all__ = ["DatabaseCredential", "KVSecret", "PKICertificate", "VaultClient", "vault_unreachable"]


@dataclass(frozen=True)
class KVSecret:
    data: Mapping[str, Any]
    version: int | None


@dataclass(frozen=True)
class DatabaseCredential:
    username: str
    password: str
    lease_id: str
    lease_duration: int


@dataclass(frozen=True)
class PKICertificate:
    certificate: str
    private_key: str
    issuing_ca: str
    ca_chain: tuple[str, ...]
    serial_number: str
    expiration: int


@dataclass(frozen=True)
class SSHSigned:
    """A user certificate OpenBao's SSH engine signed: the OpenSSH certificate line and
    its serial (decimal, as OpenBao reports it in hex, converted here)."""

    signed_key: str
    serial: int


class VaultClient:
    """Async client bound to one Vault address and token source.

    ``token`` is a callable so AppRole/Kubernetes login can rotate the token underneath;
    on a 403, ``on_token_rejected(token)`` may log in again, and the call is retried once
    if the token changed (an expired or revoked broker token heals without a failed call).
    ``on_call(endpoint, seconds, ok)`` feeds metrics. ``tls`` (for ``https://``) is the
    verifying client context; without it the system trust store verifies.
    """

    def __init__(
        self,
        addr: str,
        token: Callable[[], str],
        *,
        timeout: float = 5.0,
        max_connections: int = 64,
        on_call: Callable[[str, float, bool], None] | None = None,
        on_token_rejected: Callable[[str], Awaitable[bool]] | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self._addr = addr.rstrip("/")
        self._tls = tls
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._on_call = on_call
        self._on_token_rejected = on_token_rejected
        self._session: aiohttp.ClientSession | None = None
        self._kv_in_flight: dict[tuple[str, str], asyncio.Future[KVSecret]] = {}

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    ssl=self._tls.context if self._tls else True,
                ),
                timeout=self._timeout,
            )

    @property
    def closed(self) -> bool:
        """True before ``start`` and after ``close``."""
        return self._session is None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        json: Mapping[str, Any] | None = None,
        allow: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        token = self._token()
        status, body = await self._call_once(method, path, endpoint, token, json)
        if (
            status == 403
            and self._on_token_rejected is not None
            and await self._on_token_rejected(token)
        ):
            status, body = await self._call_once(method, path, endpoint, self._token(), json)
        return self._check(status, body, endpoint, allow)

    async def _call_once(
        self,
        method: str,
        path: str,
        endpoint: str,
        token: str,
        json: Mapping[str, Any] | None,
    ) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            raise VaultUnavailable("vault client is not started")
        started = time.perf_counter()
        status = 0
        try:
            async with self._session.request(
                method,
                f"{self._addr}/v1/{path}",
                json=json,
                headers={"X-Vault-Token": token, "X-Vault-Request": "true"},
                server_hostname=self._tls.server_hostname if self._tls else None,
            ) as resp:
                status = resp.status
                body: dict[str, Any] = {}
                if status != 204:
                    parsed = await resp.json(content_type=None)
                    body = parsed if isinstance(parsed, dict) else {}
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise vault_unreachable(self._addr, endpoint, e) from e
        finally:
            if self._on_call is not None:
                self._on_call(endpoint, time.perf_counter() - started, 0 < status < 500)
        return status, body

    @staticmethod
    def _check(
        status: int, body: dict[str, Any], endpoint: str, allow: tuple[int, ...]
    ) -> tuple[int, dict[str, Any]]:
        if status in allow or 200 <= status < 300:
            return status, body
        if status >= 500 or status == 429:
            raise VaultUnavailable(f"vault failed ({endpoint}: HTTP {status})")
        # Vault's error strings can name paths but never secret values; keep them short.
        errors = body.get("errors") or []
        detail = str(errors[0])[:200] if errors else f"HTTP {status}"
        raise VaultError(f"vault refused {endpoint}: {detail}")

    async def read_kv2(self, mount: str, path: str) -> KVSecret:
        """Read the current version of a KV v2 secret.

        Concurrent reads of the same secret share one Vault request (single flight): a
        caller that arrives while a read is in flight gets that read's answer. It is never
        older than one Vault round trip — no cache, nothing kept after the read ends — and
        it spares Vault (and this process) a request per caller under load. Only static KV
        values are shared this way; dynamic credentials are always minted per caller.
        """
        key = (mount, path)
        pending = self._kv_in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._read_kv2(mount, path))
        self._kv_in_flight[key] = task
        task.add_done_callback(lambda _: self._kv_in_flight.pop(key, None))
        return await asyncio.shield(task)

    async def _read_kv2(self, mount: str, path: str) -> KVSecret:
        _, body = await self._call("GET", f"{_seg(mount)}/data/{_seg(path)}", "kv2.read")
        data = body.get("data") or {}
        meta = data.get("metadata") or {}
        secret = data.get("data")
        if not isinstance(secret, dict):
            raise VaultError("vault returned no KV data (deleted or destroyed version)")
        version = meta.get("version")
        return KVSecret(secret, version if isinstance(version, int) else None)

    async def read_kv2_metadata(self, mount: str, path: str) -> dict[str, Any]:
        """A KV v2 secret's metadata (versions, times; never values), as Vault returns it."""
        _, body = await self._call("GET", f"{_seg(mount)}/metadata/{_seg(path)}", "kv2.metadata")
        data = body.get("data")
        if not isinstance(data, dict):
            raise VaultError("vault returned no KV metadata")
        return data

    async def database_creds(self, mount: str, role: str) -> DatabaseCredential:
        _, body = await self._call("GET", f"{_seg(mount)}/creds/{_seg(role)}", "database.creds")
        data = body.get("data") or {}
        try:
            return DatabaseCredential(
                username=str(data["username"]),
                password=str(data["password"]),
                lease_id=str(body["lease_id"]),
                lease_duration=int(body.get("lease_duration") or 0),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VaultError("vault returned malformed database credentials") from e

    async def pki_issue(
        self, mount: str, role: str, *, common_name: str, ttl: int
    ) -> PKICertificate:
        _, body = await self._call(
            "POST",
            f"{_seg(mount)}/issue/{_seg(role)}",
            "pki.issue",
            json={"common_name": common_name, "ttl": f"{ttl}s"},
        )
        data = body.get("data") or {}
        try:
            return PKICertificate(
                certificate=str(data["certificate"]),
                private_key=str(data["private_key"]),
                issuing_ca=str(data.get("issuing_ca", "")),
                ca_chain=tuple(str(c) for c in data.get("ca_chain") or ()),
                serial_number=str(data["serial_number"]),
                expiration=int(data["expiration"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VaultError("vault returned a malformed certificate") from e

    async def ssh_sign(
        self,
        mount: str,
        role: str,
        *,
        public_key: str,
        principals: tuple[str, ...],
        ttl: int,
        key_id: str,
        extensions: tuple[str, ...],
        critical_options: Mapping[str, str],
    ) -> SSHSigned:
        """Have the SSH engine (CA mode) sign ``public_key`` as a user certificate."""
        _, body = await self._call(
            "POST",
            f"{_seg(mount)}/sign/{_seg(role)}",
            "ssh.sign",
            json={
                "public_key": public_key,
                "cert_type": "user",
                "valid_principals": ",".join(principals),
                "ttl": f"{ttl}s",
                "key_id": key_id,
                "extensions": {name: "" for name in extensions},
                "critical_options": dict(critical_options),
            },
        )
        data = body.get("data") or {}
        try:
            return SSHSigned(
                signed_key=str(data["signed_key"]).strip(),
                serial=int(str(data["serial_number"]).replace("-", "").replace(":", ""), 16),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VaultError("vault returned a malformed SSH certificate") from e

    async def ssh_ca_public_key(self, mount: str) -> str:
        """The SSH engine's CA public key (OpenSSH line), what hosts trust."""
        _, body = await self._call("GET", f"{_seg(mount)}/config/ca", "ssh.ca")
        key = (body.get("data") or {}).get("public_key")
        if not isinstance(key, str) or not key.strip():
            raise VaultError(f"the SSH engine at {mount!r} has no CA key configured")
        return key.strip()

    async def pki_revoke(self, mount: str, serial_number: str) -> None:
        await self._call(
            "POST", f"{_seg(mount)}/revoke", "pki.revoke", json={"serial_number": serial_number}
        )

    async def renew_lease(self, lease_id: str, increment: int) -> int:
        """Set the lease's TTL to ``increment`` seconds from now (Vault may clip); return it."""
        _, body = await self._call(
            "PUT",
            "sys/leases/renew",
            "lease.renew",
            json={"lease_id": lease_id, "increment": increment},
        )
        return int(body.get("lease_duration") or 0)

    async def revoke_lease(self, lease_id: str) -> None:
        """Revoke a lease now. Revoking an unknown or already-expired lease is not an error."""
        await self._call("PUT", "sys/leases/revoke", "lease.revoke", json={"lease_id": lease_id})

    async def revoke_lease_force(self, lease_id: str) -> None:
        """Drop a lease whose backend object is already gone (Vault's ``revoke-force``:
        needs ``sudo``). Only for a lease whose revocation failed because the credential
        no longer exists: it never leaves a working credential behind."""
        await self._call("PUT", f"sys/leases/revoke-force/{_seg(lease_id)}", "lease.revoke_force")

    async def list_leases(self, prefix: str) -> list[str]:
        """Lease ids under ``prefix`` (e.g. ``database/creds/orders-ro/``), full ids."""
        status, body = await self._call(
            "LIST", f"sys/leases/lookup/{_seg(prefix.rstrip('/'))}/", "lease.list", allow=(404,)
        )
        if status == 404:
            return []
        keys = (body.get("data") or {}).get("keys") or []
        base = prefix.rstrip("/") + "/"
        return [base + str(k) for k in keys if not str(k).endswith("/")]

    async def health(self) -> None:
        """Raise VaultUnavailable unless Vault is initialized, unsealed and active."""
        status, _ = await self._call(
            "GET", "sys/health", "sys.health", allow=(429, 472, 473, 501, 503)
        )
        if status != 200:
            raise VaultUnavailable(f"vault is not ready (HTTP {status})")


def vault_unreachable(addr: str, endpoint: str, error: BaseException) -> VaultUnavailable:
    """The error for a failed Vault call: a TLS failure names the address and OpenSSL's
    reason (code ``vault_tls``), anything else is ``vault is unreachable (<endpoint>)``."""
    reason = describe_tls_failure(error)
    if reason is not None:
        return VaultUnavailable(f"Vault at {addr}: {reason}", code="vault_tls")
    return VaultUnavailable(f"vault is unreachable ({endpoint})")


def _seg(path: str) -> str:
    # Catalog paths are validated names, but quote anyway so nothing can add a query string.
    return quote(path, safe="/-_.")
