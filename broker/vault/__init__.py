"""Vault/OpenBao: the only package that talks to it."""

from .client import DatabaseCredential, KVSecret, PKICertificate, SSHSigned, VaultClient
from .login import AppRoleCredentials, VaultLogin

__all__ = [
    "AppRoleCredentials",
    "DatabaseCredential",
    "KVSecret",
    "PKICertificate",
    "SSHSigned",
    "VaultClient",
    "VaultLogin",
]
