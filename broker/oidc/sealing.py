"""Secrets the server keeps for a client, sealed under a key only that client holds.

A PKCE verifier, a device code and a provider refresh token must survive across replicas
(a login may start on one and finish on another), so they live in PostgreSQL. Each is
sealed with AES-256-GCM under a key derived (HKDF-SHA256) from a secret the client keeps
and the server stores only as a hash: the state and client nonce, the device handle, the
session token. A copy of the database, or a reader of it, cannot use them.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["seal", "unseal"]

_NONCE_BYTES = 12


def _key(client_secret: bytes, purpose: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return hkdf.derive(client_secret)


def seal(client_secret: bytes, purpose: str, plaintext: str) -> bytes:
    """``nonce || ciphertext`` of ``plaintext`` under the key of the secret and purpose."""
    nonce = os.urandom(_NONCE_BYTES)
    data = AESGCM(_key(client_secret, purpose)).encrypt(nonce, plaintext.encode(), None)
    return nonce + data


def unseal(client_secret: bytes, purpose: str, sealed: bytes) -> str | None:
    """The plaintext, or None when the key is not the one it was sealed under."""
    try:
        data = AESGCM(_key(client_secret, purpose)).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None
        )
    except (InvalidTag, ValueError):
        return None
    return data.decode()
