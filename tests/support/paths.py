"""Where things are: the checkout under test and its installed ``broker`` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["BROKER_BIN", "REPO", "debian_binary"]

REPO = Path(__file__).resolve().parents[2]

# The console script next to the interpreter running the tests: the checkout's venv.
BROKER_BIN = Path(sys.executable).parent / "broker"


def debian_binary(path: Path, package: str) -> Path:
    """``path`` if Debian's ``package`` put it there; skips the test otherwise, and fails
    it under ``CI`` (where ``make test`` must have installed it, as root)."""
    import pytest  # here, not at import: the module is also usable outside pytest

    if path.is_file():
        return path
    reason = f"no {path}: install Debian's {package} (`make test` does, as root)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
