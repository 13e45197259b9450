"""The policy model: frozen values produced by the loader, consumed by ``decide``.

Invariants (the loader guarantees them; nothing else constructs these in production):

- every catalog key equals its entry's ``name`` and passes ``validate_secret_name``;
- every literal in ``Role.secrets`` is a catalog name and every glob matches at least one;
- ``0 < default_ttl <= max_ttl`` for roles that grant secrets; capability-only roles have
  ``max_ttl == default_ttl == 0``;
- ``privileged`` is true exactly when ``elevation`` is set; privileged roles carry no
  capabilities (a capability cannot be elevated, it would be standing access);
- a privileged role's ``max_ttl <= elevation.max_duration``; an ``ElevationRule`` has at
  least one factor, each with a non-empty group set and 1..10 approvals, and its
  ``ticket_pattern`` compiles and is anchored (``ElevationRule`` checks these itself);
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
    "DEFAULT_REASON_MIN_LENGTH",
    "DEFAULT_REQUEST_EXPIRY",
    "DEFAULT_TICKET_PATTERN",
    "ENGINES",
    "MAX_FACTOR_APPROVALS",
    "MAX_REASON_LENGTH",
    "MAX_REQUEST_EXPIRY",
    "MAX_SSH_PRINCIPALS",
    "MIN_FACTOR_APPROVALS",
    "MIN_REASON_LENGTH",
    "MIN_REQUEST_EXPIRY",
    "MOUNT_PATH",
    "NO_LIMITS",
    "SSH_EXTENSIONS",
    "SSH_PRINCIPAL",
    "ApprovalFactor",
    "CatalogEntry",
    "ElevationRule",
    "Engine",
    "Limits",
    "Members",
    "PolicySet",
    "Role",
    "SSHRule",
    "secret_matches",
    "ticket_pattern_problem",
    "validate_secret_name",
    "validate_ssh_principals",
]

Engine = Literal["kv2", "database", "pki", "ssh"]
ENGINES: frozenset[str] = frozenset({"kv2", "database", "pki", "ssh"})
# Certificate extensions a role may let its SSH certificates carry (OpenSSH's names).
SSH_EXTENSIONS: frozenset[str] = frozenset(
    {
        "permit-pty",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-X11-forwarding",
        "permit-user-rc",
    }
)
CAPABILITIES: frozenset[str] = frozenset({"audit", "admin"})

# A Vault mount path (``ssh``, ``team/db``): what policy may name and the API may ask for.
MOUNT_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
# An SSH principal: a Unix user name or a label hosts map (AuthorizedPrincipalsFile).
SSH_PRINCIPAL = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
MAX_SSH_PRINCIPALS = 32
_SECRET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
_SECRET_NAME_MAX = 128

DEFAULT_TICKET_PATTERN = r"^(INC|CHG)-[0-9]+$"
DEFAULT_REQUEST_EXPIRY = 24 * 3600
MIN_REQUEST_EXPIRY = 60
MAX_REQUEST_EXPIRY = 7 * 24 * 3600
DEFAULT_REASON_MIN_LENGTH = 10
MIN_REASON_LENGTH = 1
MAX_REASON_LENGTH = 500
MIN_FACTOR_APPROVALS = 1
MAX_FACTOR_APPROVALS = 10


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


def validate_ssh_principals(names: object) -> bool:
    """True iff ``names`` is a list or tuple of 1..``MAX_SSH_PRINCIPALS`` SSH principal
    names (``SSH_PRINCIPAL``). Safe on untrusted API input (any type; never raises)."""
    return (
        isinstance(names, list | tuple)
        and 0 < len(names) <= MAX_SSH_PRINCIPALS
        and all(isinstance(n, str) and SSH_PRINCIPAL.fullmatch(n) for n in names)
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
class SSHRule:
    """What a role's SSH certificates may say: the ``principals`` it may grant (a caller
    asks for a subset, never more), the ``extensions`` they carry (nothing else: no agent
    or port forwarding unless listed), and ``source_address`` (a critical option: the
    CIDR list sshd accepts the certificate from), if set."""

    principals: frozenset[str]
    extensions: frozenset[str] = frozenset({"permit-pty"})
    source_address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "principals": sorted(self.principals),
            "extensions": sorted(self.extensions),
            "source_address": self.source_address,
        }


@dataclass(frozen=True)
class Limits:
    """Quotas a role or catalog entry declares; ``None`` leaves the setting's default.

    ``rate`` (issuances per second) and ``burst`` shape one token bucket per principal;
    ``live_grants`` caps a principal's unended grants of one leased secret (database,
    pki); ``elevation_requests`` caps a requester's elevation requests per hour (roles).
    Where a role and the catalog entry both set a limit, the tighter one holds.
    """

    rate: float | None = None
    burst: int | None = None
    live_grants: int | None = None
    elevation_requests: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


NO_LIMITS = Limits()


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
    limits: Limits = NO_LIMITS

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "mount": self.mount,
            "path": self.path,
            "description": self.description,
            **({"limits": self.limits.to_json()} if self.limits != NO_LIMITS else {}),
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
class ApprovalFactor:
    """One approval factor of an elevation: ``approvals`` distinct approvers, each a member
    of at least one of ``approver_groups`` at the time they approve (never the requester).
    """

    approver_groups: frozenset[str]
    approvals: int = 1

    def __post_init__(self) -> None:
        if not self.approver_groups:
            raise ValueError("an approval factor needs at least one approver group")
        if not MIN_FACTOR_APPROVALS <= self.approvals <= MAX_FACTOR_APPROVALS:
            raise ValueError(
                f"a factor needs {MIN_FACTOR_APPROVALS}..{MAX_FACTOR_APPROVALS} approvals, "
                f"not {self.approvals}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"approver_groups": sorted(self.approver_groups), "approvals": self.approvals}


@dataclass(frozen=True)
class ElevationRule:
    """How a privileged role is activated.

    Every one of ``factors`` must be met; one approver counts toward at most one factor
    (the elevation service assigns approvers to factors). An approved elevation lasts at
    most ``max_duration`` seconds; a request nobody decides expires after
    ``request_expiry`` seconds. A reason of at least ``reason_min_length`` characters is
    always required; when ``ticket_required`` the ticket must match ``ticket_pattern``
    (anchored, applied with ``re.fullmatch``: see ``ticket_matches``).

    ``break_glass`` allows self-activation without approval, issued at once and reviewed
    afterwards by a member of ``break_glass_reviewers``; left empty at construction it
    defaults to the union of the factors' groups (so it is never empty afterwards).
    """

    factors: tuple[ApprovalFactor, ...]
    max_duration: int
    request_expiry: int = DEFAULT_REQUEST_EXPIRY
    reason_min_length: int = DEFAULT_REASON_MIN_LENGTH
    ticket_required: bool = False
    ticket_pattern: str = DEFAULT_TICKET_PATTERN
    break_glass: bool = False
    break_glass_reviewers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # The loader reports all of these with file:line first; these checks only keep
        # hand-built rules (tests, other callers) from violating the same invariants.
        if not self.factors:
            raise ValueError("an elevation rule needs at least one approval factor")
        if self.max_duration <= 0:
            raise ValueError("max_duration must be positive")
        if not MIN_REQUEST_EXPIRY <= self.request_expiry <= MAX_REQUEST_EXPIRY:
            raise ValueError(
                f"request_expiry must be {MIN_REQUEST_EXPIRY}..{MAX_REQUEST_EXPIRY} seconds"
            )
        if not MIN_REASON_LENGTH <= self.reason_min_length <= MAX_REASON_LENGTH:
            raise ValueError(f"reason_min_length must be {MIN_REASON_LENGTH}..{MAX_REASON_LENGTH}")
        problem = ticket_pattern_problem(self.ticket_pattern)
        if problem is not None:
            raise ValueError(f"ticket_pattern: {problem}")
        if not self.break_glass_reviewers:
            object.__setattr__(self, "break_glass_reviewers", self.approver_groups)

    @property
    def approver_groups(self) -> frozenset[str]:
        """Every group named by any factor (kept for callers of the one-factor model)."""
        return frozenset(g for f in self.factors for g in f.approver_groups)

    @property
    def approvals(self) -> int:
        """Total approvals needed across all factors."""
        return sum(f.approvals for f in self.factors)

    def ticket_matches(self, ticket: str) -> bool:
        """True iff ``ticket`` matches ``ticket_pattern`` in full."""
        return re.fullmatch(self.ticket_pattern, ticket) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "factors": [f.to_json() for f in self.factors],
            "max_duration": self.max_duration,
            "request_expiry": self.request_expiry,
            "reason_min_length": self.reason_min_length,
            "ticket_required": self.ticket_required,
            "ticket_pattern": self.ticket_pattern,
            "break_glass": self.break_glass,
            "break_glass_reviewers": sorted(self.break_glass_reviewers),
        }


def ticket_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not an acceptable ``ticket_pattern``, or None if it is.

    It must compile and be anchored: start with ``^`` and end with an unescaped ``$``, so
    the written rule reads as a whole-ticket match (the service uses ``re.fullmatch``
    regardless, which also refuses a trailing newline that ``$`` alone would allow).
    """
    try:
        re.compile(pattern)
    except re.error as e:
        return f"bad regex: {e}"
    trailing_backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
    if not (pattern.startswith("^") and pattern.endswith("$") and trailing_backslashes % 2 == 0):
        return f"{pattern!r} must be anchored: start with '^' and end with '$'"
    return None


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
    limits: Limits = NO_LIMITS
    ssh: SSHRule | None = None

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
            **({"limits": self.limits.to_json()} if self.limits != NO_LIMITS else {}),
            **({"ssh": self.ssh.to_json()} if self.ssh is not None else {}),
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
