"""SSH certificates: the pure parts (no I/O).

User public keys in (``keys``), signed certificates read back (``certs``), and the key
revocation list sshd enforces (``krl``). Talking to OpenBao's SSH engine is ``vault``'s job.
"""

from .certs import CertificateInfo, InvalidCertificate, parse_certificate
from .keys import PublicKey, parse_public_key
from .krl import build_krl

__all__ = [
    "CertificateInfo",
    "InvalidCertificate",
    "PublicKey",
    "build_krl",
    "parse_certificate",
    "parse_public_key",
]
