"""Typed keys of the Vault-API front door app."""

from __future__ import annotations

from aiohttp import web

from .paths import CatalogIndex

__all__ = ["BROKER_APP", "INDEX", "OIDC_MOUNTS", "IndexCache"]

# The broker app whose services (policy, grants, elevations, ledger) the front door uses.
BROKER_APP = web.AppKey("broker_app", web.Application)

# The names of the configured identity providers: the auth mounts whose OIDC login
# (``auth/<name>/oidc/auth_url`` and ``/callback``) the front door serves.
OIDC_MOUNTS: web.AppKey[frozenset[str]] = web.AppKey("oidc_mounts")


class IndexCache:
    """The catalog index of one policy version, rebuilt when the version changes."""

    def __init__(self) -> None:
        self.version = ""
        self.index: CatalogIndex = {}


INDEX = web.AppKey("catalog_index", IndexCache)
