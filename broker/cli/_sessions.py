"""The session cache of ``broker login``: one signed-in session per broker URL.

``$XDG_CONFIG_HOME/jit-broker/sessions.json`` (``~/.config/jit-broker/`` when the variable
is unset or not an absolute path), a JSON object keyed by broker URL (no trailing slash):

    {"https://broker.example.com": {"token": "hvb....", "subject": "alice@example.com",
     "provider": "okta", "expires_at": ISO, "max_expires_at": ISO, "renewed_at": ISO}}

``renewed_at`` is when this machine got the current ``expires_at`` (login or renewal):
with it, ``needs_renewal`` knows the session's lifetime. The directory is mode 0700 and
the file 0600; every change rewrites the whole file through a temporary file in the same
directory and ``os.replace``, under an exclusive lock (``sessions.lock``), so concurrent
commands never see half a file or lose each other's entries. The token is read from here
and sent in the ``Authorization`` header only: never printed, logged or put in argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["SessionCache", "cache_dir", "cache_key", "needs_renewal", "parse_time"]

_FILE = "sessions.json"
_LOCK = "sessions.lock"
_FIELDS = ("token", "subject", "provider", "expires_at", "max_expires_at", "renewed_at")


def cache_dir() -> Path:
    """``$XDG_CONFIG_HOME/jit-broker``, else ``~/.config/jit-broker``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "jit-broker"


def cache_key(url: str) -> str:
    """Sessions are per broker: the URL as given, without a trailing slash."""
    return url.rstrip("/")


def parse_time(value: Any) -> datetime | None:
    """An ISO time from the broker or the cache (aware, UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def needs_renewal(entry: dict[str, Any], now: datetime) -> bool:
    """Less than a third of the session's lifetime left (or none), and renewal can still
    extend it (it never goes past ``max_expires_at``)."""
    expires, max_expires = (
        parse_time(entry.get("expires_at")),
        parse_time(entry.get("max_expires_at")),
    )
    if expires is None or max_expires is None:
        return False
    if expires >= max_expires or now >= max_expires:
        return False  # nothing to gain: it ends at its maximum whatever we do
    renewed = parse_time(entry.get("renewed_at"))
    lifetime = (expires - renewed).total_seconds() if renewed is not None else 0.0
    left = (expires - now).total_seconds()
    return lifetime <= 0 or left < lifetime / 3


class SessionCache:
    """The cache file in ``directory`` (default ``cache_dir()``)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or cache_dir()
        self.path = self.directory / _FILE
        self._held = False  # locked() is re-entrant within this object

    def get(self, url: str) -> dict[str, Any] | None:
        """The cached session for ``url``, or None (no file, no entry, unreadable)."""
        entry = self._read().get(cache_key(url))
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        return entry

    def store_login(self, url: str, answer: dict[str, Any]) -> None:
        """A new session for ``url`` (the broker's sign-in answer), replacing any other."""
        entry = {k: answer.get(k) for k in _FIELDS if k != "renewed_at"}
        entry["renewed_at"] = datetime.now(UTC).isoformat()
        with self.locked():
            entries = self._read()
            entries[cache_key(url)] = entry
            self._write(entries)

    def store_renewal(self, url: str, token: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        """The new expiries of the session ``token`` (the broker's renewal answer); the
        updated entry, or None when the cache no longer holds that session."""
        with self.locked():
            entries = self._read()
            entry = entries.get(cache_key(url))
            if not isinstance(entry, dict) or entry.get("token") != token:
                return None  # logged out or replaced meanwhile: keep what is there
            for k in ("subject", "provider", "expires_at", "max_expires_at"):
                if answer.get(k) is not None:
                    entry[k] = answer[k]
            entry["renewed_at"] = datetime.now(UTC).isoformat()
            entry.pop("renewable", None)
            self._write(entries)
            return entry

    def mark(self, url: str, **fields: Any) -> None:
        """Set extra fields on the entry for ``url`` (e.g. ``renewable=False``)."""
        with self.locked():
            entries = self._read()
            entry = entries.get(cache_key(url))
            if isinstance(entry, dict):
                entry.update(fields)
                self._write(entries)

    def drop(self, url: str, *, token: str | None = None) -> bool:
        """Remove the entry for ``url`` (only if it holds ``token``, when given)."""
        with self.locked():
            entries = self._read()
            entry = entries.get(cache_key(url))
            if entry is None:
                return False
            if token is not None and (not isinstance(entry, dict) or entry.get("token") != token):
                return False
            del entries[cache_key(url)]
            self._write(entries)
            return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the cache (a renewal, a change) among this user's commands."""
        if self._held:
            yield
            return
        self._ensure_dir()
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl
            except ImportError:  # not POSIX: the atomic rename alone
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = True
            try:
                yield
            finally:
                self._held = False
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            self.directory.chmod(0o700)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            print(f"warning: ignoring the unreadable {self.path}: {e}", file=sys.stderr)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(prefix=".sessions-", suffix=".tmp", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)  # mkstemp makes it 0600 already; say so anyway
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
