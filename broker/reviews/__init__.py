"""Quarterly access reviews: snapshot, reviewer decisions, action items (issue #4)."""

from .model import missing_reviews, period_bounds, period_of
from .service import ReviewService

__all__ = ["ReviewService", "missing_reviews", "period_bounds", "period_of"]
