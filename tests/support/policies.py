"""Policy directories for brokers that need more than the demo policy.

The repo's ``policies/`` plus one extra file of catalog entries and roles, so a test adds
what it needs (a privileged alias with a two-of-N quorum, a short window...) and keeps
everything the demo has.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO

__all__ = ["admin_db_variant", "elevation_variant_policies", "write_policies"]


def write_policies(dest: Path, catalog: dict[str, Any], roles: list[dict[str, Any]]) -> Path:
    """The repo's policies plus one extra file with variant catalog entries and roles."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("catalog.yaml", "roles.yaml"):
        shutil.copy(REPO / "policies" / name, dest / name)
    doc = {"catalog": catalog, "roles": roles}
    (dest / "zz-elevation-variants.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def admin_db_variant(name: str, **elevation: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A catalog alias ``db/orders-admin-<name>`` of the orders-admin login, and its role.

    The role is privileged, for engineers, with ``elevation`` (``max_ttl`` is the role's).
    """
    secret = f"db/orders-admin-{name}"
    max_ttl = elevation.pop("max_ttl", "30m")
    entry = {"engine": "database", "mount": "database", "role": "orders-admin"}
    role = {
        "name": f"orders-dba-{name}",
        "members": {"groups": ["engineering"]},
        "secrets": [secret],
        "max_ttl": max_ttl,
        "privileged": True,
        "elevation": {"max_duration": "1h", **elevation},
    }
    return {secret: entry}, role


def elevation_variant_policies(dest: Path) -> Path:
    """Roles ``2of2`` (two-of-N), ``2f`` (two factors), ``short`` (3 s), ``quick`` (1m expiry)."""
    catalog: dict[str, Any] = {}
    roles = []
    for name, elevation in (
        ("2of2", {"approver_groups": ["sre-leads"], "approvals": 2}),
        (
            "2f",
            {
                "factors": [
                    {"approver_groups": ["sre-leads"], "approvals": 1},
                    {"approver_groups": ["security-admins"], "approvals": 1},
                ]
            },
        ),
        (
            "short",
            {"approver_groups": ["sre-leads"], "max_duration": "3s", "max_ttl": "3s"},
        ),
        ("quick", {"approver_groups": ["sre-leads"], "request_expiry": "1m"}),
    ):
        entry, role = admin_db_variant(name, **elevation)
        catalog.update(entry)
        roles.append(role)
    return write_policies(dest, catalog, roles)
