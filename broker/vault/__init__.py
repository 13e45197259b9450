"""Vault/OpenBao: the only package that talks to it."""

from .client import DatabaseCredential, KVSecret, PKICertificate, VaultClient
from .login import AppRoleCredentials, VaultLogin

__all__ = [
    "AppRoleCredentials",
    "DatabaseCredential",
    "KVSecret",
    "PKICertificate",
    "VaultClient",
    "VaultLogin",
]
