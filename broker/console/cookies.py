"""The console's cookies, sealed (AES-256-GCM: encrypted and authenticated).

Two cookies, both ``HttpOnly``, ``SameSite=Lax`` (a provider's redirect back must bring
the sign-in cookie, a top-level GET), ``Secure`` and ``__Host-`` named over https:

- the **session** cookie holds the broker session token and the CSRF secret of forms;
  it lives as long as the session may (``max_expires_at``); the session itself enforces
  the idle (TTL, renewed by activity) and absolute (max TTL) timeouts;
- the **sign-in** cookie holds a login in progress (state, client nonce, where to go
  after), for ten minutes.

The key is ``console_key_path`` (32 random bytes, the same on every replica), created if
missing; without it a key per process.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.oidc.sealing import seal, unseal

__all__ = ["ConsoleCookies", "SessionCookie", "SignInCookie", "load_console_key"]

_KEY_BYTES = 32


def load_console_key(path: Path | None) -> bytes:
    """The sealing key from ``path`` (created 0600 if missing), or a fresh one."""
    if path is None:
        return secrets.token_bytes(_KEY_BYTES)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(_KEY_BYTES))
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise ValueError(f"console key {path} must hold exactly {_KEY_BYTES} bytes")
    return key


@dataclass(frozen=True)
class SessionCookie:
    token: str
    csrf: str


@dataclass(frozen=True)
class SignInCookie:
    state: str
    client_nonce: str
    next: str


class ConsoleCookies:
    def __init__(self, key: bytes, *, secure: bool) -> None:
        self._key = key
        self.secure = secure
        prefix = "__Host-" if secure else ""
        # Not the provider's names: cookies are per host, not per port.
        self.session_name = f"{prefix}jitb-console"
        self.signin_name = f"{prefix}jitb-console-signin"

    def _set(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            secure=self.secure,
            samesite="Lax",
        )

    def _read(self, request: web.Request, name: str, purpose: str) -> dict[str, Any] | None:
        raw = request.cookies.get(name)
        if not raw or len(raw) > 4096:
            return None
        try:
            sealed = bytes.fromhex(raw)
        except ValueError:
            return None
        opened = unseal(self._key, purpose, sealed)
        if opened is None:
            return None
        try:
            value = json.loads(opened)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _seal(self, purpose: str, value: dict[str, str]) -> str:
        return seal(self._key, purpose, json.dumps(value)).hex()

    def session(self, request: web.Request) -> SessionCookie | None:
        value = self._read(request, self.session_name, "console-session")
        if (
            value is None
            or not isinstance(value.get("t"), str)
            or not isinstance(value.get("c"), str)
        ):
            return None
        return SessionCookie(token=value["t"], csrf=value["c"])

    def set_session(self, response: web.StreamResponse, token: str, max_age: int) -> None:
        value = self._seal("console-session", {"t": token, "c": secrets.token_urlsafe(32)})
        self._set(response, self.session_name, value, max_age)

    def signin(self, request: web.Request) -> SignInCookie | None:
        value = self._read(request, self.signin_name, "console-signin")
        if value is None or not all(isinstance(value.get(k), str) for k in ("s", "n", "x")):
            return None
        return SignInCookie(state=value["s"], client_nonce=value["n"], next=value["x"])

    def set_signin(self, response: web.StreamResponse, cookie: SignInCookie) -> None:
        value = self._seal(
            "console-signin", {"s": cookie.state, "n": cookie.client_nonce, "x": cookie.next}
        )
        self._set(response, self.signin_name, value, 600)

    def clear(self, response: web.StreamResponse) -> None:
        for name in (self.session_name, self.signin_name):
            response.del_cookie(name, path="/", secure=self.secure, httponly=True, samesite="Lax")
