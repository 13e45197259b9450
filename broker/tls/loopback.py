"""Which hosts count as "this machine" — the one place plaintext is allowed.

A listen address, a Vault or JWKS URL host, or a PostgreSQL DSN host is loopback when it is
``localhost``, an address in 127.0.0.0/8 or ``::1`` (brackets allowed), or a unix-socket
path (``/...``, PostgreSQL only). ``0.0.0.0``, ``::``, the empty string and every other
name are not: they reach, or may reach, other machines.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """Whether connections to (or listening on) ``host`` stay on this machine."""
    if not host:
        return False
    host = host.strip("[]")
    if host.startswith("/") or host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
