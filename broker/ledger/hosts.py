"""Connecting through a multi-host DSN the way libpq does: each host on its own deadline.

``postgresql://u:p@pg-a:5432,pg-b:5432/broker?target_session_attrs=read-write`` names a
primary and its standbys; a connection goes to the first host that answers and accepts
writes. libpq gives *each* host its own ``connect_timeout``. asyncpg spends one timeout on
the whole list, so a first host that never answers (a powered-off machine whose packets go
nowhere, a frozen server) uses it all, and the standby promoted in its place is never
tried: after such a failover every connection would fail.

``HostsInTurn`` is the ``connect`` of the broker's pool (and of ``connect_one``): it tries
the hosts one at a time, each with an equal share of the timeout (so the whole attempt
still ends within it, inside the ledger writer's commit timeout), and it tries the host
that answered last first, so after a failover only the first connection pays for the dead
host. A host that refuses, times out, is starting up or shutting down, or does not match
``target_session_attrs`` is skipped, as asyncpg itself skips; any other error (a wrong
password, a certificate that does not verify) ends the attempt at once. A DSN with one
host, or with its hosts in the ``host=`` query parameter, goes to asyncpg unchanged.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["HostsInTurn", "netloc_hosts"]

# What makes asyncpg (and libpq) go on to the next host.
_NEXT_HOST = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TargetServerAttributeNotMatched,
)


def netloc_hosts(netloc: str) -> list[str]:
    """The ``host[:port]`` items of a DSN's network location (user info removed), as
    written: ``[::1]:5432`` keeps its brackets."""
    return [item for item in netloc.rpartition("@")[2].split(",") if item]


class HostsInTurn:
    """``asyncpg.create_pool(connect=...)`` / ``connect_one``: one host at a time (module
    docstring). One per pool: it remembers which host answered last."""

    def __init__(self) -> None:
        self._last: str | None = None  # the host[:port] item that answered last

    async def __call__(
        self, dsn: str, *, timeout: float = 60.0, **kwargs: Any
    ) -> asyncpg.Connection:
        """Connect as ``asyncpg.connect(dsn, timeout=timeout, **kwargs)`` would, but each
        host of ``dsn`` on ``timeout / hosts``; raise the last host's error when none is
        usable."""
        parts = urlsplit(dsn)
        hosts = netloc_hosts(parts.netloc)
        if len(hosts) < 2:
            return await asyncpg.connect(dsn, timeout=timeout, **kwargs)
        if self._last in hosts:
            hosts.remove(self._last)
            hosts.insert(0, self._last)
        userinfo, at, _ = parts.netloc.rpartition("@")
        last: BaseException | None = None
        for host in hosts:
            one = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}"))
            try:
                conn = await asyncpg.connect(one, timeout=timeout / len(hosts), **kwargs)
            except _NEXT_HOST as e:
                last = e
                continue
            self._last = host
            return conn
        assert last is not None
        raise last
