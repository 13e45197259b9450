"""The broker's own Vault identity via AppRole, against the real OpenBao.

Shows: login with the least-privilege policy in deploy/, renewal before expiry, a fresh
login once the token hits its max TTL, a fresh login when the renewal of a revoked token
is refused (with a rotated secret id file read again), and recovery without a failed
request after an operator revokes the broker's token.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import hvac

from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.vault import AppRoleCredentials, VaultLogin
from tests.support.brokers import running_broker
from tests.support.http import issue
from tests.support.paths import REPO


def _approle(stack: DevStack, *, ttl: str, max_ttl: str) -> tuple[str, str, str]:
    """Enable AppRole with the broker policy; return (mount, role_id, secret_id)."""
    client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    client.sys.enable_auth_method("approle", path=mount)
    policy = (REPO / "deploy" / "openbao-broker-policy.hcl").read_text()
    client.sys.create_or_update_policy("jit-broker", policy)
    client.auth.approle.create_or_update_approle(
        "broker",
        token_policies=["jit-broker"],
        token_ttl=ttl,
        token_max_ttl=max_ttl,
        mount_point=mount,
    )
    role_id = client.auth.approle.read_role_id("broker", mount_point=mount)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id("broker", mount_point=mount)["data"][
        "secret_id"
    ]
    return mount, role_id, secret_id


async def test_approle_renews_and_relogs_in(stack: DevStack) -> None:
    mount, role_id, secret_id = _approle(stack, ttl="4s", max_ttl="9s")
    login = VaultLogin(stack.bao.addr, approle=AppRoleCredentials(role_id, secret_id, mount))
    await login.login()
    first_token, first_accessor = login.token(), login.accessor
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    renewed = False
    relogged = False
    last_ttl = 10**9
    for _ in range(60):
        await asyncio.sleep(0.25)
        await login.maintain()
        if login.token() == first_token:
            ttl = root.auth.token.lookup_accessor(first_accessor)["data"]["ttl"]
            renewed = renewed or ttl > last_ttl  # the TTL went back up: renewed, same token
            last_ttl = ttl
        else:
            relogged = True
            break
    assert renewed, "token was never renewed before expiry"
    assert relogged, "no fresh login at max TTL"
    assert root.auth.token.lookup_accessor(login.accessor)["data"]["ttl"] > 0


async def test_revoked_token_is_replaced_at_renewal_with_the_rotated_secret_id(
    stack: DevStack, tmp_path: Path
) -> None:
    mount, role_id, secret_id = _approle(stack, ttl="3s", max_ttl="1h")
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id)
    login = VaultLogin(stack.bao.addr, approle=AppRoleCredentials(role_id, "", mount, secret_file))
    await login.login()
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    revoked = login.token()
    root.auth.token.revoke_accessor(login.accessor)
    # Rotate: a new secret id in the file, the old one destroyed.
    rotated = root.auth.approle.generate_secret_id("broker", mount_point=mount)["data"]
    root.auth.approle.destroy_secret_id("broker", secret_id, mount_point=mount)
    secret_file.write_text(rotated["secret_id"])
    for _ in range(40):
        await asyncio.sleep(0.25)
        await login.maintain()  # the renewal falls due, is refused, and a login follows
        if login.token() != revoked:
            break
    assert login.token() != revoked, "no login after the revoked token's renewal failed"
    meta = root.auth.token.lookup_accessor(login.accessor)["data"]
    assert meta["ttl"] > 0 and meta["path"] == f"auth/{mount}/login"
    # The old secret id is destroyed: this login can only have used the rotated file.
    assert meta["meta"] == {"role_name": "broker"}


async def test_broker_on_approle_survives_token_revocation(
    stack: DevStack, broker_settings: Settings, tokens: dict[str, str]
) -> None:
    mount, role_id, secret_id = _approle(stack, ttl="1h", max_ttl="2h")
    async with (
        running_broker(
            broker_settings,
            vault_token=None,
            vault_role_id=role_id,
            vault_secret_id=secret_id,
            vault_approle_mount=mount,
            replica_id="approle-test",
        ) as running,
        aiohttp.ClientSession() as http,
    ):
        await issue(http, running.url, tokens["alice"], "stripe/test")
        await issue(http, running.url, tokens["alice"], "db/orders-ro")
        # An operator revokes every token of the broker's AppRole.
        root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
        for accessor in root.list("auth/token/accessors")["data"]["keys"]:
            meta = root.auth.token.lookup_accessor(accessor)["data"]
            if meta.get("path", "").startswith(f"auth/{mount}/"):
                root.auth.token.revoke_accessor(accessor)
        # The next request re-authenticates and succeeds: no failed call.
        await issue(http, running.url, tokens["alice"], "stripe/test")
        await issue(http, running.url, tokens["alice"], "db/orders-ro")
