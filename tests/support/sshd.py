"""A real OpenSSH server for the SSH certificate tests: Debian's ``/usr/sbin/sshd``.

``SSHServer`` runs ``sshd -D -e -f <config>`` from a private ``mkdtemp`` directory (not
``tmp_path``: see ``stack_state_dir`` in tests/conftest.py) on a free 127.0.0.1 port. It
trusts the caller's CA (``TrustedUserCAKeys``), maps certificate principals to local users
(``AuthorizedPrincipalsFile <dir>/principals/%u``), takes no plain keys
(``AuthorizedKeysFile none``) and no passwords, and logs at ``VERBOSE`` to ``sshd.log``.

What this sshd (OpenSSH 9.2, Debian 12) was seen to do, and the tests rely on:

- Each authentication re-reads ``RevokedKeys``: ``install_krl`` takes effect at the next
  login, no restart or signal. The file is replaced atomically, because while it is
  missing or unparseable sshd refuses *every* key ("Error checking authentication key ...
  in revoked keys file"). An empty KRL (header only) and an empty file both revoke
  nothing; the server starts with ``ssh-keygen -k``'s empty KRL.
- A login logs ``Accepted publickey for <user> from 127.0.0.1 port <p> ssh2:
  <TYPE>-CERT SHA256:<key fp> ID <key id> (serial <n>) CA <TYPE> SHA256:<ca fp>``
  (``accepted_logins`` parses it); a revoked certificate ``Authentication key <TYPE>-CERT
  SHA256:<fp> revoked by file <krl>``; an expired one ``Certificate invalid: expired``.

Stopping sends SIGTERM to sshd's process group (it runs in a session of its own, so the
per-connection children are in it) and SIGKILL after ``_STOP_TIMEOUT``. Without sshd the
tests skip, and fail under ``CI`` (``make test`` installs openssh-server as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.commands import CommandRun, subprocess_env
from tests.support.paths import debian_binary

__all__ = [
    "SSH",
    "SSHD",
    "SSH_KEYGEN",
    "AcceptedLogin",
    "SSHServer",
    "generate_key",
    "openssh_bin",
    "sign_user_key",
]

SSHD = Path("/usr/sbin/sshd")
SSH = Path("/usr/bin/ssh")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
HOST = "127.0.0.1"
# sshd's privilege separation directory (Debian's service creates it at start; we don't
# run the service). Must exist, owned by root and not writable by others.
_PRIVSEP_DIR = Path("/run/sshd")
_START_TIMEOUT = 30.0  # two shared cores
_STOP_TIMEOUT = 10.0
_SSH_TIMEOUT = 30.0
_PORT_ATTEMPTS = 3  # the port chosen by binding 0 can be taken before sshd binds it
_ACCEPTED = re.compile(
    r"^Accepted publickey for (?P<user>\S+) from \S+ port \d+ ssh2: "
    r"(?P<key_type>\S+)-CERT (?P<key_fingerprint>\S+) ID (?P<key_id>.*) "
    r"\(serial (?P<serial>\d+)\) CA \S+ (?P<ca_fingerprint>\S+)$",
    re.MULTILINE,
)


def openssh_bin(path: Path) -> Path:
    """``path`` if it is installed; skips (fails under ``CI``) otherwise."""
    return debian_binary(path, "openssh-server")


def generate_key(directory: Path, name: str, key_type: str = "ed25519", bits: int = 0) -> Path:
    """A new unencrypted key pair ``directory/name`` (+ ``.pub``); returns the private key."""
    path = directory / name
    args = [str(openssh_bin(SSH_KEYGEN)), "-q", "-t", key_type, "-N", "", "-C", name]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run([*args, "-f", str(path)], check=True, capture_output=True)
    return path


def sign_user_key(
    ca: Path,
    public_key: Path,
    *,
    key_id: str,
    principals: Sequence[str],
    validity: str = "+5m",
    serial: int | None = None,
    options: Sequence[str] = (),
) -> Path:
    """``ssh-keygen -s ca`` a user certificate for ``public_key`` (``<name>-cert.pub``,
    next to it, replaced if present); ``options`` are ``-O`` values."""
    args = [str(openssh_bin(SSH_KEYGEN)), "-q", "-s", str(ca), "-I", key_id]
    args += ["-n", ",".join(principals), "-V", validity]
    if serial is not None:
        args += ["-z", str(serial)]
    for option in options:
        args += ["-O", option]
    subprocess.run([*args, str(public_key)], check=True, capture_output=True)
    return public_key.with_name(public_key.name.removesuffix(".pub") + "-cert.pub")


@dataclass(frozen=True)
class AcceptedLogin:
    """One ``Accepted publickey`` line of sshd's log for a certificate login."""

    user: str
    key_type: str
    key_fingerprint: str
    key_id: str
    serial: int
    ca_fingerprint: str


class SSHServer:
    """One sshd trusting ``ca_public_key`` (an OpenSSH public key line, or several).

    ``principals`` maps each local user to the certificate principals that may log in as
    it, e.g. ``{getpass.getuser(): ["deploy"]}``. Use as ``async with SSHServer(...) as
    sshd:``; the temporary directory (config, host key, log) is removed on exit.
    """

    def __init__(self, *, ca_public_key: str, principals: Mapping[str, Iterable[str]]) -> None:
        self.ca_public_key = ca_public_key
        self.principals = {user: list(names) for user, names in principals.items()}
        self.host = HOST
        self.port = 0
        self.dir = Path("/nonexistent/sshd-not-started")  # a private mkdtemp once started
        self._owned_dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None

    # --- files --------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def krl_path(self) -> Path:
        return self.dir / "revoked.krl"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file naming this server's host key at its port."""
        return self.dir / "known_hosts"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        """Everything sshd has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def install_krl(self, data: bytes) -> None:
        """Make ``data`` the ``RevokedKeys`` file, atomically; the next login reads it."""
        staging = self.krl_path.with_name(self.krl_path.name + ".new")
        staging.write_bytes(data)
        os.replace(staging, self.krl_path)

    def set_principals(self, user: str, principals: Iterable[str]) -> None:
        """Which certificate principals may log in as ``user`` (read at each login)."""
        self.principals[user] = list(principals)
        self._write_principals()

    def accepted_logins(self) -> list[AcceptedLogin]:
        """The certificate logins sshd accepted so far, in order."""
        return [
            AcceptedLogin(
                user=m["user"],
                key_type=m["key_type"],
                key_fingerprint=m["key_fingerprint"],
                key_id=m["key_id"],
                serial=int(m["serial"]),
                ca_fingerprint=m["ca_fingerprint"],
            )
            for m in _ACCEPTED.finditer(self.log_text())
        ]

    async def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it contains ``text``; AssertionError with its tail otherwise."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"sshd never logged {text!r}:\n{log[-3000:]}")
            await asyncio.sleep(0.05)
        return log

    # --- the client ---------------------------------------------------------------------

    def ssh_args(self, identity: Path, certificate: Path, user: str | None = None) -> list[str]:
        """``ssh`` and its options to log in here with ``identity`` and ``certificate``:
        no config files, no agent, no prompts, this server's host key only."""
        return [
            str(openssh_bin(SSH)),
            "-F",
            "/dev/null",
            "-i",
            str(identity),
            "-o",
            f"CertificateFile={certificate}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-p",
            str(self.port),
            f"{user or getpass.getuser()}@{self.host}",
        ]

    async def run_ssh(
        self,
        identity: Path,
        certificate: Path,
        *command: str,
        user: str | None = None,
        timeout: float = _SSH_TIMEOUT,
    ) -> CommandRun:
        """Log in and run ``command``; the exit code is 255 when the login is refused."""
        proc = await asyncio.create_subprocess_exec(
            *self.ssh_args(identity, certificate, user),
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=subprocess_env(),
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"ssh did not finish in {timeout}s") from None
        assert proc.returncode is not None
        return CommandRun(proc.returncode, stdout.decode(), stderr.decode())

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> SSHServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        finally:
            self._remove_dir()

    def _remove_dir(self) -> None:
        owned, self._owned_dir = self._owned_dir, None
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)

    async def start(self) -> None:
        """Write the files and start sshd; returns once it listens (AssertionError if not)."""
        sshd = openssh_bin(SSHD)
        self.dir = self._owned_dir = Path(tempfile.mkdtemp(prefix="jitbroker-sshd-"))
        try:
            await self._prepare()
            for _ in range(_PORT_ATTEMPTS):
                self.port = _free_port()
                if await self._launch(sshd):
                    break
            else:
                raise AssertionError(f"sshd found no free port:\n{self.log_text()[-3000:]}")
            host_key = (self.dir / "host_ed25519_key.pub").read_text().split()
            self.known_hosts.write_text(f"[{HOST}]:{self.port} {host_key[0]} {host_key[1]}\n")
        except BaseException:
            await self.stop()
            self._remove_dir()
            raise

    async def stop(self) -> int | None:
        """Stop sshd and whatever it forked; its exit code (None if it never started)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            code = await proc.wait()
        # Children still in its group (a connection in progress) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        return code

    async def _prepare(self) -> None:
        _ensure_privsep_dir()
        keygen = str(openssh_bin(SSH_KEYGEN))
        host_key = self.dir / "host_ed25519_key"
        await _run(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "sshd-host", "-f", host_key)
        await _run(keygen, "-q", "-k", "-f", self.krl_path)  # an empty KRL
        (self.dir / "trusted_user_ca_keys").write_text(self.ca_public_key.strip() + "\n")
        self._write_principals()

    def _config(self) -> str:
        lines = [
            f"ListenAddress {HOST}",
            f"Port {self.port}",
            f"HostKey {self.dir / 'host_ed25519_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile none",
            f"TrustedUserCAKeys {self.dir / 'trusted_user_ca_keys'}",
            f"AuthorizedPrincipalsFile {self.dir / 'principals'}/%u",
            f"RevokedKeys {self.krl_path}",
            "PermitRootLogin prohibit-password",  # root logs in with certificates only
            "LogLevel VERBOSE",  # the "Accepted ... ID <key id> (serial <n>)" lines
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
        ]
        return "\n".join(lines) + "\n"

    def _write_principals(self) -> None:
        directory = self.dir / "principals"
        directory.mkdir(exist_ok=True)
        for user, names in self.principals.items():
            (directory / user).write_text("".join(f"{name}\n" for name in names))

    async def _launch(self, sshd: Path) -> bool:
        """Start sshd on ``self.port``; False if the port was taken meanwhile."""
        self.config_path.write_text(self._config())
        log_start = len(self.log_text())  # earlier attempts' lines are not this one's
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                str(sshd),
                "-D",
                "-e",
                "-f",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        listening = f"Server listening on {HOST} port {self.port}."
        deadline = time.monotonic() + _START_TIMEOUT
        while listening not in (text := self.log_text()[log_start:]):
            if self._proc.returncode is not None:
                self._proc = None
                if "Address already in use" in text:
                    return False
                raise AssertionError(f"sshd exited at start:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                await self.stop()
                raise AssertionError(f"sshd did not listen in {_START_TIMEOUT}s:\n{text[-3000:]}")
            await asyncio.sleep(0.05)
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_privsep_dir() -> None:
    """sshd run as root exits at start without its privilege separation directory."""
    if os.geteuid() == 0 and not _PRIVSEP_DIR.is_dir():
        _PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _run(*args: str | Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}): {output.decode()}")
