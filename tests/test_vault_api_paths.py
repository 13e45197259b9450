"""``resolve``: every Vault API call is classified, and nothing unknown passes (pure)."""

from __future__ import annotations

import pytest

from broker.policy.model import CatalogEntry
from broker.vaultapi.paths import catalog_index, mount_of, resolve

CATALOG = {
    "stripe/test": CatalogEntry("stripe/test", "kv2", "secret", "stripe/test"),
    "team/app": CatalogEntry("team/app", "kv2", "kv/team", "app/config"),
    "db/orders-ro": CatalogEntry("db/orders-ro", "database", "database", "orders-ro"),
    "pki/internal": CatalogEntry("pki/internal", "pki", "pki", "internal"),
}
INDEX = catalog_index(CATALOG)


@pytest.mark.parametrize(
    ("method", "path", "kind", "detail", "entry"),
    [
        ("PUT", "auth/jwt/login", "login", "jwt", None),
        ("POST", "auth/kubernetes/login", "login", "kubernetes", None),
        ("GET", "auth/jwt/login", "refused", "method_not_allowed", None),
        ("POST", "auth/token/login", "refused", "not_supported", None),
        ("GET", "auth/token/lookup-self", "token_lookup", "", None),
        ("PUT", "auth/token/renew-self", "token_renew", "", None),
        ("POST", "auth/token/revoke-self", "token_revoke", "", None),
        ("POST", "auth/token/create", "refused", "not_supported", None),
        ("GET", "sys/health", "health", "", None),
        ("HEAD", "sys/health", "health", "", None),
        ("GET", "sys/seal-status", "health", "seal_status", None),
        ("HEAD", "secret/data/stripe/test", "refused", "read_only", None),
        ("HEAD", "database/creds/orders-ro", "refused", "read_only", None),
        ("GET", "sys/mounts", "mounts", "", None),
        ("POST", "sys/mounts/new", "refused", "not_supported", None),
        (
            "GET",
            "sys/internal/ui/mounts/secret/stripe/test",
            "ui_mount",
            "secret/stripe/test",
            None,
        ),
        ("PUT", "sys/leases/renew", "lease_renew", "", None),
        (
            "PUT",
            "sys/leases/revoke/database/creds/orders-ro/abc",
            "lease_revoke",
            "database/creds/orders-ro/abc",
            None,
        ),
        ("GET", "sys/leases/renew", "refused", "method_not_allowed", None),
        ("PUT", "sys/policies/acl/root", "refused", "not_supported", None),
        ("GET", "sys/audit", "refused", "not_supported", None),
        ("GET", "secret/data/stripe/test", "kv_read", "", "stripe/test"),
        ("GET", "/secret/data/stripe/test/", "kv_read", "", "stripe/test"),
        ("GET", "secret/metadata/stripe/test", "kv_metadata", "", "stripe/test"),
        ("GET", "kv/team/data/app/config", "kv_read", "", "team/app"),
        ("PUT", "secret/data/stripe/test", "refused", "read_only", None),
        ("DELETE", "secret/data/stripe/test", "refused", "read_only", None),
        ("DELETE", "secret/metadata/stripe/test", "refused", "read_only", None),
        ("GET", "secret/data/stripe/prod", "refused", "not_in_catalog", None),
        ("GET", "secret/data/stripe/test/../prod", "refused", "not_in_catalog", None),
        ("GET", "secret/data/stripe/*", "refused", "not_in_catalog", None),
        ("LIST", "secret/metadata/stripe", "refused", "read_only", None),
        ("GET", "database/creds/orders-ro", "db_creds", "", "db/orders-ro"),
        ("GET", "database/creds/orders-admin", "refused", "not_in_catalog", None),
        ("POST", "database/rotate-root/orders", "refused", "read_only", None),
        ("POST", "pki/issue/internal", "pki_issue", "", "pki/internal"),
        ("GET", "pki/issue/internal", "refused", "method_not_allowed", None),
        ("POST", "pki/sign/internal", "refused", "read_only", None),
        ("GET", "", "refused", "not_in_catalog", None),
    ],
)
def test_resolve(method: str, path: str, kind: str, detail: str, entry: str | None) -> None:
    op = resolve(method, path, INDEX)
    assert (op.kind, op.detail) == (kind, detail)
    assert (op.entry.name if op.entry else None) == entry


def test_mount_of_prefers_the_longest_mount() -> None:
    assert mount_of("kv/team/app/config", CATALOG) == CATALOG["team/app"]
    assert mount_of("secret/stripe/test", CATALOG) == CATALOG["stripe/test"]
    assert mount_of("secretive/x", CATALOG) is None
