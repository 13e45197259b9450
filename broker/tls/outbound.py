"""Client TLS for every outbound hop: Vault/OpenBao, the ledger's PostgreSQL, JWKS.

Invariants:

- ``client_context`` is the only place a client ``ssl.SSLContext`` is built. Every context
  it returns verifies the peer (``CERT_REQUIRED``), checks the host name (unless the caller
  asks for ``check_hostname=False``, which ``ledger_ssl`` allows only for ``verify-ca`` on
  loopback) and speaks TLS 1.2 or newer. There is no option that turns verification off.
- Trust anchors are the CA file and/or directory given; with neither, the system's
  default trust store.
- A peer certificate that does not verify becomes a one-line message naming the peer and
  OpenSSL's reason (``describe_tls_failure``); callers raise it as their own
  ``BrokerError`` subclass, never a library exception.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from broker.errors import TLSConfigError

__all__ = [
    "ClientTLS",
    "client_context",
    "describe_tls_failure",
]


@dataclass(frozen=True)
class ClientTLS:
    """A verifying client context and the name to verify (and send as SNI), if it is not
    the host in the URL (``VAULT_TLS_SERVER_NAME``)."""

    context: ssl.SSLContext
    server_hostname: str | None = None


def client_context(
    *,
    cafile: Path | None = None,
    capath: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    check_hostname: bool = True,
    what: str = "TLS",
) -> ssl.SSLContext:
    """A client context: peer verification on, TLS 1.2+, the given trust anchors (system
    defaults when neither ``cafile`` nor ``capath``), and a client certificate when
    ``certfile``/``keyfile`` are given (both or neither).

    ``what`` names the hop in error messages. Raises ``TLSConfigError`` when a file or
    directory is missing, unreadable or not PEM, or the key does not match the certificate.
    """
    if (certfile is None) != (keyfile is None):
        raise TLSConfigError(
            f"{what}: a client certificate needs its key, and a key its certificate"
        )
    for label, path in (
        ("CA file", cafile),
        ("client certificate", certfile),
        ("client key", keyfile),
    ):
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise TLSConfigError(f"{what}: {label} {path} is not a readable file")
    if capath is not None and not (capath.is_dir() and os.access(capath, os.R_OK | os.X_OK)):
        raise TLSConfigError(f"{what}: CA directory {capath} is not a readable directory")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cafile is not None or capath is not None:
        # Only the configured anchors: a private CA must not be widened to the system store.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(
                cafile=str(cafile) if cafile else None, capath=str(capath) if capath else None
            )
        except ssl.SSLError as e:
            raise TLSConfigError(f"{what}: cannot load the CA bundle: {_reason(e)}") from e
        if cafile is not None and not context.get_ca_certs() and capath is None:
            raise TLSConfigError(f"{what}: CA file {cafile} holds no certificate")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = check_hostname
    if certfile is not None and keyfile is not None:
        try:
            context.load_cert_chain(str(certfile), str(keyfile))
        except ssl.SSLError as e:
            raise TLSConfigError(
                f"{what}: cannot use client certificate {certfile} with key {keyfile}: {_reason(e)}"
            ) from e
    return context


def describe_tls_failure(error: BaseException) -> str | None:
    """OpenSSL's reason when ``error`` (or an exception it wraps) is a failed TLS handshake,
    e.g. ``"certificate verify failed: unable to get local issuer certificate"``; else None.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # aiohttp's connector errors subclass the ssl errors but keep the real one as an
        # attribute (not as the cause): look at that first.
        wrapped = getattr(current, "certificate_error", None) or getattr(current, "os_error", None)
        if isinstance(wrapped, BaseException) and id(wrapped) not in seen:
            current = wrapped
            continue
        if isinstance(current, ssl.SSLCertVerificationError):
            detail = getattr(current, "verify_message", None) or _reason(current)
            return f"certificate verify failed: {detail}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {_reason(current)}"
        current = current.__cause__ or current.__context__
    return None


def _reason(error: ssl.SSLError) -> str:
    return str(error.reason or error.strerror or error).lower().replace("_", " ")
