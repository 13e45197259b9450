"""Which pages the navigation offers the person signed in.

Only a convenience: a link is shown when the policy in force would let the person use
the page, as the services decide it (``ElevationService.may_approve``) or the policy's
capabilities (``audit``, ``admin``) that the pages' routes require. Hiding a link is
never the access control; each page's route declares its own access rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.policy.decide import capabilities
from broker.web.authn import PRINCIPAL
from broker.web.keys import ELEVATIONS, POLICY

__all__ = ["Nav", "nav_for"]


@dataclass(frozen=True)
class Nav:
    # Decides or reviews elevations: the approvals queue.
    approver: bool = False
    # The auditor's pages (why, events, ledger, findings, evidence, gaps).
    audit: bool = False
    # The admin's pages (offboard, annotate a gap, open a review).
    admin: bool = False


def nav_for(request: web.Request) -> Nav | None:
    """The signed-in person's links (None before sign-in)."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        return None
    held = capabilities(request.app[POLICY].current, principal)
    return Nav(
        approver=request.app[ELEVATIONS].may_approve(principal),
        audit="audit" in held,
        admin="admin" in held,
    )
