"""TLS to the ledger's PostgreSQL: which ``sslmode`` a DSN may use, and its SSL context.

The rule (``database_tls``), for the hosts a DSN names:

================  =============================  ==========================================
``sslmode``       loopback (127/8, ::1,          any other host
                  localhost, a unix socket)
================  =============================  ==========================================
``verify-full``   verified, host name checked    verified, host name checked
``verify-ca``     verified, no host name check   refused at start-up (names the host)
anything else     left to asyncpg (as libpq)     refused at start-up (names the host)
================  =============================  ==========================================

``sslrootcert`` in the DSN, else ``BROKER_DATABASE_SSLROOTCERT``, is the CA bundle; with
neither, the system trust store. Setting ``BROKER_DATABASE_SSLROOTCERT`` without an
``sslmode`` in the DSN means ``verify-full``. ``sslcert``/``sslkey`` in the DSN give a
client certificate. The broker builds the context itself (``broker.tls.outbound``), so
asyncpg's own fallbacks (``PGSSLMODE``, ``~/.postgresql``) never weaken it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from broker.errors import LedgerUnavailable, TLSConfigError
from broker.tls.loopback import is_loopback
from broker.tls.outbound import (
    client_context,
    describe_tls_failure,
)

from .hosts import netloc_hosts

__all__ = ["DatabaseTLS", "database_tls", "tls_failure"]

_VERIFYING = ("verify-full", "verify-ca")
_TLS_PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey"})


@dataclass(frozen=True)
class DatabaseTLS:
    """What to hand asyncpg: the DSN (TLS parameters removed when the broker verifies)
    and the SSL context (None: asyncpg applies the DSN's ``sslmode`` itself, loopback only).
    ``where`` names the server(s) for error messages."""

    dsn: str
    ssl: ssl.SSLContext | None
    where: str


def database_tls(dsn: str, sslrootcert: Path | None = None) -> DatabaseTLS:
    """Apply the module's rule to ``dsn``. Raises ``TLSConfigError`` for a mode that does
    not verify a non-loopback server, or an unusable CA/client file."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)  # the last value wins, as in libpq
    hosts = _hosts(parts.netloc, params.get("host"))
    where = "PostgreSQL at " + ",".join(
        f"{h}:{p}" if p else h for h, p in hosts or [("the local socket", "")]
    )
    rootcert = Path(params["sslrootcert"]) if params.get("sslrootcert") else sslrootcert
    mode = params.get("sslmode") or ("verify-full" if rootcert is not None else None)
    loopback = all(is_loopback(h) for h, _ in hosts)
    if mode not in _VERIFYING or (mode == "verify-ca" and not loopback):
        if not loopback:
            raise TLSConfigError(
                f"{where}: sslmode={mode or 'prefer'} does not verify the server; use"
                " sslmode=verify-full with sslrootcert (or BROKER_DATABASE_SSLROOTCERT)"
            )
        return DatabaseTLS(dsn, None, where)
    certfile, keyfile = params.get("sslcert"), params.get("sslkey")
    context = client_context(
        cafile=rootcert,
        certfile=Path(certfile) if certfile else None,
        keyfile=Path(keyfile) if keyfile else None,
        check_hostname=mode == "verify-full",
        what=where,
    )
    kept = [(k, v) for k, v in query if k not in _TLS_PARAMS]
    return DatabaseTLS(urlunsplit(parts._replace(query=urlencode(kept))), context, where)


def tls_failure(where: str, error: BaseException) -> LedgerUnavailable | None:
    """``LedgerUnavailable`` (code ``ledger_tls``) naming ``where`` and OpenSSL's reason if
    ``error`` is a failed TLS handshake (certificate not verified, host name mismatch)."""
    reason = describe_tls_failure(error)
    return None if reason is None else LedgerUnavailable(f"{where}: {reason}", code="ledger_tls")


def _hosts(netloc: str, host_param: str | None) -> list[tuple[str, str]]:
    """(host, port or "") of every server the DSN names; [] for the default (local)."""
    if host_param:
        return [(h, "") for h in host_param.split(",") if h]
    found = []
    for item in netloc_hosts(netloc):
        if item.startswith("[") and "]" in item:  # [::1]:5432
            host, _, rest = item[1:].partition("]")
            found.append((host, rest.lstrip(":")))
        else:
            host, _, port = item.partition(":")
            found.append((host, port))
    return found
