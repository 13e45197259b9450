"""Quotas and fairness: per-principal limits and per-engine bulkheads (``Quotas``)."""

from .limits import Effective, effective
from .refusals import RefusalTally, flush_refusals
from .service import Quotas

__all__ = ["Effective", "Quotas", "RefusalTally", "effective", "flush_refusals"]
