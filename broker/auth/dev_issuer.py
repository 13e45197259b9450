"""The local development issuer: an Ed25519 key on disk that mints tokens for ``broker dev``.

The private key is a PKCS#8 PEM file readable by its owner only (mode 0600); it is created
on first use and refused if other users can read it. Tokens carry ``kid`` = the RFC 7638
thumbprint of the public key, which is also how ``Verifier`` addresses keys given as PEM,
so ``issuer_config()`` and ``jwks()`` describe exactly the key that signs.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.auth.jwks import jwk_thumbprint, public_key_to_jwk
from broker.auth.verifier import IssuerConfig

__all__ = ["DEV_AUDIENCE", "DEV_ISSUER", "DevIssuer"]

DEV_ISSUER = "https://broker.dev.local"
DEV_AUDIENCE = "jit-broker"

_KEY_FILE_MODE = 0o600
_KEY_DIR_MODE = 0o700
# Claims mint() sets itself; extra_claims may not override them.
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "groups"})


class DevIssuer:
    """Signs development tokens with one Ed25519 key (``alg`` EdDSA)."""

    def __init__(self, private_key: Ed25519PrivateKey, *, issuer: str = DEV_ISSUER) -> None:
        self._private_key = private_key
        self._issuer = issuer
        self._public_jwk = public_key_to_jwk(private_key.public_key())
        self.kid = jwk_thumbprint(self._public_jwk)

    @classmethod
    def load_or_create(cls, key_path: Path) -> DevIssuer:
        """Load the Ed25519 private key PEM at ``key_path``, creating it (0600) if missing.

        Creation is exclusive, so two processes racing end up with the same key. Raises
        ``PermissionError`` if an existing key file is accessible to group or others (on
        POSIX), and ``ValueError`` if it is not an unencrypted Ed25519 private key.
        """
        key_path = Path(key_path)
        try:
            return cls._load(key_path)
        except FileNotFoundError:
            pass
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_path.parent.mkdir(mode=_KEY_DIR_MODE, parents=True, exist_ok=True)
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_FILE_MODE)
        except FileExistsError:
            return cls._load(key_path)  # another process won the race; use its key
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        return cls(key)

    @classmethod
    def _load(cls, key_path: Path) -> DevIssuer:
        with key_path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
                raise PermissionError(
                    f"{key_path} is accessible to other users; run: chmod 600 {key_path}"
                )
            data = f.read()
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{key_path} is not an Ed25519 private key")
        return cls(key)

    def mint(
        self,
        subject: str,
        groups: Sequence[str] = (),
        *,
        ttl_seconds: int = 8 * 3600,
        audience: str = DEV_AUDIENCE,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed token for ``subject`` with ``groups``, valid from now for ``ttl_seconds``.

        Sets iss/sub/aud/iat/nbf/exp/jti/groups; ``extra_claims`` adds others. Raises
        ``ValueError`` for an empty subject, a non-positive TTL, or extra claims that would
        override the ones set here.
        """
        if not subject:
            raise ValueError("subject must be non-empty")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if isinstance(groups, str):
            raise ValueError("groups must be a sequence of strings, not a string")
        extra = dict(extra_claims or {})
        overridden = _RESERVED_CLAIMS.intersection(extra)
        if overridden:
            raise ValueError(f"extra_claims may not set {sorted(overridden)}")
        now = int(time.time())
        claims: dict[str, Any] = {
            **extra,
            "iss": self._issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": secrets.token_urlsafe(16),
            "groups": list(groups),
        }
        return jwt.encode(
            claims, self._private_key, algorithm="EdDSA", headers={"kid": self.kid, "typ": "JWT"}
        )

    def public_key_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM."""
        return (
            self._private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def issuer_config(self, audience: str = DEV_AUDIENCE) -> IssuerConfig:
        """An ``IssuerConfig`` trusting exactly this key (EdDSA)."""
        return IssuerConfig(
            issuer=self._issuer,
            audience=audience,
            algorithms=("EdDSA",),
            public_keys=(self.public_key_pem(),),
        )

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517) of this issuer, e.g. to serve for other verifiers."""
        return {"keys": [{**self._public_jwk, "kid": self.kid, "use": "sig", "alg": "EdDSA"}]}
