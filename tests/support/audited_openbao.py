"""An OpenBao of our own, started with a file audit device (the shared one cannot have one)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["AuditedOpenBao"]


class AuditedOpenBao:
    """A dev OpenBao of our own with a file audit device declared in its config.

    OpenBao refuses ``sys/audit`` over the API (declarative devices only), so the shared
    server cannot get one; this one is started with ``-config`` holding the ``audit``
    stanza. The audit log stays HMAC'd (the default); ``stop()`` ends the server and the
    caller removes ``state_dir``.
    """

    device = "ledgercheck"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root_token = f"root-{os.urandom(8).hex()}"
        self.audit_log = state_dir / "audit.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.addr = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "audit.hcl"
        config.write_text(
            f'audit "file" "{self.device}" {{\n'
            f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n'
        )
        log = (self.state_dir / "bao.log").open("wb")
        self._proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "bao"),
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-config={config}",
            ],
            env={"PATH": os.defpath, "HOME": str(self.state_dir),
                 "BAO_DEV_ROOT_TOKEN_ID": self.root_token},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError((self.state_dir / "bao.log").read_text()[-2000:])
            # 200 only once initialised, unsealed and active.
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as r,  # noqa: S310
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("audited OpenBao did not start")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
