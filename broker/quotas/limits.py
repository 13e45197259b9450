"""Which limits hold for one request: policy's declarations over the settings' defaults.

Pure. A role and a catalog entry may each declare ``limits``; per field the tighter
declaration holds, and a field neither declares takes the default from settings. The
rate limit is counted per principal *within the scope that declared it* (like Vault's
rate-limit quotas, counted per client within each quota rule): a principal's default
bucket, a role's bucket, or a catalog entry's bucket, so raising one service's rate on
one role does not raise it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.policy.model import NO_LIMITS, CatalogEntry, Limits, Role

__all__ = ["LEASED_ENGINES", "Effective", "effective", "rate_text", "said_by"]

# Engines whose grants are leases that hold state in the backend (a database login is a
# role in the database): the live-grant quota counts them. KV reads, certificates (X.509,
# SSH) hold none and are only rate-limited: a certificate per `broker ssh` login must not
# run into a quota meant for database roles.
LEASED_ENGINES = frozenset({"database"})


@dataclass(frozen=True)
class Effective:
    """The limits one request is held to, and where each came from (for messages)."""

    rate: float
    burst: int
    rate_scope: str  # "default", "role:<name>" or "secret:<name>"
    live_grants: int | None  # None: not a leased secret
    live_scope: str

    def describe_rate(self) -> str:
        return f"{rate_text(self.rate)}, burst {self.burst} ({said_by(self.rate_scope)})"


def said_by(scope: str) -> str:
    """Where a limit came from, for a refusal's message: ``set by role 'dba'``."""
    if scope == "default":
        return "the default"
    kind, _, name = scope.partition(":")
    return f"set by {kind} {name!r}"


def rate_text(per_second: float) -> str:
    """``per_second`` in the unit that reads best: ``5/s``, ``30/m``, ``12/h``."""
    for unit, seconds in (("s", 1), ("m", 60), ("h", 3600)):
        value = per_second * seconds
        if value >= 1:
            return f"{value:g}/{unit}"
    return f"{per_second * 3600:.3g}/h"


def _tighter(
    default: int | float, declared: list[tuple[str, int | float | None]]
) -> tuple[int | float, str]:
    chosen = [(v, scope) for scope, v in declared if v is not None]
    return min(chosen) if chosen else (default, "default")


def effective(defaults: Limits, role: Role | None, entry: CatalogEntry | None) -> Effective:
    """The limits for a request that ``role`` allows on ``entry`` (either may be None:
    a denied request is still rate-limited, on the default bucket)."""
    role_limits = role.limits if role is not None else NO_LIMITS
    entry_limits = entry.limits if entry is not None else NO_LIMITS
    declared = [
        (f"secret:{entry.name}" if entry else "", entry_limits),
        (f"role:{role.name}" if role else "", role_limits),
    ]
    assert defaults.rate is not None and defaults.burst is not None
    rate, rate_scope = _tighter(defaults.rate, [(s, lim.rate) for s, lim in declared])
    # A bucket is one declaration's pair: its burst, else the default burst.
    burst = defaults.burst
    for scope, lim in declared:
        if scope == rate_scope and lim.burst is not None:
            burst = lim.burst
    live: int | float | None = None
    live_scope = "default"
    if entry is not None and entry.engine in LEASED_ENGINES:
        assert defaults.live_grants is not None
        live, live_scope = _tighter(
            defaults.live_grants, [(s, lim.live_grants) for s, lim in declared]
        )
    return Effective(
        rate=float(rate),
        burst=int(burst),
        rate_scope=rate_scope,
        live_grants=int(live) if live is not None else None,
        live_scope=live_scope,
    )


def elevation_requests(defaults: Limits, role: Role) -> tuple[int, str]:
    """Elevation requests per hour a requester may make under ``role``, and who said so."""
    assert defaults.elevation_requests is not None
    value, scope = _tighter(
        defaults.elevation_requests, [(f"role:{role.name}", role.limits.elevation_requests)]
    )
    return int(value), scope
