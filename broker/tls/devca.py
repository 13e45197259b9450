"""A local certificate authority for ``broker dev --tls`` and the tests: real X.509, no
shortcuts, never for production (the key sits next to the certificate, unencrypted).

``DevCA.create(dir)`` writes ``ca.pem``/``ca-key.pem`` (mode 0600 for keys);
``issue(name, hosts)`` writes ``<name>.pem`` (leaf, then the CA: a chain) and
``<name>-key.pem`` for a server (SANs: DNS names and IP addresses) or, with
``client=True``, a client certificate. ECDSA P-256, SHA-256, as browsers and OpenSSL
accept by default.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCA", "IssuedCert"]

_CA_DAYS = 365
_LEAF_DAYS = 30


@dataclass(frozen=True)
class IssuedCert:
    cert_path: Path  # leaf then CA (PEM chain)
    key_path: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jit-broker dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


class DevCA:
    """A CA whose key and certificate live in ``directory``."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.directory = directory
        self._key = key
        self._cert = cert

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def load_or_create(cls, directory: Path, *, common_name: str = "jit-broker dev CA") -> DevCA:
        """The CA in ``directory``, created (once) if it is not there."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            return cls(directory, key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(key_path, key)
        cert_path.write_bytes(_pem(cert))
        return cls(directory, key, cert)

    def issue(
        self,
        name: str,
        hosts: list[str],
        *,
        client: bool = False,
        days: int = _LEAF_DAYS,
        directory: Path | None = None,
    ) -> IssuedCert:
        """A new leaf certificate for ``hosts`` (first one is the CN), signed by this CA.

        Written as ``<name>.pem`` (leaf + CA chain) and ``<name>-key.pem`` in ``directory``
        (default: the CA's); an existing pair of that name is replaced (rotation).
        """
        if not hosts:
            raise ValueError("a certificate names at least one host (or client name)")
        out = directory or self.directory
        out.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if not client:
            builder = builder.add_extension(_san(hosts), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
        # Key first, then the chain: a reader polling the chain's mtime finds a matching key.
        _write_key(key_path, key)
        tmp = cert_path.with_suffix(".pem.tmp")
        tmp.write_bytes(_pem(cert) + _pem(self._cert))
        tmp.replace(cert_path)
        return IssuedCert(cert_path, key_path)
