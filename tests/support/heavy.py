"""The ``RELIABILITY_HEAVY`` switch: longer soaks, more kills, more fuzz examples."""

from __future__ import annotations

import os

__all__ = ["HEAVY", "scaled"]

HEAVY = os.environ.get("RELIABILITY_HEAVY", "") not in ("", "0")
"""``RELIABILITY_HEAVY=1`` runs the heavier variants (more fuzz examples, more attempts)."""


def scaled(default: int, heavy: int) -> int:
    """``heavy`` under RELIABILITY_HEAVY=1, else ``default``."""
    return heavy if HEAVY else default
