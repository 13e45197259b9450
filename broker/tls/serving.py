"""Serving TLS: one server ``SSLContext`` for every listener, reloaded when its files change.

Rules this module keeps:

- Plaintext is a decision. ``plaintext_refusal`` is the pure rule ``broker serve`` applies
  before anything binds: without a certificate, only a loopback host may listen, unless
  ``tls_disable`` is set.
- The context is built once (TLS 1.2 minimum, the standard library's server defaults) and
  shared by every listener. A rotation calls ``load_cert_chain`` on that *same* context, so
  new handshakes get the new certificate and open connections are never dropped.
- A reload never leaves the live context half-changed. The files are read once into a
  private snapshot, the pair is checked on a scratch context first, and only a pair that
  loads there is loaded into the live one (OpenSSL drops the live key when it is handed a
  certificate whose key does not match). A half-written or mismatched pair is logged, the
  old certificate keeps serving, and the next tick tries again.
- With a client CA (mTLS), every handshake must present a certificate that CA signed. The
  identity still comes from the JWT; the certificate only admits the connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from broker.errors import TLSConfigError
from broker.tls.loopback import is_loopback

__all__ = [
    "ServingCertificate",
    "ServingTLS",
    "plaintext_refusal",
]

_log = logging.getLogger(__name__)

_MAX_PEM_BYTES = 1024 * 1024  # a chain plus key is a few KiB; refuse anything absurd


def plaintext_refusal(host: str, *, tls: bool, tls_disable: bool) -> str | None:
    """The one-line reason not to listen on ``host``, or None when listening is allowed.

    Allowed: TLS; or plaintext on loopback; or plaintext anywhere with ``tls_disable``.
    """
    if tls or tls_disable or is_loopback(host):
        return None
    return (
        f"refusing to serve plaintext HTTP on non-loopback host {host!r}: set tls_cert_file"
        " and tls_key_file (BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE), or tls_disable"
        " (BROKER_TLS_DISABLE=true) to accept plaintext"
    )


@dataclass(frozen=True)
class ServingCertificate:
    """What the listeners currently present: the leaf's serial and validity end."""

    serial: int
    not_after: float  # Unix seconds
    subject: str


# outcome ("ok", "error"), the certificate now served
ReloadHook = Callable[[str, ServingCertificate], None]


class ServingTLS:
    """The server ``SSLContext`` of every listener and the watcher of its files.

    ``load()`` (at start-up) raises ``TLSConfigError``; ``reload_if_changed()`` (periodic)
    never raises: a bad pair is logged, counted as ``"error"`` and the old one kept.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        client_ca_file: Path | None = None,
        on_reload: ReloadHook | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.on_reload = on_reload
        self.context = _server_context(client_ca_file)
        self._stamp: tuple[object, ...] | None = None  # file stats last looked at
        self._digest: bytes | None = None  # contents last loaded
        self._current: ServingCertificate | None = None
        self._failing = False

    @property
    def current(self) -> ServingCertificate:
        if self._current is None:
            raise RuntimeError("ServingTLS.load() has not run")
        return self._current

    def load(self) -> ServingCertificate:
        """Load the pair into the context; raises ``TLSConfigError`` naming the problem."""
        self._stamp = self._stat()
        cert, key = _read(self.cert_file), _read(self.key_file)
        self._install(cert, key)
        return self.current

    def reload_if_changed(self) -> str | None:
        """Reload when the files changed since the last look: ``"ok"``, ``"error"``, or None
        (nothing changed; a touched file with the same contents is not a reload)."""
        stamp = self._stat()
        if stamp == self._stamp and not self._failing:
            return None
        self._stamp = stamp
        try:
            cert, key = _read(self.cert_file), _read(self.key_file)
            if _digest(cert, key) == self._digest:
                self._failing = False
                return None
            self._install(cert, key)
        except TLSConfigError as e:
            if not self._failing:
                _log.error("TLS certificate not reloaded, still serving the old one: %s", e)
            self._failing = True
            self._report("error")
            return "error"
        self._failing = False
        _log.info(
            "TLS certificate reloaded: serial %x, valid until %s",
            self.current.serial,
            _iso(self.current.not_after),
            extra={"serial": f"{self.current.serial:x}"},
        )
        self._report("ok")
        return "ok"

    def _report(self, outcome: str) -> None:
        if self.on_reload is not None and self._current is not None:
            self.on_reload(outcome, self._current)

    def _stat(self) -> tuple[object, ...]:
        out: list[object] = []
        for path in (self.cert_file, self.key_file):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError as e:
                out.append(e.errno)
        return tuple(out)

    def _install(self, cert: bytes, key: bytes) -> None:
        leaf = _leaf(cert, self.cert_file)
        # One private snapshot of the bytes read: checked on a scratch context, then loaded
        # into the live one, so a file changing in between cannot reach the live context.
        with tempfile.TemporaryDirectory(prefix="broker-tls-") as tmp:
            cert_copy, key_copy = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_copy.write_bytes(cert)
            fd = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                scratch.load_cert_chain(cert_copy, key_copy, password=_no_password)
            except (ssl.SSLError, OSError, TLSConfigError) as e:
                raise TLSConfigError(
                    f"{self.cert_file} with {self.key_file}: not a usable certificate and"
                    f" key pair ({_reason(e)})"
                ) from e
            self.context.load_cert_chain(cert_copy, key_copy, password=_no_password)
        self._digest = _digest(cert, key)
        self._current = leaf


def _server_context(client_ca_file: Path | None) -> ssl.SSLContext:
    # Purpose.CLIENT_AUTH: a server context with the stdlib's modern ciphers and options;
    # it loads no CA of its own, so only client_ca_file can admit a client certificate.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca_file))
        except (ssl.SSLError, OSError) as e:
            raise TLSConfigError(f"{client_ca_file}: not a usable CA bundle ({_reason(e)})") from e
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as e:
        raise TLSConfigError(f"{path}: {e.strerror or e}") from e
    if len(data) > _MAX_PEM_BYTES:
        raise TLSConfigError(f"{path}: larger than {_MAX_PEM_BYTES} bytes")
    return data


def _leaf(cert: bytes, path: Path) -> ServingCertificate:
    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
    except ValueError as e:
        raise TLSConfigError(f"{path}: no PEM certificate ({e})") from e
    return ServingCertificate(
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc.timestamp(),
        subject=leaf.subject.rfc4514_string(),
    )


def _digest(cert: bytes, key: bytes) -> bytes:
    return hashlib.sha256(cert + b"\0" + key).digest()


def _no_password() -> bytes:
    # An encrypted key fails to load instead of OpenSSL prompting on a terminal.
    raise TLSConfigError("encrypted private keys are not supported")


def _reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    return str(e)


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
