"""Where things are: the checkout under test and its installed ``broker`` command."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["BROKER_BIN", "REPO"]

REPO = Path(__file__).resolve().parents[2]

# The console script next to the interpreter running the tests: the checkout's venv.
BROKER_BIN = Path(sys.executable).parent / "broker"
