"""Vault/OpenBao: the only package that talks to it."""

from .client import DatabaseCredential, KVSecret, PKICertificate, VaultClient

__all__ = ["DatabaseCredential", "KVSecret", "PKICertificate", "VaultClient"]
