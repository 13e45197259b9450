"""Auditor answers from the ledger: access windows ("who had what, when, why") and events."""

from .access import AccessAudit, AccessQuery, EventQuery

__all__ = ["AccessAudit", "AccessQuery", "EventQuery"]
