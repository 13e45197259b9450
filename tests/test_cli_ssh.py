"""``broker ssh`` as a real subprocess against the session broker (real OpenBao SSH CA).

The ssh it runs is ``--ssh`` pointing at a small script (``FakeSsh``) that records its
argv, the modes of the key and certificate files and what ``ssh-keygen`` reads in them,
then prints a line and exits with a chosen code (or sleeps, for the signal tests). The
last test logs in to a real sshd (tests/support/sshd.py) with the real ssh.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificateBuilder,
    SSHCertificateType,
)

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.commands import CommandRun, cli
from tests.support.elevation import ElevationApi, elevation_rows
from tests.support.ledger import ledger_text_count
from tests.support.paths import BROKER_BIN
from tests.support.polling import poll
from tests.support.sshd import SSH, SSHServer, openssh_bin
from tests.support.tokens import fresh_subject, mint

SECRET = "ssh/prod-hosts"
HOST = "db1.prod.internal"

_FAKE_SSH = """\
#!{python}
import json, os, signal, subprocess, sys, time


def on_signal(signum, frame):  # noted, then ended as ssh is: 128 + N
    with open({record!r} + ".signal", "w") as f:
        f.write(str(signum))
    sys.exit(128 + signum)


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
argv = sys.argv[1:]
key = argv[argv.index("-i") + 1]
cert = next(a.split("=", 1)[1] for a in argv if a.startswith("CertificateFile="))


def keygen(*args):
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True).stdout


record = {{
    "argv": argv,
    "dir_mode": os.stat(os.path.dirname(key)).st_mode & 0o777,
    "key_mode": os.stat(key).st_mode & 0o777,
    "cert_mode": os.stat(cert).st_mode & 0o777,
    "private_key": open(key).read(),
    "key_fingerprint": keygen("-l", "-f", key).split()[1],
    "certified_key": keygen("-L", "-f", cert),
    "certificate": open(cert).read(),
}}
with open({record!r} + ".tmp", "w") as f:
    json.dump(record, f)
os.rename({record!r} + ".tmp", {record!r})
print("hi from ssh", flush=True)
time.sleep({sleep})
sys.exit({exit_code})
"""


@dataclass(frozen=True)
class FakeSsh:
    """An executable standing in for ssh; ``record()`` is what it saw (None: never ran)."""

    path: Path
    record_path: Path

    @classmethod
    def write(cls, directory: Path, *, exit_code: int = 0, sleep: float = 0) -> FakeSsh:
        path, record = directory / "fake-ssh", directory / "fake-ssh.json"
        path.write_text(
            _FAKE_SSH.format(
                python=sys.executable, record=str(record), sleep=sleep, exit_code=exit_code
            )
        )
        path.chmod(0o755)
        return cls(path, record)

    def signal_received(self) -> int | None:
        path = self.record_path.with_name(self.record_path.name + ".signal")
        return int(path.read_text()) if path.exists() else None

    def record(self) -> dict[str, Any] | None:
        if not self.record_path.exists():
            return None
        data: dict[str, Any] = json.loads(self.record_path.read_text())
        return data


@dataclass(frozen=True)
class Engineer:
    subject: str
    token: str


@pytest.fixture
def engineer(broker_settings: Settings) -> Engineer:
    """A person of the engineering group nobody else uses (the ledger is the suite's)."""
    subject = fresh_subject("ssh")
    return Engineer(subject, mint(broker_settings, subject, ["engineering"]))


def _cert_fields(keygen_text: str) -> dict[str, Any]:
    """``ssh-keygen -L``'s fields: ``key_id``, ``serial``, ``principals`` (a list)."""
    fields: dict[str, Any] = {"principals": []}
    section = None
    for line in keygen_text.splitlines():
        name, _, value = line.strip().partition(": ")
        if line.startswith("        ") and not line.startswith("         ") and ":" in line:
            section = name.rstrip(":")
            if section == "Key ID":
                fields["key_id"] = value.strip('"')
            elif section == "Serial":
                fields["serial"] = int(value)
            elif section == "Public key":
                fields["key_type"], fields["key_fingerprint"] = value.split()[:2]
        elif section == "Principals" and line.strip():
            fields["principals"].append(line.strip())
    return fields


def _grant_id(stderr: str) -> str:
    found = re.search(r"^grant ([0-9a-f-]{36}): ", stderr, re.MULTILINE)
    assert found, stderr
    return found.group(1)


async def _ssh(
    broker: RunningBroker, who: Engineer, fake: FakeSsh, *args: str, cwd: Path
) -> CommandRun:
    return await cli(
        "ssh", "--ssh", str(fake.path), *args, cwd=cwd, url=broker.url, token=who.token
    )


async def test_logs_in_with_a_certificate_for_a_key_of_its_own(
    broker: RunningBroker,
    stack: DevStack,
    http: aiohttp.ClientSession,
    engineer: Engineer,
    tmp_path: Path,
) -> None:
    fake = FakeSsh.write(tmp_path, exit_code=7)

    r = await _ssh(
        broker,
        engineer,
        fake,
        "--ttl",
        "5m",
        "--reason",
        "deploy the hotfix",
        "-p",
        "2222",
        "-o",
        "StrictHostKeyChecking=no",
        HOST,
        "--",
        "echo",
        "-n",
        "hi",
        cwd=tmp_path,
    )

    # ssh's exit code and stdout are the command's; what broker ssh says is on stderr.
    assert r.returncode == 7, r
    assert r.stdout == "hi from ssh\n"
    rec = fake.record()
    assert rec is not None, r
    argv = rec["argv"]
    key, cert = Path(argv[1]), Path(argv[3].removeprefix("CertificateFile="))
    assert argv == [
        "-i",
        str(key),
        "-o",
        f"CertificateFile={cert}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-p",
        "2222",
        "-o",
        "StrictHostKeyChecking=no",
        "-l",
        "deploy",  # the certificate's one principal: the role's default
        "--",
        HOST,
        "echo",
        "-n",
        "hi",
    ]
    assert key.parent == cert.parent
    assert (rec["dir_mode"], rec["key_mode"], rec["cert_mode"]) == (0o700, 0o600, 0o600)
    assert not key.parent.exists(), "the key directory outlived ssh"

    # The certificate certifies the key ssh was given, for principal deploy, and its key
    # id ties it to the grant.
    grant_id = _grant_id(r.stderr)
    fields = _cert_fields(rec["certified_key"])
    assert fields["principals"] == ["deploy"], rec["certified_key"]
    assert fields["key_id"] == f"jit-broker:{grant_id}:{engineer.subject}"
    assert fields["key_type"] == "ED25519-CERT"
    assert fields["key_fingerprint"] == rec["key_fingerprint"]
    assert rec["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert f"certificate {fields['serial']} expires " in r.stderr
    assert "principals deploy;" in r.stderr

    # The grant is the person's, for this secret.
    api = ElevationApi(http, broker.url)
    grants = await api.ok("GET", "/v1/grants?active=true", engineer.token)
    (grant,) = [g for g in grants["grants"] if g["id"] == grant_id]
    assert grant["secret"] == SECRET

    # The private key went nowhere but that file: not to the output, not to the ledger.
    secret_line = rec["private_key"].splitlines()[2]
    assert len(secret_line) > 40
    assert secret_line not in r.stdout + r.stderr
    assert await ledger_text_count(stack, grant_id) > 0
    assert await ledger_text_count(stack, secret_line) == 0


async def test_root_without_an_elevation_is_refused_and_ssh_never_runs(
    broker: RunningBroker, engineer: Engineer, tmp_path: Path
) -> None:
    fake = FakeSsh.write(tmp_path)

    r = await _ssh(broker, engineer, fake, "--principal", "root", f"root@{HOST}", cwd=tmp_path)

    assert r.returncode == 1, r
    error, hint = r.stderr.splitlines()
    assert error.startswith("error: elevation_required: "), r.stderr
    assert hint == f"ask for it with: broker ssh --request-root --reason TEXT root@{HOST}"
    assert r.stdout == ""
    assert fake.record() is None


async def test_elevations_request_names_the_principals(
    broker: RunningBroker, stack: DevStack, engineer: Engineer, tmp_path: Path
) -> None:
    """``broker elevations request --principal``, for ``broker ssh --elevation`` later."""
    r = await cli(
        "elevations",
        "request",
        SECRET,
        "--principal",
        "root",
        "--reason",
        "kernel update",
        "--ticket",
        "CHG-12",
        "--json",
        cwd=tmp_path,
        url=broker.url,
        token=engineer.token,
    )

    assert r.returncode == 0, r
    el = r.json()
    assert (el["status"], el["role"]) == ("pending", "prod-root")
    (requested,) = await elevation_rows(stack, el["id"])
    assert requested["event"] == "elevation.requested"
    assert requested["body"]["principals"] == ["root"]


async def test_request_root_waits_for_the_approval_then_logs_in_as_root(
    broker: RunningBroker,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    engineer: Engineer,
    tmp_path: Path,
) -> None:
    fake = FakeSsh.write(tmp_path)
    api = ElevationApi(http, broker.url)
    run = asyncio.create_task(
        _ssh(
            broker,
            engineer,
            fake,
            "--request-root",
            "--reason",
            "disk full on db1",
            "--ticket",
            "INC-123",
            "--wait",
            "60",
            HOST,
            "--",
            "df",
            "-h",
            cwd=tmp_path,
        )
    )
    pending = await poll(
        lambda: api.list(engineer.token, "?status=pending"), lambda els: len(els) == 1
    )
    (el,) = pending
    assert (el["secret"], el["role"], el["ticket"]) == (SECRET, "prod-root", "INC-123"), el
    assert not run.done() and fake.record() is None  # waiting, not connected

    await api.approved(tokens["bob"], el["id"])
    r = await run

    assert r.returncode == 0, r
    assert f"elevation {el['id']} pending: needs 1 from sre-leads" in r.stderr
    assert f"an approver runs: broker elevations approve {el['id'][:8]}" in r.stderr
    assert f"elevation {el['id'][:8]} approved by bob" in r.stderr
    rec = fake.record()
    assert rec is not None
    assert rec["argv"][-5:] == ["root", "--", HOST, "df", "-h"]  # -l root
    grant_id = _grant_id(r.stderr)
    fields = _cert_fields(rec["certified_key"])
    assert fields["principals"] == ["root"]
    assert fields["key_id"] == f"jit-broker:{grant_id}:{engineer.subject}"
    status, shown = await api.get(engineer.token, el["id"])
    assert status == 200 and shown["grants"] == [grant_id], shown


async def test_a_denied_request_ends_the_wait_with_the_approvers_reason(
    broker: RunningBroker,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    engineer: Engineer,
    tmp_path: Path,
) -> None:
    fake = FakeSsh.write(tmp_path)
    api = ElevationApi(http, broker.url)
    run = asyncio.create_task(
        _ssh(
            broker,
            engineer,
            fake,
            "--request-root",
            "--reason",
            "look around",
            "--ticket",
            "INC-9",
            HOST,
            cwd=tmp_path,
        )
    )
    (el,) = await poll(
        lambda: api.list(engineer.token, "?status=pending"), lambda els: len(els) == 1
    )
    status, out = await api.deny(tokens["dana"], el["id"], "use the deploy account")
    assert status == 200, out

    r = await run

    assert r.returncode == 1, r
    assert f"error: elevation {el['id'][:8]} is denied (by dana at " in r.stderr
    assert r.stderr.rstrip().endswith(": use the deploy account"), r.stderr
    assert fake.record() is None


async def test_wait_gives_up_and_elevation_resumes(
    broker: RunningBroker,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    engineer: Engineer,
    tmp_path: Path,
) -> None:
    fake = FakeSsh.write(tmp_path)
    api = ElevationApi(http, broker.url)
    args = ("--request-root", "--reason", "rotate host keys", "--ticket", "CHG-7")

    r = await _ssh(broker, engineer, fake, *args, "--wait", "1", HOST, cwd=tmp_path)

    assert r.returncode == 1, r
    (el,) = await api.list(engineer.token, "?status=pending")  # left open
    resume = f"broker ssh --elevation {el['id'][:8]} {HOST}"
    assert f"error: elevation {el['id'][:8]} is still pending after 1s;" in r.stderr
    assert f"once it is approved: {resume}" in r.stderr
    assert fake.record() is None

    await api.approved(tokens["bob"], el["id"])
    r = await _ssh(broker, engineer, fake, "--elevation", el["id"][:8], HOST, cwd=tmp_path)

    assert r.returncode == 0, r
    rec = fake.record()
    assert rec is not None
    assert _cert_fields(rec["certified_key"])["principals"] == ["root"]
    assert rec["argv"][-3:] == ["root", "--", HOST]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_is_passed_to_ssh_and_the_key_removed(
    broker: RunningBroker, engineer: Engineer, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C or a kill while ssh runs: ssh gets it, and the key files go when it ends."""
    fake = FakeSsh.write(tmp_path, sleep=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_URL=broker.url, BROKER_TOKEN=engineer.token)
    proc = await asyncio.create_subprocess_exec(
        str(BROKER_BIN),
        "ssh",
        "--ssh",
        str(fake.path),
        HOST,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        rec = await poll(lambda: asyncio.sleep(0, fake.record()), lambda r: r is not None)
        assert rec is not None, "ssh never ran"
        directory = Path(rec["argv"][1]).parent  # the fake ssh saw the key in it
        proc.send_signal(signum)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert fake.signal_received() == signum, err
    assert proc.returncode == 128 + signum, err  # ssh's exit code
    assert not directory.exists()


# --- no broker needed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--request-root", HOST], "--request-root needs --reason"),
        (
            ["--request-root", "--reason", "r", "--principal", "deploy", HOST],
            "--request-root is for the principal root only",
        ),
        (["--ssh", "/nonexistent/ssh", HOST], "--ssh /nonexistent/ssh: no executable program"),
        (["--request-root", "--elevation", "abcd1234", HOST], "not allowed with argument"),
        (["-p", "70000", HOST], "invalid port"),
        (["--wait", "soon", HOST], "invalid duration"),
    ],
)
async def test_usage_errors_ask_nothing_of_the_broker(
    tmp_path: Path, args: list[str], says: str
) -> None:
    """Exit 2 before any call: the URL is a closed port, where a call would exit 3."""
    r = await cli("ssh", *args, cwd=tmp_path, url="http://127.0.0.1:9", token="t")
    assert r.returncode == 2, r
    assert says in r.stderr


async def test_a_temporary_directory_ssh_would_expand_is_refused_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh reads % and ${} in key file names: such a $TMPDIR is refused before a call."""
    temp = tmp_path / "100%"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    r = await cli("ssh", HOST, cwd=tmp_path, url="http://127.0.0.1:9", token="t")
    assert r.returncode == 2, r
    assert "has characters ssh would expand: set TMPDIR to a plain path" in r.stderr


def _certificate(
    key: ed25519.Ed25519PrivateKey,
    *,
    ca: ed25519.Ed25519PrivateKey,
    cert_type: SSHCertificateType = SSHCertificateType.USER,
) -> str:
    cert = (
        SSHCertificateBuilder()
        .public_key(key.public_key())
        .serial(42)
        .type(cert_type)
        .key_id(b"jit-broker:g:alice")
        .valid_principals([b"deploy"])
        .valid_after(0)
        .valid_before(2**64 - 1)
        .sign(ca)
    )
    return cert.public_bytes().decode()


def _public(key: ed25519.Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def test_only_a_user_certificate_for_the_key_sent_is_used() -> None:
    from broker.cli.ssh import _certificate_of, _Stopped

    ca, mine, other = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))

    def grant(line: Any) -> dict[str, Any]:
        return {"id": "g", "secret": SECRET, "credential": {"signed_key": line}}

    got = _certificate_of(grant(_certificate(mine, ca=ca) + "\n"), _public(mine))
    assert (got.serial, got.key_id, got.principals) == (42, "jit-broker:g:alice", ("deploy",))
    assert got.valid_before is None  # OpenSSH's forever

    refused = {
        "another key": grant(_certificate(other, ca=ca)),
        "a host certificate": grant(_certificate(mine, ca=ca, cert_type=SSHCertificateType.HOST)),
        "no certificate": {"id": "g", "secret": "stripe/test", "credential": {"data": {}}},
        "a plain key": grant(_public(mine)),
        "two lines": grant(_certificate(mine, ca=ca) + "\n" + _certificate(mine, ca=ca)),
        "garbage": grant("ssh-ed25519-cert-v01@openssh.com AAAA"),
    }
    for what, answer in refused.items():
        with pytest.raises(_Stopped):
            _certificate_of(answer, _public(mine))
            pytest.fail(f"used {what}")


async def test_logs_in_to_a_real_sshd_that_trusts_the_broker_ca(
    broker: RunningBroker,
    http: aiohttp.ClientSession,
    engineer: Engineer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host's sshd logs the key id, and with it the grant: the trail from host to ledger."""
    ssh = openssh_bin(SSH)
    async with http.get(f"{broker.url}/v1/ssh/ca") as resp:
        assert resp.status == 200, await resp.text()
        ca = await resp.text()
    user = getpass.getuser()  # the principal deploy may log in as this test's own user
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # where broker ssh puts the key, to look after

    async with SSHServer(ca_public_key=ca, principals={user: ["deploy"]}) as sshd:
        r = await cli(
            "ssh",
            "--ssh",
            str(ssh),
            "-p",
            str(sshd.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={sshd.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            f"{user}@{sshd.host}",
            "--",
            "echo",
            "hi",
            cwd=tmp_path,
            url=broker.url,
            token=engineer.token,
        )
        logins = sshd.accepted_logins()

    assert r.returncode == 0, (r, sshd.log_text()[-2000:])
    assert r.stdout == "hi\n"
    grant_id = _grant_id(r.stderr)
    assert [(x.user, x.key_id) for x in logins] == [
        (user, f"jit-broker:{grant_id}:{engineer.subject}")
    ]
    assert list(temp.iterdir()) == []  # the key's directory is gone
