"""Pure access decisions over a loaded ``PolicySet``: no I/O, no clock, no randomness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from broker.auth.principal import Principal
from broker.durations import format_duration
from broker.errors import BadRequest
from broker.policy.model import CatalogEntry, PolicySet, Role, validate_secret_name

__all__ = [
    "Decision",
    "Outcome",
    "Requestable",
    "capabilities",
    "decide",
    "requestable",
    "roles_for",
]

Outcome = Literal["allow", "deny", "elevation_required", "unknown_secret"]


@dataclass(frozen=True)
class Decision:
    """The answer to "may ``principal`` have ``secret`` now, and for how long?".

    ``entry`` is set unless the outcome is ``unknown_secret``; ``role`` is the role that
    grants (``allow``) or would grant after elevation (``elevation_required``), else None.
    ``ttl`` is the effective lease in seconds (0 for ``deny``/``unknown_secret``).
    ``message`` is safe to show to the requester.
    """

    outcome: Outcome
    secret: str
    entry: CatalogEntry | None
    role: Role | None
    ttl: int
    message: str

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


class Requestable(TypedDict):
    secret: str
    role: str
    privileged: bool
    max_ttl: int


def roles_for(policy: PolicySet, principal: Principal) -> tuple[Role, ...]:
    """The roles ``principal`` holds, in policy order.

    A principal holds a role when any of its groups is in ``members.groups``, its subject
    equals one of ``members.subjects``, or its service account (``ns:name``) equals one of
    ``members.service_accounts``. Nothing else confers membership.
    """
    sa = principal.service_account
    return tuple(
        r
        for r in policy.roles
        if (principal.groups & r.members.groups)
        or principal.subject in r.members.subjects
        or (sa is not None and sa in r.members.service_accounts)
    )


def capabilities(policy: PolicySet, principal: Principal) -> frozenset[str]:
    """Union of the ``capabilities`` (``audit``, ``admin``) of the principal's roles."""
    out: frozenset[str] = frozenset()
    for r in roles_for(policy, principal):
        out |= r.capabilities
    return out


def _best(roles: list[Role]) -> Role:
    # Largest max_ttl first; name breaks ties so the same policy always cites the same role.
    return min(roles, key=lambda r: (-r.max_ttl, r.name))


def _granting(held: tuple[Role, ...], secret: str) -> tuple[Role | None, Role | None]:
    """(best standing role, best privileged role) among ``held`` that grant ``secret``."""
    standing = [r for r in held if not r.privileged and r.grants(secret)]
    privileged = [r for r in held if r.privileged and r.grants(secret)]
    return (
        _best(standing) if standing else None,
        _best(privileged) if privileged else None,
    )


def decide(
    policy: PolicySet,
    principal: Principal,
    secret: str,
    ttl: int | None = None,
    *,
    ssh_principals: frozenset[str] | None = None,
) -> Decision:
    """Decide whether ``principal`` may obtain ``secret``. Deny by default.

    Rules, first match wins:

    ======================================================  ======================
    condition                                               outcome
    ======================================================  ======================
    ``secret`` is not a valid name, or not in the catalog   ``unknown_secret``
    a non-privileged role of the principal grants it        ``allow``
    only privileged roles of the principal grant it         ``elevation_required``
    anything else                                           ``deny``
    ======================================================  ======================

    Among several granting roles the one with the largest ``max_ttl`` is chosen, ties
    broken by name. ``ttl``: None means the chosen role's ``default_ttl``; a value above
    its ``max_ttl`` is clipped to ``max_ttl`` (as Vault does) and the message says so.
    ``elevation_required`` carries the privileged role and the ttl an elevated request
    would get. Raises ``BadRequest`` if ``ttl`` is given and is not a positive integer.

    SSH secrets: only roles whose ``ssh.principals`` include every one of
    ``ssh_principals`` count (None: the chosen role's own principals will be signed), so
    ``root`` held only by a privileged role needs elevation even when a standing role
    grants the secret for other principals; principals no role grants are ``deny``.
    """
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise BadRequest("ttl must be a positive number of seconds")
    entry = policy.catalog.get(secret) if validate_secret_name(secret) else None
    if entry is None:
        return Decision("unknown_secret", secret, None, None, 0, "no such secret in the catalog")

    held = roles_for(policy, principal)
    if entry.engine == "ssh" and ssh_principals is not None:
        covering = tuple(
            r for r in held if r.ssh is not None and ssh_principals <= r.ssh.principals
        )
        if not any(r.grants(secret) for r in covering) and any(r.grants(secret) for r in held):
            asked = ", ".join(sorted(ssh_principals))
            return Decision(
                "deny",
                secret,
                entry,
                None,
                0,
                f"no role of {principal.subject!r} may sign {secret!r} for principals {asked}",
            )
        held = covering
    standing, privileged = _granting(held, secret)
    role = standing or privileged
    if role is None:
        return Decision(
            "deny", secret, entry, None, 0, f"no role of {principal.subject!r} grants {secret!r}"
        )

    effective, note = _ttl(role, ttl)
    if standing is not None:
        return Decision(
            "allow",
            secret,
            entry,
            standing,
            effective,
            f"granted by role {standing.name!r} for {format_duration(effective)}{note}",
        )
    return Decision(
        "elevation_required",
        secret,
        entry,
        role,
        effective,
        f"role {role.name!r} is privileged: request elevation, then fetch"
        f" for up to {format_duration(effective)}{note}",
    )


def _ttl(role: Role, requested: int | None) -> tuple[int, str]:
    if requested is None:
        return role.default_ttl, ""
    if requested > role.max_ttl:
        return role.max_ttl, (
            f" (requested {format_duration(requested)} clipped to the role's max_ttl)"
        )
    return requested, ""


def requestable(policy: PolicySet, principal: Principal) -> list[Requestable]:
    """What ``principal`` may ask for: one item per catalog secret some role of theirs
    grants, sorted by secret name.

    The item names the role ``decide`` would cite: a standing (non-privileged) grant wins
    over a privileged one, then the usual largest-``max_ttl``/name order.
    """
    held = roles_for(policy, principal)
    out: list[Requestable] = []
    for name in sorted(policy.catalog):
        standing, privileged = _granting(held, name)
        role = standing or privileged
        if role is not None:
            out.append(
                {
                    "secret": name,
                    "role": role.name,
                    "privileged": role.privileged,
                    "max_ttl": role.max_ttl,
                }
            )
    return out
