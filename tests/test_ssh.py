"""Just-in-time SSH certificates: policy, signing, refusals, root behind elevation, KRL.

Against the session broker (the demo policy: ``ssh/prod-hosts``, roles ``prod-shell``
for principal ``deploy`` and the privileged ``prod-root`` for ``root``), the real
OpenBao SSH engine and the session ledger; each test mints subjects of its own. Keys are
made by the system's ``ssh-keygen``; certificates and KRLs are checked by it too. A real
sshd is in tests/test_ssh_login.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.stack.openbao import _bao_binary
from tests.support.brokers import RunningBroker
from tests.support.ledger import ledger_rows, ledger_text_count
from tests.support.tokens import fresh_subject, mint

SECRET = "ssh/prod-hosts"
SSH_KEYGEN = "/usr/bin/ssh-keygen"


def _keypair(tmp: Path, kind: str = "ed25519", bits: int | None = None) -> tuple[Path, str]:
    key = tmp / f"id_{kind}_{bits or ''}_{uuid.uuid4().hex[:6]}"
    argv = [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "test@laptop", "-f", str(key)]
    if bits:
        argv[4:4] = ["-b", str(bits)]
    subprocess.run(argv, check=True)
    return key, Path(f"{key}.pub").read_text().strip()


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(
        method, url, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        ctype = resp.headers.get("Content-Type", "")
        return resp.status, await (resp.json() if "json" in ctype else resp.read())


def _cert_text(tmp: Path, signed_key: str) -> str:
    path = tmp / f"cert-{uuid.uuid4().hex[:6]}-cert.pub"
    path.write_text(signed_key + "\n")
    return subprocess.run(
        [SSH_KEYGEN, "-L", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout


def _principals(text: str) -> list[str]:
    """The ``Principals:`` block of ``ssh-keygen -L`` output."""
    block = text.split("Principals:", 1)[1].split("Critical Options:", 1)[0]
    return block.split()


async def test_a_certificate_for_the_callers_key_with_policy_principals(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    stack: DevStack,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    subject = fresh_subject("ssh-eng")
    token = mint(broker_settings, subject, ["engineering"])
    _, public = _keypair(tmp_path)
    status, grant = await _call(
        http,
        "POST",
        broker.url + "/v1/credentials",
        token,
        {"secret": SECRET, "public_key": public, "ttl": "10m"},
    )
    assert status == 201, grant
    cred = grant["credential"]
    assert cred["principals"] == ["deploy"]
    assert cred["key_id"] == f"jit-broker:{grant['id']}:{subject}"
    text = _cert_text(tmp_path, cred["signed_key"])
    assert f'Key ID: "jit-broker:{grant["id"]}:{subject}"' in text
    assert f"Serial: {cred['serial_number']}" in text
    assert _principals(text) == ["deploy"]
    assert "permit-pty" in text and "permit-agent-forwarding" not in text
    # The ledger: serial, key id, principals, validity and the key's fingerprint, not the key.
    (issued,) = await ledger_rows(
        stack, "event = 'grant.issued' AND grant_id = $1", uuid.UUID(grant["id"])
    )
    body = issued["body"]
    assert body["serial_number"] == cred["serial_number"]
    assert body["key_id"] == cred["key_id"] and body["principals"] == ["deploy"]
    assert body["public_key_fingerprint"].startswith("SHA256:")
    assert issued["expires_at"].isoformat() == cred["valid_before"]
    key_blob = public.split()[1]
    assert await ledger_text_count(stack, key_blob) == 0
    assert await ledger_text_count(stack, cred["signed_key"].split()[1]) == 0
    # The auditor's "why" answer shows the SSH access window like any other grant.
    status, why = await _call(
        http,
        "GET",
        f"{broker.url}/v1/audit/access?subject={subject}&secret={SECRET}"
        f"&from={grant['issued_at'][:10]}&to={grant['expires_at'][:19]}Z",
        tokens["carol"],
    )
    assert status == 200, why
    (window,) = why["access"]
    assert (window["grant_id"], window["role"]) == (grant["id"], "prod-shell")


@pytest.mark.parametrize(
    ("make", "code", "status"),
    [
        ("garbage", "invalid_public_key", 400),
        ("dsa", "key_type_not_allowed", 400),
        ("rsa2048", "key_too_small", 400),
        ("private", "private_key_refused", 400),
        ("principals", "denied", 403),
        ("foreign", "denied", 403),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_signed(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    stack: DevStack,
    tmp_path: Path,
    make: str,
    code: str,
    status: int,
) -> None:
    subject = fresh_subject(f"ssh-bad-{make}")
    token = mint(broker_settings, subject, ["engineering"])
    key, public = _keypair(tmp_path)
    body: dict[str, Any] = {"secret": SECRET, "public_key": public}
    if make == "garbage":
        body["public_key"] = "ssh-ed25519 this-is-not-base64"
    elif make == "dsa":
        body["public_key"] = _keypair(tmp_path, "dsa")[1]
    elif make == "rsa2048":
        body["public_key"] = _keypair(tmp_path, "rsa", 2048)[1]
    elif make == "private":
        body["public_key"] = key.read_text()
    elif make == "principals":
        body["principals"] = ["deploy", "postgres"]
    elif make == "foreign":
        body["principals"] = ["postgres"]
    answer, refusal = await _call(http, "POST", broker.url + "/v1/credentials", token, body)
    assert answer == status, refusal
    assert refusal["error"]["code"] == code
    if make in ("principals", "foreign"):
        assert "may sign 'ssh/prod-hosts' for principals" in refusal["error"]["message"]
    rows = await ledger_rows(stack, "subject = $1", subject)
    assert not [r for r in rows if r["event"] in ("grant.intent", "grant.issued")]
    assert rows, "the refusal is ledgered"  # request.rejected or grant.denied
    if make == "private":
        secret_line = key.read_text().splitlines()[2]
        assert secret_line not in refusal["error"]["message"]
        assert await ledger_text_count(stack, secret_line) == 0


async def test_root_needs_an_approved_elevation(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    subject = fresh_subject("ssh-root")
    token = mint(broker_settings, subject, ["engineering"])
    _, public = _keypair(tmp_path)
    ask = {"secret": SECRET, "public_key": public, "principals": ["root"]}
    status, refusal = await _call(http, "POST", broker.url + "/v1/credentials", token, ask)
    assert status == 403 and refusal["error"]["code"] == "elevation_required", refusal
    status, elevation = await _call(
        http,
        "POST",
        broker.url + "/v1/elevations",
        token,
        {
            "secret": SECRET,
            "principals": ["root"],
            "reason": "disk full on db-3, need root",
            "ticket": "INC-4242",
        },
    )
    assert status == 201, elevation
    assert elevation["role"] == "prod-root"
    status, wrong = await _call(
        http,
        "POST",
        broker.url + "/v1/elevations",
        token,
        {"secret": "stripe/prod", "principals": ["root"], "reason": "not an ssh secret at all"},
    )
    assert status == 400 and wrong["error"]["code"] == "not_an_ssh_secret", wrong
    assert elevation["principals"] == ["root"]  # what the approver sees and approves
    status, approved = await _call(
        http,
        "POST",
        f"{broker.url}/v1/elevations/{elevation['id']}/approve",
        tokens["bob"],
        {"comment": "go"},
    )
    assert status == 200, approved
    status, refusal = await _call(
        http,
        "POST",
        f"{broker.url}/v1/elevations/{elevation['id']}/credentials",
        token,
        {"public_key": public, "principals": ["deploy", "root"]},
    )
    assert status == 403 and refusal["error"]["code"] == "principals_not_approved", refusal
    status, grant = await _call(
        http,
        "POST",
        f"{broker.url}/v1/elevations/{elevation['id']}/credentials",
        token,
        {"public_key": public},
    )
    assert status == 201, grant
    assert grant["credential"]["principals"] == ["root"]
    assert _principals(_cert_text(tmp_path, grant["credential"]["signed_key"])) == ["root"]


async def test_revoked_certificates_are_in_the_krl(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    subject = fresh_subject("ssh-krl")
    token = mint(broker_settings, subject, ["engineering"])
    certs = []
    for _ in range(2):
        _, public = _keypair(tmp_path)
        status, grant = await _call(
            http,
            "POST",
            broker.url + "/v1/credentials",
            token,
            {"secret": SECRET, "public_key": public},
        )
        assert status == 201, grant
        path = tmp_path / f"{grant['id']}-cert.pub"
        path.write_text(grant["credential"]["signed_key"] + "\n")
        certs.append((grant, path))
    (revoked, revoked_path), (_, kept_path) = certs
    status, _ = await _call(http, "DELETE", f"{broker.url}/v1/grants/{revoked['id']}", token)
    assert status == 200
    async with http.get(broker.url + "/v1/ssh/krl") as resp:
        assert resp.status == 200
        krl = await resp.read()
    (tmp_path / "krl").write_bytes(krl)

    def query(cert: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SSH_KEYGEN, "-Q", "-f", str(tmp_path / "krl"), str(cert)],
            capture_output=True,
            text=True,
        )

    assert query(revoked_path).returncode != 0  # REVOKED
    assert query(kept_path).returncode == 0
    async with http.get(broker.url + "/v1/ssh/ca") as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith("ssh-ed25519 ")


async def _bao(url: str, home: Path, *args: str, token: str | None = None) -> tuple[int, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "BAO_ADDR": url}
    if token:
        env["BAO_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        _bao_binary(), *args, env=env, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_bao_cli_signs_through_the_front_door(
    front_door: str,
    broker_settings: Settings,
    tmp_path: Path,
) -> None:
    """`bao write ssh/sign/<role> public_key=@key.pub`, unmodified, against the broker."""
    subject = fresh_subject("ssh-fd")
    jwt = mint(broker_settings, subject, ["engineering"])
    rc, out = await _bao(
        front_door, tmp_path, "write", "-format=json", "auth/jwt/login", "role=demo", f"jwt={jwt}"
    )
    assert rc == 0, out
    token = json.loads(out)["auth"]["client_token"]
    key, _ = _keypair(tmp_path)
    rc, out = await _bao(
        front_door,
        tmp_path,
        "write",
        "-field=signed_key",
        "ssh/sign/prod-hosts",
        f"public_key=@{key}.pub",
        token=token,
    )
    assert rc == 0, out
    text = _cert_text(tmp_path, out.strip())
    assert _principals(text) == ["deploy"] and f":{subject}" in text
    rc, out = await _bao(
        front_door,
        tmp_path,
        "write",
        "ssh/sign/prod-hosts",
        f"public_key=@{key}.pub",
        "key_id=root-please",
        token=token,
    )
    assert rc != 0 and "certificate_terms_fixed" in out
    rc, out = await _bao(
        front_door,
        tmp_path,
        "write",
        "ssh/sign/prod-hosts",
        f"public_key=@{key}.pub",
        "valid_principals=deploy;id",
        token=token,
    )
    assert rc != 0 and "invalid_principals" in out  # the whole name is checked
    # A private key pasted by mistake is named as one, however long the paste.
    pasted = tmp_path / "pasted"
    pasted.write_text(key.read_text() + "\n" * 5000)
    rc, out = await _bao(
        front_door, tmp_path, "write", "ssh/sign/prod-hosts", f"public_key=@{pasted}", token=token
    )
    assert rc != 0 and "private_key_refused" in out, out
    assert key.read_text().splitlines()[2] not in out
