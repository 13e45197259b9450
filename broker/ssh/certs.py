"""An OpenSSH user certificate line (OpenBao's ``signed_key``) -> ``CertificateInfo``.

What the ledger records about a signed certificate, read back from the certificate itself
rather than from what was asked for, so the record is what the hosts will enforce.

Rules: one line ``<type>-cert-v01@openssh.com <base64> [comment]`` of at most
``MAX_CERTIFICATE_CHARS``; the blob decodes completely; it is a *user* certificate
(not a host one) of an allowed key type (``broker.ssh.keys.ALLOWED_KEY_TYPES``); its
signature verifies against the CA key it names, with an algorithm current OpenSSH accepts
(not ``ssh-rsa``, i.e. RSA with SHA-1, which OpenSSH 8.8 and later refuse: OpenBao's role
needs ``algorithm_signer`` ``rsa-sha2-256`` or ``-512``). Anything else raises
``InvalidCertificate`` (a ``ValueError``): the caller, which got the text from OpenBao,
translates it into its own error. The certificate is public, so messages may describe it.

Fingerprints are OpenSSH's SHA256 ones, as sshd logs them: ``key_fingerprint`` of the
certified plain key (equal to ``PublicKey.fingerprint`` of the key that was sent),
``ca_fingerprint`` of the signing CA key. Times are aware UTC datetimes; OpenSSH's
"forever" (2**64 - 1) and anything past year 9999 read as ``datetime.max`` in UTC.

The wire format (OpenSSH's PROTOCOL.certkeys) is read here rather than by
``cryptography``'s certificate loader, which does not know FIDO (``sk-``) certificates;
``cryptography`` still does the mathematics (key validity, the signature).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from broker.errors import BadRequest
from broker.ssh.keys import PublicKey, parse_public_key

__all__ = ["MAX_CERTIFICATE_CHARS", "CertificateInfo", "InvalidCertificate", "parse_certificate"]

MAX_CERTIFICATE_CHARS = 64 * 1024  # an RSA-16384 key signed by an RSA-16384 CA is ~6 KiB
_USER_CERT = 1  # SSH2_CERT_TYPE_USER; 2 is a host certificate
# Certificate type -> the certified plain key's type and how many key fields (SSH strings
# or mpints) it carries after the nonce: the types of ``ALLOWED_KEY_TYPES`` (tests sign
# one of each).
_CERT_TYPES = {
    "ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519", 1),  # public key
    "sk-ssh-ed25519-cert-v01@openssh.com": ("sk-ssh-ed25519@openssh.com", 2),  # + application
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": ("ecdsa-sha2-nistp256", 2),  # curve, point
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": ("ecdsa-sha2-nistp384", 2),
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": ("ecdsa-sha2-nistp521", 2),
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": ("sk-ecdsa-sha2-nistp256@openssh.com", 3),
    "ssh-rsa-cert-v01@openssh.com": ("ssh-rsa", 2),  # e, n
}
# Signature algorithm -> its hash, per CA key type (RSA: the algorithm names the hash).
_ECDSA_HASHES: dict[str, hashes.HashAlgorithm] = {
    "ecdsa-sha2-nistp256": hashes.SHA256(),
    "ecdsa-sha2-nistp384": hashes.SHA384(),
    "ecdsa-sha2-nistp521": hashes.SHA512(),
}
_RSA_HASHES: dict[str, hashes.HashAlgorithm] = {
    "rsa-sha2-256": hashes.SHA256(),
    "rsa-sha2-512": hashes.SHA512(),
}
# A CA key is the broker's own (OpenBao's), not user input: OpenSSH's floor, not policy's.
_CA_MIN_RSA_BITS = 1024
_FOREVER = datetime.max.replace(tzinfo=UTC)


class InvalidCertificate(ValueError):
    """The text is not a well-formed, correctly signed OpenSSH user certificate."""


@dataclass(frozen=True)
class CertificateInfo:
    """What a user certificate says: ``principals``, ``extensions`` (names) and
    ``critical_options`` (name -> value) exactly as signed; see the module docstring."""

    serial: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    key_fingerprint: str
    ca_fingerprint: str
    extensions: tuple[str, ...]
    critical_options: dict[str, str]


def parse_certificate(text: str) -> CertificateInfo:
    """Parse and check one OpenSSH user certificate line; raises ``InvalidCertificate``."""
    if len(text) > MAX_CERTIFICATE_CHARS:
        raise InvalidCertificate(f"longer than {MAX_CERTIFICATE_CHARS} characters")
    line = text.strip()
    if "\n" in line or "\r" in line:
        raise InvalidCertificate("more than one line")
    fields = line.split(maxsplit=2)
    if len(fields) < 2 or fields[0] not in _CERT_TYPES:
        raise InvalidCertificate("not an OpenSSH user certificate of an allowed key type")
    cert_type = fields[0]
    key_type, key_fields = _CERT_TYPES[cert_type]
    try:
        blob = binascii.a2b_base64(fields[1].encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise InvalidCertificate("the certificate data is not base64") from e

    wire = _Reader(blob)
    if wire.string() != cert_type.encode("ascii"):
        raise InvalidCertificate("the certificate data does not match its type")
    wire.string()  # nonce
    key_start = wire.offset
    for _ in range(key_fields):
        wire.string()
    key = _key(key_type, _sshstr(key_type.encode("ascii")) + blob[key_start : wire.offset])
    serial = wire.uint64()
    if wire.uint32() != _USER_CERT:
        raise InvalidCertificate("a host certificate, not a user certificate")
    key_id = _text(wire.string(), "key id")
    principals = _Reader(wire.string())
    valid_after, valid_before = wire.uint64(), wire.uint64()
    critical_options = _options(wire.string(), "critical option")
    extensions = _options(wire.string(), "extension")
    wire.string()  # reserved
    ca_blob = wire.string()
    signed = blob[: wire.offset]
    signature = wire.string()
    if not wire.at_end():
        raise InvalidCertificate("trailing data after the signature")
    ca = _key(_Reader(ca_blob).string().decode("ascii", "replace"), ca_blob, ca=True)
    _verify(ca, signature, signed)

    names = []
    while not principals.at_end():
        names.append(_text(principals.string(), "principal"))
    return CertificateInfo(
        serial=serial,
        key_id=key_id,
        principals=tuple(names),
        valid_after=_time(valid_after),
        valid_before=_time(valid_before),
        key_fingerprint=key.fingerprint,
        ca_fingerprint=ca.fingerprint,
        extensions=tuple(extensions),
        critical_options=critical_options,
    )


class _Reader:
    """SSH wire-format fields read from ``data``, each checked against its end."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    def _take(self, size: int) -> bytes:
        if size > len(self._data) - self.offset:
            raise InvalidCertificate("truncated certificate data")
        value = self._data[self.offset : self.offset + size]
        self.offset += size
        return value

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def uint64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.uint32())

    def at_end(self) -> bool:
        return self.offset == len(self._data)


def _sshstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _key(key_type: str, blob: bytes, *, ca: bool = False) -> PublicKey:
    """The key ``blob`` validated by ``parse_public_key`` (its canonical fingerprint)."""
    what = "CA key" if ca else "certified key"
    line = f"{key_type} {base64.b64encode(blob).decode('ascii')}"
    try:
        return parse_public_key(line, min_rsa_bits=_CA_MIN_RSA_BITS)
    except BadRequest as e:
        raise InvalidCertificate(f"its {what} is not usable: {e.message}") from e


def _verify(ca: PublicKey, signature: bytes, signed: bytes) -> None:
    """Check ``signature`` (an SSH signature blob) by ``ca`` over ``signed``."""
    wire = _Reader(signature)
    algorithm = wire.string().decode("ascii", "replace")
    raw = wire.string()
    if not wire.at_end():
        raise InvalidCertificate("trailing data in the signature")
    if ca.algorithm.startswith("sk-"):
        raise InvalidCertificate("signed by a FIDO (sk-) CA key, which is not supported")
    if algorithm == "ssh-rsa":
        raise InvalidCertificate(
            "signed with ssh-rsa (RSA with SHA-1), which OpenSSH 8.8 and later refuse: "
            "sign with rsa-sha2-256 or rsa-sha2-512"
        )
    key = load_ssh_public_key(ca.openssh.encode("ascii"))
    try:
        if isinstance(key, ed25519.Ed25519PublicKey) and algorithm == ca.algorithm:
            key.verify(raw, signed)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm == ca.algorithm:
            numbers = _Reader(raw)
            r, s = _mpint(numbers.string()), _mpint(numbers.string())
            if not numbers.at_end():
                raise InvalidCertificate("trailing data in the ECDSA signature")
            digest = _ECDSA_HASHES[algorithm]
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(digest))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm in _RSA_HASHES:
            key.verify(raw, signed, padding.PKCS1v15(), _RSA_HASHES[algorithm])
        else:
            raise InvalidCertificate(f"a {ca.algorithm} CA cannot sign with {algorithm!r}")
    except InvalidSignature as e:
        raise InvalidCertificate("its signature does not verify against its CA key") from e


def _mpint(value: bytes) -> int:
    if value and value[0] & 0x80:
        raise InvalidCertificate("a negative number in the signature")
    return int.from_bytes(value, "big")


def _options(data: bytes, what: str) -> dict[str, str]:
    """Critical options or extensions: name -> value (a string inside the data, or "")."""
    wire, found = _Reader(data), {}
    while not wire.at_end():
        name = _text(wire.string(), what)
        raw = wire.string()
        value = ""
        if raw:
            inner = _Reader(raw)
            value = _text(inner.string(), what)
            if not inner.at_end():
                raise InvalidCertificate(f"trailing data in {what} {name!r}")
        if name in found:
            raise InvalidCertificate(f"{what} {name!r} appears twice")
        found[name] = value
    return found


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidCertificate(f"a {what} is not UTF-8") from e


def _time(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return _FOREVER
