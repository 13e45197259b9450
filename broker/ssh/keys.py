"""A user's OpenSSH public key line -> ``PublicKey``, or a ``BadRequest`` saying why not.

The text comes straight from a request body, so the parser is strict and bounded:

- Input is at most ``MAX_PUBLIC_KEY_CHARS`` characters and exactly one key line,
  ``<type> <base64> [comment]``; the comment is dropped. ``authorized_keys`` options,
  RFC 4716 blocks, several lines or several keys on one line are ``invalid_public_key``.
- Anything that looks like a private key (PEM or ssh.com ``PRIVATE KEY`` armour, OpenSSH's
  ``openssh-key-v1``, PuTTY's ``PuTTY-User-Key-File``) is ``private_key_refused``; that
  check runs first, before any length or format check, so a pasted private key is never
  parsed and always gets the message that says what happened.
- Allowed types: ``ssh-ed25519``, ``ecdsa-sha2-nistp256/384/521``, ``ssh-rsa`` (at least
  ``min_rsa_bits``, at most ``MAX_RSA_BITS``) and the FIDO variants
  ``sk-ssh-ed25519@openssh.com`` and ``sk-ecdsa-sha2-nistp256@openssh.com``. DSA, other
  types and certificates (``*-cert-v01@openssh.com``) are ``key_type_not_allowed``.
- The key blob must decode completely (strict base64, no trailing bytes, the type inside
  the blob equal to the type in front of it) and the key must be valid (a point on its
  curve, a usable RSA modulus): ``cryptography`` checks the mathematics.

Invariant: no error message, argument or chained cause contains any part of the input,
since the input may be a secret pasted by mistake: errors raised while handling a
library's exception are raised ``from None``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_public_key,
)

from broker.errors import BadRequest

__all__ = [
    "ALLOWED_KEY_TYPES",
    "MAX_PUBLIC_KEY_CHARS",
    "MAX_RSA_BITS",
    "PublicKey",
    "fingerprint",
    "parse_public_key",
]

MAX_PUBLIC_KEY_CHARS = 4 * 1024  # an RSA-16384 line is about 2.8 KiB
MAX_RSA_BITS = 16384  # OpenSSH's own ceiling (SSH_RSA_MAXIMUM_MODULUS_SIZE)

# Type -> the bits ``ssh-keygen -l`` reports for it (RSA: the modulus, filled in later).
_FIXED_BITS: dict[str, int | None] = {
    "ssh-ed25519": 256,
    "sk-ssh-ed25519@openssh.com": 256,
    "ecdsa-sha2-nistp256": 256,
    "ecdsa-sha2-nistp384": 384,
    "ecdsa-sha2-nistp521": 521,
    "sk-ecdsa-sha2-nistp256@openssh.com": 256,
    "ssh-rsa": None,
}
ALLOWED_KEY_TYPES = frozenset(_FIXED_BITS)
# FIDO keys: cryptography loads them but drops the application string, so their blob is
# kept as sent (it holds no integers, hence has a single encoding).
_SK_TYPES = frozenset({"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"})
_CERT_SUFFIX = "-cert-v01@openssh.com"
# Every other type OpenSSH knows, so a second key hidden in the comment is recognised.
_OTHER_KNOWN_TYPES = frozenset({"ssh-dss", "ssh-xmss@openssh.com"})

# Private key formats: PEM and ssh.com armour ("-----BEGIN RSA PRIVATE KEY-----",
# "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----"), OpenSSH's magic, PuTTY's header (all
# case-insensitive), and the base64 of "openssh-key-v1", how an OpenSSH private key's body
# starts when pasted without its armour lines. Only the first _PRIVATE_SCAN_CHARS are
# searched: armour comes first, and longer text is refused anyway.
_PRIVATE_PATTERN = re.compile(
    r"private key\s*-{4}|openssh-key-v1|putty-user-key-file|b3BlbnNzaC1rZXktdjE", re.IGNORECASE
)
_PRIVATE_SCAN_CHARS = 4 * MAX_PUBLIC_KEY_CHARS

_ALLOWED_HINT = (
    "use ssh-ed25519 (recommended), ecdsa-sha2-nistp256/384/521, ssh-rsa of at least "
    "{bits} bits, or a FIDO key (sk-ssh-ed25519@openssh.com, "
    "sk-ecdsa-sha2-nistp256@openssh.com)"
)
_PRIVATE_KEY_MESSAGE = (
    "this is a PRIVATE key, not a public key: it was refused and not stored or logged, but "
    "it has left your machine, so treat it as compromised: delete it, generate a new key "
    "pair and send only the public half (the .pub file)"
)


@dataclass(frozen=True)
class PublicKey:
    """A validated public key.

    ``algorithm`` is the OpenSSH type (``ssh-ed25519``); ``bits`` what ``ssh-keygen -l``
    reports (the RSA modulus size, the curve size, 256 for Ed25519); ``fingerprint`` is
    ``SHA256:<unpadded base64>`` of the key blob, as ``ssh-keygen -l`` and sshd's log
    print it; ``openssh`` the canonical ``"<type> <base64>"`` line, without a comment.
    """

    algorithm: str
    bits: int | None
    fingerprint: str
    openssh: str


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key blob (the wire encoding, not base64)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def parse_public_key(text: str, *, min_rsa_bits: int = 3072) -> PublicKey:
    """Validate one OpenSSH public key line (see the module docstring for the rules).

    Raises ``BadRequest`` with ``code`` ``private_key_refused``, ``invalid_public_key``,
    ``key_type_not_allowed`` or ``key_too_small``; its message never quotes the input.
    """
    if _looks_private(text):
        raise BadRequest(_PRIVATE_KEY_MESSAGE, code="private_key_refused")
    if len(text) > MAX_PUBLIC_KEY_CHARS:
        raise _invalid(f"a public key line is at most {MAX_PUBLIC_KEY_CHARS} characters")
    line = text.strip()
    if not line:
        raise _invalid("no public key was given")
    if "\n" in line or "\r" in line:
        raise _invalid("send exactly one public key, on one line")
    fields = line.split(maxsplit=2)
    if len(fields) < 2:
        raise _invalid("expected '<type> <base64> [comment]', as in the .pub file")
    key_type, body = fields[0], fields[1]
    if len(fields) == 3 and _holds_another_key(fields[2]):
        raise _invalid("send exactly one public key, on one line")
    blob = _decode_blob(body)
    if _blob_type(blob) != key_type:
        raise _invalid("the key data does not match its type (a damaged or edited line?)")

    if key_type.endswith(_CERT_SUFFIX):
        raise BadRequest(
            "this is an SSH certificate, not a public key: send the plain public key "
            "(the .pub file without -cert in its name)",
            code="key_type_not_allowed",
        )
    if key_type not in ALLOWED_KEY_TYPES:
        name = "DSA (ssh-dss) keys are" if key_type == "ssh-dss" else "this key type is"
        raise BadRequest(
            f"{name} not allowed: " + _ALLOWED_HINT.format(bits=min_rsa_bits),
            code="key_type_not_allowed",
        )

    try:
        key = load_ssh_public_key(f"{key_type} {body}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid(
            "the key data is not a valid key of its type (a damaged or edited line?)"
        ) from None

    bits = _FIXED_BITS[key_type]
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < min_rsa_bits:
            raise BadRequest(
                f"RSA keys must have at least {min_rsa_bits} bits; this one has {bits}: "
                "generate an ssh-ed25519 key (ssh-keygen -t ed25519) instead",
                code="key_too_small",
            )
        if bits > MAX_RSA_BITS:
            raise _invalid(f"RSA keys above {MAX_RSA_BITS} bits are not supported")

    if key_type not in _SK_TYPES:
        # The canonical encoding: OpenSSH accepts e.g. padded integers but prints and
        # fingerprints the key as it re-encodes it.
        canonical = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1]
        blob = base64.b64decode(canonical)
    return PublicKey(
        algorithm=key_type,
        bits=bits,
        fingerprint=fingerprint(blob),
        openssh=f"{key_type} {base64.b64encode(blob).decode('ascii')}",
    )


def _invalid(reason: str) -> BadRequest:
    return BadRequest(f"not an OpenSSH public key: {reason}", code="invalid_public_key")


def _looks_private(text: str) -> bool:
    return _PRIVATE_PATTERN.search(text, 0, _PRIVATE_SCAN_CHARS) is not None


def _holds_another_key(comment: str) -> bool:
    """True if the comment holds a key type followed by key data: two keys on one line."""
    known = ALLOWED_KEY_TYPES | _OTHER_KNOWN_TYPES
    words = comment.split()
    return any(
        (word in known or word.endswith(_CERT_SUFFIX)) and following.startswith("AAAA")
        for word, following in itertools.pairwise(words)
    )


def _decode_blob(body: str) -> bytes:
    if not body.isascii():
        raise _invalid("the key data is not base64")
    try:
        return binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
    except binascii.Error:
        raise _invalid("the key data is not base64") from None


def _blob_type(blob: bytes) -> str | None:
    """The type string a key blob starts with, or None if it does not start with one."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    raw = blob[4 : 4 + length]
    if len(raw) != length or not raw.isascii():
        return None
    return raw.decode("ascii")
