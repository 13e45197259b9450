"""OpenSSH Key Revocation Lists (the binary format of OpenSSH's ``PROTOCOL.krl``).

``build_krl`` writes a KRL that revokes certificates of one CA by serial and by key id,
for sshd's ``RevokedKeys`` (and ``ssh-keygen -Q``). Layout, big-endian, ``string`` being a
uint32 length and the bytes::

    "SSHKRL\\n\\0"  uint32 1 (format)  uint64 krl_version  uint64 generated_date
    uint64 0 (flags)  string "" (reserved)  string comment
    then, only if something is revoked, one section:
    byte 1 (certificates)  string [ string ca_key  string "" (reserved)
                                    byte 0x20 (serial list)  string [uint64 serial ...]
                                    byte 0x23 (key ids)      string [string key_id ...] ]

Invariants:

- Deterministic: the same arguments give the same bytes (serials ascending, key ids in
  byte order, duplicates dropped), so an unchanged list can be served with a stable ETag.
- Only certificates signed by ``ca_public_key`` are revoked: the section names that CA,
  never the "any CA" wildcard (an empty ca_key), and no plain keys are listed.
- Nothing revoked gives the header alone: a valid KRL that revokes nothing. (sshd refuses
  *every* key while its ``RevokedKeys`` file is missing or unparseable, so hosts must
  always have one; it re-reads the file on each authentication.)
- Every value OpenSSH would reject is refused here with ``ValueError``, because a KRL that
  fails to parse locks everyone out of every host that installs it: serial 0 (OpenSSH's
  "no serial", never revocable), serials or versions outside uint64, empty key ids or
  any text with NUL, a naive ``generated_at``.
- No signature section: OpenSSH 9.4 and later refuse KRLs that carry one. The KRL's
  integrity is the transport's job (TLS to the broker).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from datetime import datetime

from broker.errors import BadRequest
from broker.ssh.keys import parse_public_key

__all__ = ["build_krl"]

_MAGIC = b"SSHKRL\n\0"
_FORMAT_VERSION = 1
_SECTION_CERTIFICATES = 1
_CERT_SERIAL_LIST = 0x20
_CERT_KEY_ID = 0x23
_UINT64_MAX = 2**64 - 1
# The CA is the broker's own (from OpenBao), not user input: accept any RSA size OpenSSH
# still loads rather than the policy minimum for user keys.
_CA_MIN_RSA_BITS = 1024


def build_krl(
    ca_public_key: str,
    *,
    serials: Iterable[int],
    key_ids: Iterable[str] = (),
    version: int,
    generated_at: datetime,
    comment: str = "",
) -> bytes:
    """A KRL revoking the certificates of ``ca_public_key`` (an OpenSSH public key line)
    with one of ``serials`` or ``key_ids``; see the module docstring for the invariants.

    ``version`` is the KRL's own version (uint64, meant to grow with each change);
    ``generated_at`` an aware datetime, stored in whole seconds. Raises ``ValueError``
    for a CA key that is not a usable public key or any value OpenSSH would reject.
    """
    try:
        ca = parse_public_key(ca_public_key, min_rsa_bits=_CA_MIN_RSA_BITS)
    except BadRequest as e:
        raise ValueError(f"the CA public key cannot be used: {e.message}") from e
    ca_blob = base64.b64decode(ca.openssh.split()[1])

    revoked_serials = sorted({_serial(s) for s in serials})
    revoked_ids = sorted({_key_id(k) for k in key_ids})
    if generated_at.tzinfo is None or generated_at.utcoffset() is None:
        raise ValueError("generated_at must be timezone-aware")

    out = bytearray(_MAGIC)
    out += struct.pack(">I", _FORMAT_VERSION)
    out += _uint64(version, "version")
    out += _uint64(int(generated_at.timestamp()), "generated_at")
    out += _uint64(0, "flags")
    out += _string(b"")  # reserved
    out += _string(_text(comment, "comment"))
    if not revoked_serials and not revoked_ids:
        return bytes(out)

    section = bytearray(_string(ca_blob) + _string(b""))  # CA key, reserved
    if revoked_serials:
        section.append(_CERT_SERIAL_LIST)
        section += _string(b"".join(struct.pack(">Q", s) for s in revoked_serials))
    if revoked_ids:
        section.append(_CERT_KEY_ID)
        section += _string(b"".join(_string(k) for k in revoked_ids))
    out.append(_SECTION_CERTIFICATES)
    out += _string(bytes(section))
    return bytes(out)


def _serial(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"a serial is an integer, not {type(value).__name__}")
    if not 1 <= value <= _UINT64_MAX:
        raise ValueError(f"serial {value} is outside 1..2**64-1 (0 means 'no serial')")
    return value


def _key_id(value: str) -> bytes:
    encoded = _text(value, "key id")
    if not encoded:
        raise ValueError("an empty key id cannot be revoked")
    return encoded


def _text(value: str, what: str) -> bytes:
    if "\0" in value:
        raise ValueError(f"a {what} cannot contain NUL")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"a {what} must be encodable as UTF-8") from e


def _uint64(value: int, what: str) -> bytes:
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"{what} {value} is outside uint64")
    return struct.pack(">Q", value)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value
