"""``DevStack``: embedded Postgres + dev OpenBao + demo provisioning, owned together.

Layout under ``state_dir``::

    postgres/                       data directory (owned by the postgres system user as root)
    postgres.superuser-password     0600
    postgres.log                    0600
    openbao/bao.log                 0600

Synchronous by design (subprocesses and hvac); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from broker.stack import StackError
from broker.stack.demo import DemoInfo, provision_demo
from broker.stack.openbao import DevOpenBao
from broker.stack.postgres import EmbeddedPostgres

__all__ = ["DevStack"]


class DevStack:
    """Start Postgres and OpenBao, provision the demo; ``close()`` stops both.

    ``start()`` (or entering the context manager) leaves both servers running and
    provisioned; if any step fails it stops whatever already started and re-raises.
    ``close()`` is idempotent and always stops both. Ports are free ports chosen once.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        pg_port: int | None = None,
        bao_port: int | None = None,
    ) -> None:
        self._state_dir = state_dir.resolve()
        self.pg = EmbeddedPostgres(self._state_dir / "postgres", port=pg_port)
        self.bao = DevOpenBao(self._state_dir / "openbao", port=bao_port)
        self._demo: DemoInfo | None = None

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def demo(self) -> DemoInfo:
        """What ``provision_demo`` created. Raises ``StackError`` before ``start()``."""
        if self._demo is None:
            raise StackError("DevStack is not started")
        return self._demo

    def superuser_dsn(self, database: str = "postgres") -> str:
        """Postgres superuser DSN for ``database`` (e.g. ``"broker"`` for the ledger)."""
        return self.pg.dsn(database)

    def start(self) -> DevStack:
        """Start both servers and provision them; on failure stop both and re-raise."""
        self._state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.pg.start()
            self.bao.start()
            self._demo = provision_demo(self.bao.addr, self.bao.root_token, self.pg)
        except BaseException:
            self.close()
            raise
        return self

    def reprovision(self) -> DemoInfo:
        """Run ``provision_demo`` again (required after ``bao.restart()``: dev mode forgets)."""
        self._demo = provision_demo(self.bao.addr, self.bao.root_token, self.pg)
        return self._demo

    def close(self) -> None:
        """Stop OpenBao, then Postgres (OpenBao holds connections to it). Idempotent."""
        try:
            self.bao.stop()
        finally:
            self.pg.stop()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
