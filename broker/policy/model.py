"""The policy model: frozen values produced by the loader, consumed by ``decide``.

Invariants (the loader guarantees them; nothing else constructs these in production):

- every catalog key equals its entry's ``name`` and passes ``validate_secret_name``;
- every literal in ``Role.secrets`` is a catalog name and every glob matches at least one;
- ``0 < default_ttl <= max_ttl`` for roles that grant secrets; capability-only roles have
  ``max_ttl == default_ttl == 0``;
- ``privileged`` is true exactly when ``elevation`` is set; privileged roles carry no
  capabilities (a capability cannot be elevated, it would be standing access);
- role names are unique.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CAPABILITIES",
    "ENGINES",
    "CatalogEntry",
    "ElevationRule",
    "Engine",
    "Members",
    "PolicySet",
    "Role",
    "secret_matches",
    "validate_secret_name",
]

Engine = Literal["kv2", "database", "pki"]
ENGINES: frozenset[str] = frozenset({"kv2", "database", "pki"})
CAPABILITIES: frozenset[str] = frozenset({"audit", "admin"})

_SECRET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
_SECRET_NAME_MAX = 128


def validate_secret_name(name: object) -> bool:
    """True iff ``name`` is a well-formed catalog secret name.

    Lowercase segments ``[a-z0-9][a-z0-9._-]*`` joined by ``/``, at most 128 characters.
    Safe to call on untrusted API input (any type; never raises).
    """
    return (
        isinstance(name, str)
        and len(name) <= _SECRET_NAME_MAX
        and _SECRET_NAME.fullmatch(name) is not None
    )


def secret_matches(pattern: str, name: str) -> bool:
    """True iff a role's ``secrets`` item ``pattern`` covers catalog name ``name``.

    A pattern without ``*`` must equal the name. ``*`` matches any run of characters
    within one path segment (it never crosses ``/``), so ``stripe/*`` covers
    ``stripe/prod`` but not ``stripe/prod/eu``: granting a whole subtree by accident is
    the failure we want to make hard.
    """
    if "*" not in pattern:
        return pattern == name
    p_parts = pattern.split("/")
    n_parts = name.split("/")
    if len(p_parts) != len(n_parts):
        return False
    # fnmatchcase: '?' and '[' never appear (the loader rejects them), so only '*' is magic.
    return all(fnmatch.fnmatchcase(n, p) for p, n in zip(p_parts, n_parts, strict=True))


@dataclass(frozen=True)
class CatalogEntry:
    """A secret the broker can hand out, by its catalog ``name``.

    ``path`` is the path inside the mount for ``kv2``, and the engine's role name for
    ``database`` and ``pki``.
    """

    name: str
    engine: Engine
    mount: str
    path: str
    description: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "engine": self.engine,
            "mount": self.mount,
            "path": self.path,
            "description": self.description,
        }


@dataclass(frozen=True)
class Members:
    """Who holds a role: any group in ``groups``, any exact ``subjects``, or any
    Kubernetes service account ``"<namespace>:<name>"`` in ``service_accounts``."""

    groups: frozenset[str]
    subjects: frozenset[str]
    service_accounts: frozenset[str]

    def to_json(self) -> dict[str, list[str]]:
        return {
            "groups": sorted(self.groups),
            "subjects": sorted(self.subjects),
            "service_accounts": sorted(self.service_accounts),
        }


@dataclass(frozen=True)
class ElevationRule:
    """How a privileged role is activated: ``approvals`` distinct approvers (never the
    requester) from ``approver_groups``, for at most ``max_duration`` seconds.

    ``ticket_pattern`` is a full-match regex for the ticket reference, enforced when
    ``ticket_required``. ``break_glass`` allows self-activation without approval, to be
    reviewed after the fact.
    """

    approver_groups: frozenset[str]
    approvals: int
    max_duration: int
    ticket_required: bool
    ticket_pattern: str
    break_glass: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "approver_groups": sorted(self.approver_groups),
            "approvals": self.approvals,
            "max_duration": self.max_duration,
            "ticket_required": self.ticket_required,
            "ticket_pattern": self.ticket_pattern,
            "break_glass": self.break_glass,
        }


@dataclass(frozen=True)
class Role:
    """A named grant: ``members`` may obtain ``secrets`` (names or ``*`` globs) for at most
    ``max_ttl`` seconds, and hold ``capabilities``.

    ``source`` is ``"<file>:<line>"`` of the role's definition, recorded as evidence of
    which written rule authorized a grant.
    """

    name: str
    description: str
    members: Members
    secrets: tuple[str, ...]
    max_ttl: int
    default_ttl: int
    privileged: bool
    elevation: ElevationRule | None
    capabilities: frozenset[str]
    source: str

    def grants(self, secret: str) -> bool:
        """True iff one of this role's ``secrets`` items covers catalog name ``secret``."""
        return any(secret_matches(p, secret) for p in self.secrets)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "members": self.members.to_json(),
            "secrets": list(self.secrets),
            "max_ttl": self.max_ttl,
            "default_ttl": self.default_ttl,
            "privileged": self.privileged,
            "elevation": self.elevation.to_json() if self.elevation else None,
            "capabilities": sorted(self.capabilities),
            "source": self.source,
        }


@dataclass(frozen=True)
class PolicySet:
    """One loaded policy directory.

    ``documents`` maps each policy file's name to its raw text. ``version`` is
    ``"sha256:<hex>"`` over those files, defined so an auditor can recompute it from the
    files alone with standard tools::

        cd policies && sha256sum $(ls | grep -E '\\.ya?ml$' | LC_ALL=C sort) | sha256sum

    i.e. SHA-256 of the ``sha256sum`` manifest: one line ``"<hex sha256 of file bytes>
    <name>\\n"`` (two spaces) per file, sorted by name. Any byte change, comments and
    whitespace included, is a new version: the version identifies the *written* policy an
    auditor reads, not an interpretation of it.
    """

    catalog: Mapping[str, CatalogEntry]
    roles: tuple[Role, ...]
    version: str
    documents: Mapping[str, str]
    _by_name: Mapping[str, Role] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {r.name: r for r in self.roles})

    def role(self, name: str) -> Role | None:
        """The role called ``name``, or None."""
        return self._by_name.get(name)

    def to_json(self) -> dict[str, Any]:
        """Canonical JSON-able form for the ledger's ``policy loaded`` record.

        Deterministic for a given set of files (catalog sorted by name, roles in load
        order). Raw texts are not included, only each file's SHA-256, which together with
        ``version`` lets the files kept elsewhere be checked.
        """
        return {
            "version": self.version,
            "files": {
                name: "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
                for name, text in sorted(self.documents.items())
            },
            "catalog": {name: self.catalog[name].to_json() for name in sorted(self.catalog)},
            "roles": [r.to_json() for r in self.roles],
        }
