"""The Vault-compatible front door: unmodified Vault clients, every read through policy."""

from .app import create_vault_api, start_vault_api

__all__ = ["create_vault_api", "start_vault_api"]
