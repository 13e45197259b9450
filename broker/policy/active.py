"""The active policy of one replica: loaded from ``policies/``, reloaded when files change.

Invariants: a file set that fails validation never replaces a good one (the old version
stays active, the failure is counted and logged); every version that becomes active is
recorded verbatim in ``ledger.policy_versions`` and announced by a ``policy.loaded`` event
*before* it is used, so each grant points at a version the ledger holds.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from broker.errors import PolicyError

from .loader import load_policy_dir
from .model import PolicySet

__all__ = ["ActivePolicy"]

_log = logging.getLogger(__name__)


def _fingerprint(directory: Path) -> str:
    """Cheap change detector: names, sizes and mtimes of the policy files."""
    h = hashlib.sha256()
    for p in sorted(directory.glob("*.y*ml")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class ActivePolicy:
    """Holds the current PolicySet. ``current`` is always a validated, recorded version."""

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int,
        record: Callable[[PolicySet], Awaitable[None]],
        on_reload: Callable[[str, PolicySet | None], None] | None = None,
    ) -> None:
        self._dir = directory
        self._max = max_file_bytes
        self._record = record
        self._on_reload = on_reload
        self._fingerprint = ""
        self._current: PolicySet | None = None

    @property
    def current(self) -> PolicySet:
        if self._current is None:
            raise RuntimeError("policy not loaded yet")
        return self._current

    async def load(self) -> PolicySet:
        """First load at start-up: raises PolicyError if the files are invalid."""
        fingerprint = _fingerprint(self._dir)
        policy = load_policy_dir(self._dir, max_file_bytes=self._max)
        await self._record(policy)
        self._current, self._fingerprint = policy, fingerprint
        if self._on_reload:
            self._on_reload("loaded", policy)
        return policy

    async def reload_if_changed(self) -> bool:
        """Reload when the files changed; return True if a new version became active."""
        try:
            fingerprint = _fingerprint(self._dir)
        except OSError as e:
            _log.warning("policy directory unreadable, keeping %s: %s", self._version(), e)
            return False
        if fingerprint == self._fingerprint:
            return False
        try:
            policy = load_policy_dir(self._dir, max_file_bytes=self._max)
        except PolicyError as e:
            # Remember the bad fingerprint so we log once per change, not every poll.
            self._fingerprint = fingerprint
            _log.error(
                "policy reload refused, keeping %s: %s", self._version(), "; ".join(e.errors)
            )
            if self._on_reload:
                self._on_reload("invalid", None)
            return False
        if self._current is not None and policy.version == self._current.version:
            self._fingerprint = fingerprint
            return False
        await self._record(policy)  # raises if the ledger is down: retried next poll
        self._current, self._fingerprint = policy, fingerprint
        _log.info("policy %s active", policy.version)
        if self._on_reload:
            self._on_reload("loaded", policy)
        return True

    def _version(self) -> str:
        return self._current.version if self._current else "none"
