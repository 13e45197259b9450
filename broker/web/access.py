"""Who may call a route: declared once per route, decided by one function, deny by default.

Every route in ``web.routes`` carries an ``Access``; ``authorize`` is the only code that
reads it, and the route table refuses to start an app with a route that has none. The
rules, first match wins:

==================  ===============================================  ======================
access              who passes                                       refused with
==================  ===============================================  ======================
public              anyone; no token is read                         (never refused)
authenticated       a verified bearer token of a subject who is      401 <reason>,
                    not offboarded                                   403 subject_offboarded
capability(c, ...)  authenticated, and the policy gives the caller   403 forbidden
                    at least one of the capabilities ``c``
resource(who)       authenticated; the service then decides for the  404 <thing>_not_found
                    one resource (``who`` says which rule: the       or 403 naming the rule
                    requester, an approver, a reviewer), answering
                    404 for what the caller may not see
per_operation(t)    one route serving many operations (the Vault     see the table ``t``;
                    front door's catch-all): each operation kind     never valid on a
                    declares its own access in the table ``t``,      native route (403)
                    enforced by that front end before anything else
==================  ===============================================  ======================

Capabilities come from the caller's roles in the policy version in force at the time of
the request (``policy.decide.capabilities``), never from the token alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from broker.auth import Principal
from broker.errors import Forbidden
from broker.policy.decide import capabilities
from broker.policy.model import PolicySet

__all__ = [
    "Access",
    "authenticated",
    "authorize",
    "capability",
    "per_operation",
    "public",
    "resource",
]

AccessKind = Literal["public", "authenticated", "capability", "resource", "operations"]


@dataclass(frozen=True, slots=True)
class Access:
    """One row of the rule table above."""

    kind: AccessKind
    capabilities: tuple[str, ...] = ()
    rule: str = ""  # for ``resource``: which per-resource rule the service applies

    @property
    def needs_token(self) -> bool:
        """True when the route middleware authenticates before anything else."""
        return self.kind not in ("public", "operations")

    def describe(self) -> str:
        """The declaration in words, for the OpenAPI document."""
        match self.kind:
            case "public":
                return "Public: no token needed."
            case "authenticated":
                return "Any authenticated caller."
            case "capability":
                names = " or ".join(f"`{c}`" for c in self.capabilities)
                return f"Needs the {names} capability."
            case "operations":
                return f"Each operation declares its access: {self.rule}."
            case _:
                return f"Authenticated; {self.rule}."


public = Access("public")
authenticated = Access("authenticated")


def capability(*names: str) -> Access:
    if not names:
        raise ValueError("a capability declaration names at least one capability")
    return Access("capability", capabilities=names)


def resource(rule: str) -> Access:
    if not rule:
        raise ValueError("a resource declaration says which rule decides")
    return Access("resource", rule=rule)


def per_operation(table: str) -> Access:
    return Access("operations", rule=table)


def authorize(access: Access, policy: PolicySet, principal: Principal | None) -> None:
    """Raise Forbidden unless ``principal`` passes ``access`` (see the table above).

    ``principal`` is None only for public routes; authentication itself (401) happens
    before, in the middleware, for every other kind.
    """
    if access.kind == "public":
        return
    if access.kind == "operations":  # a front end's own table decides, never this one
        raise Forbidden("this endpoint is not declared for this API", code="forbidden")
    if principal is None:  # a non-public route reached without authentication: a bug
        raise Forbidden("this endpoint needs a bearer token", code="forbidden")
    if access.kind == "capability":
        held = capabilities(policy, principal)
        if not held.intersection(access.capabilities):
            names = " or ".join(repr(c) for c in access.capabilities)
            raise Forbidden(f"this endpoint needs the {names} capability", code="forbidden")
