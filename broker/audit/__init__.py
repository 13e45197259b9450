"""Auditor answers from the ledger: access windows ("who had what, when, why"), events,
and whole-ledger verifications."""

from .access import AccessAudit, AccessQuery, EventQuery
from .verification import LedgerVerifications, Verification

__all__ = ["AccessAudit", "AccessQuery", "EventQuery", "LedgerVerifications", "Verification"]
