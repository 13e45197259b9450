"""Grants: the just-in-time credential lifecycle (issue, revoke, expire)."""

from .service import GrantService, IssueRequest

__all__ = ["GrantService", "IssueRequest"]
