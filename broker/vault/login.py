"""The broker's own Vault identity: a static token (dev) or AppRole login with renewal.

``VaultLogin.token()`` is what ``VaultClient`` calls per request. With AppRole, the token
is renewed at two thirds of its TTL and replaced by a fresh login when renewal fails or
the token reaches its max TTL; requests keep using the old token until the new one is in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from broker.errors import VaultError, VaultUnavailable

__all__ = ["AppRoleCredentials", "VaultLogin"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppRoleCredentials:
    """AppRole login. With ``secret_id_file`` the secret id is read at every login, so a
    rotated or response-wrapped secret id (a re-mounted Kubernetes Secret) is picked up."""

    role_id: str
    secret_id: str
    mount: str = "approle"
    secret_id_file: Path | None = None

    def current_secret_id(self) -> str:
        if self.secret_id_file is None:
            return self.secret_id
        try:
            return self.secret_id_file.read_text().strip()
        except OSError as e:
            raise VaultError(f"cannot read the AppRole secret id file: {e.strerror}") from e


class VaultLogin:
    def __init__(
        self,
        addr: str,
        *,
        static_token: str | None = None,
        approle: AppRoleCredentials | None = None,
        timeout: float = 5.0,
    ) -> None:
        if (static_token is None) == (approle is None):
            raise ValueError("configure exactly one of a Vault token or AppRole credentials")
        self._addr = addr.rstrip("/")
        self._approle = approle
        self._token = static_token or ""
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._renew_at = float("inf")  # monotonic time; static tokens never renew
        self.accessor: str | None = None
        self._lock = asyncio.Lock()
        self._login_ttl = 0

    def token(self) -> str:
        return self._token

    async def _post(self, path: str, body: dict[str, str], token: str | None) -> dict[str, object]:
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(f"{self._addr}/v1/{path}", json=body, headers=headers) as resp,
            ):
                payload = await resp.json(content_type=None)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise VaultUnavailable("vault is unreachable (login)") from e
        if status >= 500:
            raise VaultUnavailable(f"vault failed login ({status})")
        if status >= 400 or not isinstance(payload, dict) or "auth" not in payload:
            raise VaultError(f"vault refused the broker's login ({path}: HTTP {status})")
        auth = payload["auth"]
        assert isinstance(auth, dict)
        return auth

    def _adopt(self, auth: dict[str, object]) -> None:
        self._token = str(auth["client_token"])
        self.accessor = str(auth.get("accessor") or "") or None
        ttl = _seconds(auth.get("lease_duration"))
        renewable = bool(auth.get("renewable"))
        self._renew_at = time.monotonic() + ttl * 2 / 3 if ttl and renewable else float("inf")
        if ttl and not renewable:
            # Not renewable: log in again before it expires instead.
            self._renew_at = time.monotonic() + ttl * 2 / 3

    async def login(self) -> None:
        """AppRole login (no-op for a static token). Raises VaultError/VaultUnavailable."""
        if self._approle is None:
            return
        auth = await self._post(
            f"auth/{self._approle.mount}/login",
            {"role_id": self._approle.role_id, "secret_id": self._approle.current_secret_id()},
            None,
        )
        self._login_ttl = _seconds(auth.get("lease_duration"))
        self._adopt(auth)
        _log.info("logged in to vault with approle (accessor %s)", self.accessor)

    async def maintain(self) -> None:
        """Renew when due; on renewal failure (revoked, max TTL) log in again."""
        if self._approle is None or time.monotonic() < self._renew_at:
            return
        try:
            auth = await self._post("auth/token/renew-self", {}, self._token)
            # Near its max TTL Vault renews only for the remaining time: log in afresh.
            if _seconds(auth.get("lease_duration")) * 3 < self._login_ttl:
                raise VaultError("token is at its max TTL")
            self._adopt(auth)
        except VaultError:
            await self.login()

    async def relogin_after_rejection(self, rejected_token: str) -> bool:
        """Vault refused ``rejected_token`` (403): log in again once; True if the token changed.

        Concurrent rejections share one login (the lock), and a token already replaced
        since the rejected request is not replaced again.
        """
        if self._approle is None:
            return False
        async with self._lock:
            if self._token != rejected_token:
                return True
            try:
                await self.login()
            except (VaultError, VaultUnavailable):
                return False
            return self._token != rejected_token


def _seconds(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
