"""Signed checkpoints of the chain head, in the C2SP signed-note / checkpoint format.

A checkpoint body is the C2SP tlog checkpoint — origin, tree size, base64 Merkle root
(``broker.ledger.merkle``) — plus one extension line ``chain <base64 chain head>`` that
signs the hash chain's head at the same size. Checkpoints signed before the Merkle tree
existed have three lines, the third being the chain head, and no extension line: they keep
verifying against the chain. The note is signed with an Ed25519 key that lives outside
the database (a file or a Kubernetes Secret), so a database superuser who rewrites the
chain cannot produce matching checkpoints. Pure functions; the key is loaded once by the
caller.

Note format (https://c2sp.org/signed-note): ``body + "\\n" + "— <name> <base64(keyhash||sig)>\\n"``
where keyhash is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointSigner",
    "CheckpointVerifier",
    "load_or_create_signing_key",
    "parse_verifier_key",
]

_ALG_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "  # em dash + space, as the signed-note spec writes it


class CheckpointError(ValueError):
    """A checkpoint note is malformed or its signature does not verify."""


_CHAIN_EXTENSION = "chain "


@dataclass(frozen=True)
class Checkpoint:
    """A signed head: ``head_hash`` is the chain's hash of row ``size``; ``root`` the Merkle
    root of the first ``size`` rows (None only on checkpoints from before the tree)."""

    origin: str
    size: int
    head_hash: bytes
    root: bytes | None = None

    def body(self) -> str:
        head = base64.b64encode(self.head_hash).decode()
        if self.root is None:
            return f"{self.origin}\n{self.size}\n{head}\n"
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\n{_CHAIN_EXTENSION}{head}\n"


def _key_hash(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ALG_ED25519 + public_raw).digest()[:4]


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class CheckpointSigner:
    """Signs checkpoint bodies with one Ed25519 key under a key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not name or any(c.isspace() for c in name) or "+" in name:
            raise ValueError("checkpoint key name must be non-empty without spaces or '+'")
        self.name = name
        self._key = private_key
        self._public_raw = _public_raw(private_key.public_key())
        self._hash = _key_hash(name, self._public_raw)

    @property
    def key_id(self) -> str:
        return f"{self.name}+{self._hash.hex()}"

    def verifier_key(self) -> str:
        """The public verifier key string ``name+hash+base64(0x01||pub)`` auditors use."""
        blob = base64.b64encode(_ALG_ED25519 + self._public_raw).decode()
        return f"{self.name}+{self._hash.hex()}+{blob}"

    def sign(self, checkpoint: Checkpoint) -> str:
        body = checkpoint.body()
        sig = self._key.sign(body.encode())
        line = base64.b64encode(self._hash + sig).decode()
        return f"{body}\n{_SIG_PREFIX}{self.name} {line}\n"


@dataclass(frozen=True)
class _VerifierKey:
    name: str
    key_hash: bytes
    key: Ed25519PublicKey


def parse_verifier_key(text: str) -> _VerifierKey:
    """Parse ``name+hash+base64(0x01||pub)``. Raises CheckpointError."""
    try:
        name, hash_hex, blob = text.strip().split("+", 2)
        raw = base64.b64decode(blob, validate=True)
        if raw[:1] != _ALG_ED25519 or len(raw) != 33:
            raise CheckpointError("verifier key is not an Ed25519 key")
        key_hash = bytes.fromhex(hash_hex)
        public = Ed25519PublicKey.from_public_bytes(raw[1:])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"malformed verifier key: {e}") from e
    if _key_hash(name, raw[1:]) != key_hash:
        raise CheckpointError("verifier key hash does not match its name and key")
    return _VerifierKey(name, key_hash, public)


class CheckpointVerifier:
    """Verifies notes against a set of trusted verifier keys (several during rotation)."""

    def __init__(self, verifier_keys: list[str]) -> None:
        self.verifier_keys = list(verifier_keys)  # as given: what a worker process needs
        self._keys = [parse_verifier_key(k) for k in verifier_keys]
        if not self._keys:
            raise ValueError("at least one checkpoint verifier key is required")

    def verify(self, note: str, *, origin: str) -> Checkpoint:
        """Return the checkpoint if one trusted key signed ``note`` for ``origin``.

        Raises CheckpointError for a malformed note, a wrong origin, or no valid signature.
        """
        body, sep, sigs = note.partition("\n\n")
        if not sep:
            raise CheckpointError("note has no signature block")
        body += "\n"
        lines = body.split("\n")
        if len(lines) < 4 or lines[0] != origin:
            raise CheckpointError("checkpoint origin does not match")
        extensions = lines[3:-1]
        try:
            size = int(lines[1])
            third = base64.b64decode(lines[2], validate=True)
            if not extensions:  # before the Merkle tree: the third line is the chain head
                head, root = third, None
            elif len(extensions) == 1 and extensions[0].startswith(_CHAIN_EXTENSION):
                head = base64.b64decode(extensions[0][len(_CHAIN_EXTENSION) :], validate=True)
                root = third
            else:
                raise CheckpointError("checkpoint has unknown extension lines")
        except CheckpointError:
            raise
        except ValueError as e:
            raise CheckpointError("checkpoint size or hash is malformed") from e
        if (
            size <= 0
            or len(head) != 32
            or (root is not None and len(root) != 32)
            or str(size) != lines[1]
        ):
            raise CheckpointError("checkpoint size or hash is malformed")
        for line in sigs.splitlines():
            if not line.startswith(_SIG_PREFIX):
                raise CheckpointError("malformed signature line")
            name, _, blob = line[len(_SIG_PREFIX) :].partition(" ")
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError as e:
                raise CheckpointError("malformed signature") from e
            for key in self._keys:
                if key.name == name and raw[:4] == key.key_hash:
                    try:
                        key.key.verify(raw[4:], body.encode())
                    except InvalidSignature:
                        continue
                    return Checkpoint(origin, size, head, root)
        raise CheckpointError("no trusted signature on checkpoint")


def load_or_create_signing_key(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key; with ``create``, generate one (mode 0600) if missing."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"checkpoint signing key not found: {path}")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded
