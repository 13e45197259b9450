"""Step-up elevation: eligible, approved, time-boxed privileged access."""

from .service import ElevationService

__all__ = ["ElevationService"]
