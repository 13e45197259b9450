"""Broker-signed SSH certificates against a real sshd (Debian's openssh-server).

sshd trusts OpenBao's SSH CA (fetched from the broker's ``GET /v1/ssh/ca``), maps the
principals ``deploy`` and ``root`` to the current user (tests run as whoever runs them),
and installs the broker's KRL (``GET /v1/ssh/krl``) as ``RevokedKeys``. Each test mints
a subject of its own; the session broker has the demo policy.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from tests.support.brokers import RunningBroker
from tests.support.http import offboard
from tests.support.sshd import SSHServer, generate_key
from tests.support.tokens import fresh_subject, mint

USER = getpass.getuser()
SECRET = "ssh/prod-hosts"


def _public(key: Path) -> str:
    return Path(f"{key}.pub").read_text().strip()


def _save_certificate(key: Path, signed_key: str) -> Path:
    cert = Path(f"{key}-cert.pub")
    cert.write_text(signed_key + "\n")
    return cert


@pytest.fixture
async def sshd(broker: RunningBroker, http: aiohttp.ClientSession) -> AsyncIterator[SSHServer]:
    async with http.get(broker.url + "/v1/ssh/ca") as resp:
        assert resp.status == 200
        ca = (await resp.text()).strip()
    async with SSHServer(ca_public_key=ca, principals={USER: ["deploy", "root"]}) as server:
        yield server


async def _sign(
    http: aiohttp.ClientSession,
    broker: RunningBroker,
    token: str,
    key: Path,
    **extra: Any,
) -> tuple[dict[str, Any], Path]:
    """A certificate for ``key`` (``key``-cert.pub written next to it) and its grant."""
    public = _public(key)
    async with http.post(
        broker.url + "/v1/credentials",
        json={"secret": SECRET, "public_key": public, **extra},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        grant = await resp.json()
        assert resp.status == 201, grant
    return grant, _save_certificate(key, grant["credential"]["signed_key"])


async def _install_krl(http: aiohttp.ClientSession, broker: RunningBroker, sshd: SSHServer) -> None:
    async with http.get(broker.url + "/v1/ssh/krl") as resp:
        assert resp.status == 200
        sshd.install_krl(await resp.read())


async def test_login_and_sshds_log_names_the_grant(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    sshd: SSHServer,
    tmp_path: Path,
) -> None:
    subject = fresh_subject("ssh-login")
    token = mint(broker_settings, subject, ["engineering"])
    key = generate_key(tmp_path, "id_ed25519")
    grant, cert = await _sign(http, broker, token, key)
    run = await sshd.run_ssh(key, cert, "echo", "hello-from-sshd")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hello-from-sshd"
    (login,) = sshd.accepted_logins()
    assert login.key_id == f"jit-broker:{grant['id']}:{subject}"
    assert login.serial == int(grant["credential"]["serial_number"])


async def test_the_certificate_is_refused_after_its_ttl(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    sshd: SSHServer,
    tmp_path: Path,
) -> None:
    token = mint(broker_settings, fresh_subject("ssh-ttl"), ["engineering"])
    key = generate_key(tmp_path, "id_ed25519")
    _, cert = await _sign(http, broker, token, key, ttl="3s")
    first = await sshd.run_ssh(key, cert, "true")
    assert first.returncode == 0, first.stderr
    await asyncio.sleep(4.5)
    again = await sshd.run_ssh(key, cert, "true")
    assert again.returncode == 255
    await sshd.wait_for_log("expired")


async def test_offboarding_puts_the_certificate_in_the_krl_sshd_enforces(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    sshd: SSHServer,
    tmp_path: Path,
) -> None:
    leaver = fresh_subject("ssh-leaver")
    stayer = fresh_subject("ssh-stayer")
    keys = {}
    for who in (leaver, stayer):
        (tmp_path / who).mkdir()
        key = generate_key(tmp_path / who, "id_ed25519")
        _, cert = await _sign(http, broker, mint(broker_settings, who, ["engineering"]), key)
        keys[who] = (key, cert)
        run = await sshd.run_ssh(key, cert, "true")
        assert run.returncode == 0, run.stderr
    await offboard(http, broker.url, tokens["erin"], leaver, f"left the company {uuid.uuid4()}")
    await _install_krl(http, broker, sshd)
    refused = await sshd.run_ssh(*keys[leaver], "true")
    assert refused.returncode == 255  # still valid for 30 minutes, and refused
    await sshd.wait_for_log("revoked by file")
    kept = await sshd.run_ssh(*keys[stayer], "true")
    assert kept.returncode == 0, kept.stderr


async def test_root_logs_in_only_with_an_elevated_certificate(
    broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    tmp_path: Path,
    sshd: SSHServer,
) -> None:
    """The host maps root's account to principal ``root`` only: a standing certificate
    (principal ``deploy``) is refused there; an elevated one logs in."""
    subject = fresh_subject("ssh-root-login")
    token = mint(broker_settings, subject, ["engineering"])
    sshd.set_principals(USER, ["root"])
    key = generate_key(tmp_path, "id_ed25519")
    _, standing = await _sign(http, broker, token, key)
    refused = await sshd.run_ssh(key, standing, "true")
    assert refused.returncode == 255
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(
        broker.url + "/v1/elevations",
        json={
            "secret": SECRET,
            "principals": ["root"],
            "reason": "kernel upgrade on db-3",
            "ticket": "CHG-77",
        },
        headers=headers,
    ) as resp:
        elevation = await resp.json()
        assert resp.status == 201, elevation
    async with http.post(
        f"{broker.url}/v1/elevations/{elevation['id']}/approve",
        json={"comment": "ok"},
        headers={"Authorization": f"Bearer {tokens['bob']}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(
        f"{broker.url}/v1/elevations/{elevation['id']}/credentials",
        json={"public_key": _public(key)},
        headers=headers,
    ) as resp:
        grant = await resp.json()
        assert resp.status == 201, grant
    elevated = _save_certificate(key, grant["credential"]["signed_key"])
    run = await sshd.run_ssh(key, elevated, "echo", "root-ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "root-ok"
