"""The broker's own Vault identity: a static token (dev), or an AppRole or Kubernetes
login with renewal.

``VaultLogin.token()`` is what ``VaultClient`` calls per request. With a login method, the
token is renewed at two thirds of its TTL and replaced by a fresh login when renewal fails
or the token reaches its max TTL; requests keep using the old token until the new one is
in. Each login reads its credential afresh (the secret id file, the service-account token
file), so rotated credentials are picked up without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

import aiohttp

from broker.errors import TLSConfigError, VaultError, VaultUnavailable
from broker.settings import Settings
from broker.tls.loopback import is_loopback
from broker.tls.outbound import ClientTLS, client_context
from broker.vault.client import vault_unreachable

__all__ = [
    "AppRoleCredentials",
    "KubernetesCredentials",
    "LoginMethod",
    "VaultLogin",
    "vault_login_for",
    "vault_tls_for",
]

_log = logging.getLogger(__name__)

DEFAULT_K8S_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class LoginMethod(Protocol):
    """A Vault auth method the broker logs in with: POST auth/<mount>/login <body>."""

    name: ClassVar[str]

    @property
    def mount(self) -> str: ...

    def login_body(self) -> dict[str, str]:
        """The login request body, its credential read now. Raises VaultError."""
        ...


@dataclass(frozen=True)
class AppRoleCredentials:
    """AppRole login. With ``secret_id_file`` the secret id is read at every login, so a
    rotated or response-wrapped secret id (a re-mounted Kubernetes Secret) is picked up."""

    name: ClassVar[str] = "approle"
    role_id: str
    secret_id: str
    mount: str = "approle"
    secret_id_file: Path | None = None

    def login_body(self) -> dict[str, str]:
        return {"role_id": self.role_id, "secret_id": self.current_secret_id()}

    def current_secret_id(self) -> str:
        if self.secret_id_file is None:
            return self.secret_id
        try:
            return self.secret_id_file.read_text().strip()
        except OSError as e:
            raise VaultError(f"cannot read the AppRole secret id file: {e.strerror}") from e


@dataclass(frozen=True)
class KubernetesCredentials:
    """Kubernetes login with the pod's projected service-account JWT. The file is read at
    every login: the kubelet rotates it (hourly by default), so a cached copy expires."""

    name: ClassVar[str] = "kubernetes"
    role: str
    token_path: Path = DEFAULT_K8S_TOKEN_PATH
    mount: str = "kubernetes"

    def login_body(self) -> dict[str, str]:
        try:
            jwt = self.token_path.read_text().strip()
        except OSError as e:
            raise VaultError(f"cannot read the service-account token file: {e.strerror}") from e
        if not jwt:
            raise VaultError("the service-account token file is empty")
        return {"role": self.role, "jwt": jwt}


class VaultLogin:
    def __init__(
        self,
        addr: str,
        *,
        static_token: str | None = None,
        approle: AppRoleCredentials | None = None,
        kubernetes: KubernetesCredentials | None = None,
        timeout: float = 5.0,
        tls: ClientTLS | None = None,
    ) -> None:
        methods = [m for m in (approle, kubernetes) if m is not None]
        if len(methods) + (static_token is not None) != 1:
            raise ValueError(
                "configure exactly one Vault identity: a token, AppRole or Kubernetes login"
            )
        self._addr = addr.rstrip("/")
        self._method: LoginMethod | None = methods[0] if methods else None
        self._token = static_token or ""
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tls = tls
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
        tls = self._tls
        connector = aiohttp.TCPConnector(ssl=tls.context if tls else True)
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout, connector=connector) as session,
                session.post(
                    f"{self._addr}/v1/{path}",
                    json=body,
                    headers=headers,
                    server_hostname=tls.server_hostname if tls else None,
                ) as resp,
            ):
                payload = await resp.json(content_type=None)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise vault_unreachable(self._addr, "login", e) from e
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
        """Log in with the method (no-op for a static token). Raises VaultError/VaultUnavailable."""
        if self._method is None:
            return
        method = self._method
        auth = await self._post(f"auth/{method.mount}/login", method.login_body(), None)
        self._login_ttl = _seconds(auth.get("lease_duration"))
        self._adopt(auth)
        _log.info(
            "logged in to vault with %s (accessor %s)",
            method.name,
            self.accessor,
            extra={"vault_auth": method.name, "vault_accessor": self.accessor},
        )

    async def maintain(self) -> None:
        """Renew when due; on renewal failure (revoked, max TTL) log in again."""
        if self._method is None or time.monotonic() < self._renew_at:
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
        if self._method is None:
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


def vault_tls_for(settings: Settings) -> ClientTLS | None:
    """The verifying client TLS for an ``https://`` ``vault_addr`` (None for ``http://``
    to a loopback host, as the dev stack runs): ``vault_cacert``/``vault_capath`` (else the
    system store), the optional client certificate, and ``vault_tls_server_name``. Raises
    ``TLSConfigError``, also for ``http://`` to any other host: like the ledger's database
    and JWKS, Vault is reached in plaintext only on this machine."""
    address = urlsplit(settings.vault_addr)
    if address.scheme.lower() != "https":
        if is_loopback(address.hostname):
            return None
        raise TLSConfigError(
            f"Vault at {settings.vault_addr}: plaintext to a host other than loopback; use"
            " https:// (VAULT_CACERT for a private CA), or a mesh sidecar on 127.0.0.1"
        )
    context = client_context(
        cafile=settings.vault_cacert,
        capath=settings.vault_capath,
        certfile=settings.vault_client_cert,
        keyfile=settings.vault_client_key,
        what=f"Vault at {settings.vault_addr}",
    )
    return ClientTLS(context, settings.vault_tls_server_name)


def vault_login_for(settings: Settings, tls: ClientTLS | None = None) -> VaultLogin:
    """The broker's Vault identity from settings: ``vault_auth_method``, or when unset
    AppRole if ``vault_role_id`` is set, else the static ``vault_token``. Its calls use
    ``tls`` (see ``vault_tls_for``)."""
    method = settings.vault_auth_method or ("approle" if settings.vault_role_id else "token")
    timeout = settings.vault_timeout_seconds
    if method == "kubernetes":
        if not settings.vault_kubernetes_role:
            raise ValueError("vault_auth_method kubernetes needs a role (VAULT_K8S_ROLE)")
        credentials = KubernetesCredentials(
            settings.vault_kubernetes_role,
            settings.vault_kubernetes_token_path,
            settings.vault_kubernetes_mount,
        )
        return VaultLogin(settings.vault_addr, kubernetes=credentials, timeout=timeout, tls=tls)
    if method == "approle":
        if not settings.vault_role_id:
            raise ValueError("vault_auth_method approle needs a role id (VAULT_ROLE_ID)")
        approle = AppRoleCredentials(
            settings.vault_role_id,
            settings.vault_secret_id or "",
            settings.vault_approle_mount,
            settings.vault_secret_id_file,
        )
        return VaultLogin(settings.vault_addr, approle=approle, timeout=timeout, tls=tls)
    if method != "token":
        raise ValueError(f"unknown vault_auth_method {method!r}")
    return VaultLogin(
        settings.vault_addr, static_token=settings.vault_token, timeout=timeout, tls=tls
    )
