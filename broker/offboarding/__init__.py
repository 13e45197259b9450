"""Offboarding: end a departing person's access now, refuse them everywhere, measure the SLA."""

from .blocklist import SubjectBlocklist
from .model import Offboarding
from .service import OffboardingService

__all__ = ["Offboarding", "OffboardingService", "SubjectBlocklist"]
