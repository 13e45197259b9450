"""The real-sshd harness (tests/support/sshd.py), and what sshd enforces about certificates.

No broker: a CA made by ``ssh-keygen``, certificates signed by it, Debian's sshd trusting
it, the system ``ssh`` logging in as the current user through the principal ``deploy``.
Shows that the harness works (login, log line with the key id, clean stop) and that sshd
enforces what the broker relies on: expiry, and revocation by a KRL from ``build_krl``.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from broker.ssh import build_krl, parse_certificate, parse_public_key
from tests.support.sshd import SSHServer, generate_key, sign_user_key

USER = getpass.getuser()


@dataclass(frozen=True)
class Identity:
    """A user key pair (``key``, ``key.pub``) in its own directory."""

    key: Path

    @property
    def pub(self) -> Path:
        return self.key.with_name(self.key.name + ".pub")

    def sign(self, ca: Path, *, key_id: str, **kwargs: Any) -> Path:
        """A certificate for this key (principal ``deploy`` unless told otherwise); it
        replaces the previous one (``<key>-cert.pub``)."""
        kwargs.setdefault("principals", ["deploy"])
        return sign_user_key(ca, self.pub, key_id=key_id, **kwargs)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return generate_key(tmp_path, "ca")


@pytest.fixture
def identities(tmp_path: Path) -> dict[str, Identity]:
    """Three users' keys, each in a directory of its own so each has one certificate."""
    made = {}
    for name in ("alice", "bob", "carol"):
        directory = tmp_path / name
        directory.mkdir()
        made[name] = Identity(generate_key(directory, "id_ed25519"))
    return made


def _gone(server: SSHServer, pid: int) -> None:
    """Nothing this server started is left: its pid, and anything reading its config."""
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    config = str(server.config_path)
    for proc in psutil.process_iter(["cmdline"]):
        assert config not in (proc.info["cmdline"] or []), f"left running: {proc}"
    assert not server.dir.exists()


async def test_certificate_login_runs_the_command_and_sshd_logs_the_key_id(
    ca: Path, identities: dict[str, Identity]
) -> None:
    alice = identities["alice"]
    cert = alice.sign(ca, key_id="alice@example.com grant-0042", serial=42)
    stranger = identities["bob"].sign(ca, key_id="bob", principals=["not-deploy"], serial=43)

    async with SSHServer(
        ca_public_key=ca.with_suffix(".pub").read_text(), principals={USER: ["deploy"]}
    ) as sshd:
        run = await sshd.run_ssh(alice.key, cert, "echo", "hi")
        assert (run.returncode, run.stdout) == (0, "hi\n"), run.stderr + sshd.log_text()[-2000:]

        [login] = sshd.accepted_logins()
        assert login.user == USER
        assert login.key_id == "alice@example.com grant-0042"
        assert login.serial == 42
        assert login.key_type == "ED25519"
        assert login.key_fingerprint == parse_public_key(alice.pub.read_text()).fingerprint
        assert login.ca_fingerprint == parse_certificate(cert.read_text()).ca_fingerprint
        assert (
            f"Accepted publickey for {USER} from 127.0.0.1 port" in sshd.log_text()
            and "ID alice@example.com grant-0042 (serial 42) CA ED25519 SHA256:" in sshd.log_text()
        )

        # Control: a certificate without a principal mapped to the user gets nowhere.
        refused = await sshd.run_ssh(identities["bob"].key, stranger, "echo", "hi")
        assert refused.returncode == 255 and refused.stdout == ""
        assert "Permission denied" in refused.stderr
        await sshd.wait_for_log("Certificate does not contain an authorized principal")
        assert len(sshd.accepted_logins()) == 1
        pid = sshd.pid
        assert pid is not None
    _gone(sshd, pid)


async def test_an_expired_certificate_is_refused(ca: Path, identities: dict[str, Identity]) -> None:
    alice = identities["alice"]
    cert = alice.sign(ca, key_id="short-lived", validity="+2s", serial=7)
    valid_before = parse_certificate(cert.read_text()).valid_before
    async with SSHServer(
        ca_public_key=ca.with_suffix(".pub").read_text(), principals={USER: ["deploy"]}
    ) as sshd:
        wait = (valid_before - datetime.now(UTC)).total_seconds() + 1.1
        await asyncio.sleep(max(wait, 0))
        run = await sshd.run_ssh(alice.key, cert, "echo", "hi")
        assert run.returncode == 255 and run.stdout == ""
        await sshd.wait_for_log("Certificate invalid: expired")
        assert "ID short-lived (serial 7)" in sshd.log_text()  # the Failed publickey line
        assert sshd.accepted_logins() == []

        # The same key with a fresh certificate still logs in: the expiry was the reason.
        fresh = alice.sign(ca, key_id="fresh", serial=8)
        run = await sshd.run_ssh(alice.key, fresh, "echo", "hi")
        assert (run.returncode, run.stdout) == (0, "hi\n"), run.stderr
        pid = sshd.pid
        assert pid is not None
    _gone(sshd, pid)


async def test_a_krl_from_build_krl_is_enforced_by_sshd_at_the_next_login(
    ca: Path, identities: dict[str, Identity]
) -> None:
    ca_public_key = ca.with_suffix(".pub").read_text()
    alice, bob, carol = identities["alice"], identities["bob"], identities["carol"]
    certs = {
        "alice": alice.sign(ca, key_id="alice grant-1", serial=42),
        "bob": bob.sign(ca, key_id="bob grant-2", serial=43),
        "carol": carol.sign(ca, key_id="carol grant-3", serial=44),
    }
    keys = {"alice": alice.key, "bob": bob.key, "carol": carol.key}

    async def logs_in(name: str) -> bool:
        run = await sshd.run_ssh(keys[name], certs[name], "echo", "hi")
        assert run.returncode in (0, 255), run.stderr
        return run.returncode == 0 and run.stdout == "hi\n"

    async with SSHServer(ca_public_key=ca_public_key, principals={USER: ["deploy"]}) as sshd:
        # The server starts with an empty KRL (ssh-keygen's): everyone gets in.
        assert [await logs_in(n) for n in ("alice", "bob", "carol")] == [True, True, True]

        # Serial 42 revoked by serial, bob by key id; no restart, no signal.
        sshd.install_krl(
            build_krl(
                ca_public_key,
                serials=[42],
                key_ids=["bob grant-2"],
                version=1,
                generated_at=datetime.now(UTC),
            )
        )
        assert [await logs_in(n) for n in ("alice", "bob", "carol")] == [False, False, True]
        log = sshd.log_text()
        assert log.count(f"revoked by file {sshd.krl_path}") >= 2
        alice_fp = parse_public_key(alice.pub.read_text()).fingerprint
        assert f"Authentication key ED25519-CERT {alice_fp} revoked by file" in log

        # An unreadable RevokedKeys file locks everyone out (why hosts must never get a
        # half-written one); an empty file is read as an empty key list.
        sshd.install_krl(b"SSHKRL\n\0 truncated")
        assert not await logs_in("carol")
        await sshd.wait_for_log(f"in revoked keys file {sshd.krl_path}: invalid format")
        sshd.install_krl(b"")
        assert await logs_in("carol")

        # Our empty KRL revokes nothing: alice is back at once.
        sshd.install_krl(
            build_krl(ca_public_key, serials=[], version=2, generated_at=datetime.now(UTC))
        )
        assert await logs_in("alice")
        assert [login.serial for login in sshd.accepted_logins()] == [42, 43, 44, 44, 44, 42]
        pid = sshd.pid
        assert pid is not None
    _gone(sshd, pid)


async def test_stop_is_idempotent_and_removes_everything(ca: Path) -> None:
    server = SSHServer(ca_public_key=ca.with_suffix(".pub").read_text(), principals={})
    async with server:
        pid = server.pid
        assert pid is not None and psutil.pid_exists(pid)
        assert os.getpgid(pid) == pid  # its own process group, which stop() signals
        assert await server.stop() is not None
        assert await server.stop() is None
    _gone(server, pid)
