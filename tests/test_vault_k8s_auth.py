"""The broker's own Vault identity via Kubernetes auth, against the real OpenBao.

There is no Kubernetes API here for OpenBao's ``kubernetes`` method to send TokenReview
to, so the mount at ``auth/kubernetes`` is OpenBao's ``jwt`` method validating the
service-account JWT with ``jwt_validation_pubkeys`` (how Vault documents Kubernetes as a
JWT issuer). The broker's side is identical: POST auth/<mount>/login {role, jwt} with the
JWT read from the projected token file. The TokenReview path itself is not exercised.

Shows: login, renewal before expiry, a fresh login at max TTL, re-login after the token
is revoked (both at renewal and on a 403), a rotated token file read at the next login,
and a broker serving on this identity.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import VaultError
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.vault.login import KubernetesCredentials, VaultLogin
from tests.support.brokers import running_broker
from tests.support.http import issue
from tests.support.paths import REPO

_MOUNT = "kubernetes"  # the broker's default mount
_ISSUER = "https://kubernetes.default.svc.cluster.local"
_SUBJECT = "system:serviceaccount:jit:broker"


class ServiceAccountIssuer:
    """Plays the cluster's service-account issuer: signs projected-token-shaped JWTs."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def public_pem(self) -> str:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        return self._key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()

    def mint(self, *, ttl: int = 3600) -> tuple[str, str]:
        """A fresh token and its ``jti`` (which the role maps into the Vault token's meta)."""
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": _ISSUER,
            "aud": ["vault"],
            "sub": _SUBJECT,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": jti,
            "kubernetes.io": {
                "namespace": "jit",
                "pod": {"name": "broker-0", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": "broker", "uid": str(uuid.uuid4())},
            },
        }
        return jwt.encode(claims, self._key, algorithm="ES256"), jti


@pytest.fixture(scope="module")
def sa_issuer(stack: DevStack) -> ServiceAccountIssuer:
    """``auth/kubernetes`` on the session OpenBao, trusting a fresh issuer key."""
    issuer = ServiceAccountIssuer()
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    if f"{_MOUNT}/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("jwt", path=_MOUNT)
    root.write(
        f"auth/{_MOUNT}/config",
        jwt_validation_pubkeys=[issuer.public_pem()],
        bound_issuer=_ISSUER,
    )
    policy = (REPO / "deploy" / "openbao-broker-policy.hcl").read_text()
    root.sys.create_or_update_policy("jit-broker", policy)
    return issuer


def _role(stack: DevStack, *, ttl: str, max_ttl: str) -> str:
    name = f"broker-{uuid.uuid4().hex[:8]}"
    hvac.Client(url=stack.bao.addr, token=stack.bao.root_token).write(
        f"auth/{_MOUNT}/role/{name}",
        role_type="jwt",
        bound_audiences=["vault"],
        bound_subject=_SUBJECT,
        user_claim="sub",
        claim_mappings={"jti": "jti", "/kubernetes.io/pod/name": "pod"},
        token_policies=["jit-broker"],
        token_ttl=ttl,
        token_max_ttl=max_ttl,
    )
    return name


def _meta(stack: DevStack, accessor: str | None) -> dict[str, object]:
    assert accessor
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    data: dict[str, object] = root.auth.token.lookup_accessor(accessor)["data"]
    return data


def _token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "serviceaccount" / "token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(token)
    return path


def _rotate(path: Path, token: str) -> None:
    """As the kubelet does: write aside, then rename over the old file."""
    fresh = path.with_suffix(".new")
    fresh.write_text(token)
    fresh.replace(path)


async def test_kubernetes_login_renews_then_relogs_at_max_ttl(
    stack: DevStack, sa_issuer: ServiceAccountIssuer, tmp_path: Path
) -> None:
    role = _role(stack, ttl="4s", max_ttl="9s")
    token, jti = sa_issuer.mint()
    path = _token_file(tmp_path, token)
    login = VaultLogin(stack.bao.addr, kubernetes=KubernetesCredentials(role, path))
    await login.login()
    first_token, first_accessor = login.token(), login.accessor
    meta = _meta(stack, first_accessor)
    assert meta["meta"] == {"role": role, "jti": jti, "pod": "broker-0"}
    assert meta["path"] == f"auth/{_MOUNT}/login"
    renewed = relogged = False
    last_ttl = 10**9
    for _ in range(60):
        await asyncio.sleep(0.25)
        await login.maintain()
        if login.token() == first_token:
            ttl = int(str(_meta(stack, first_accessor)["ttl"]))
            renewed = renewed or ttl > last_ttl  # went back up: renewed, same token
            last_ttl = ttl
        else:
            relogged = True
            break
    assert renewed, "token was never renewed before expiry"
    assert relogged, "no fresh login at max TTL"
    assert int(str(_meta(stack, login.accessor)["ttl"])) > 0


async def test_revoked_token_and_rotated_file(
    stack: DevStack, sa_issuer: ServiceAccountIssuer, tmp_path: Path
) -> None:
    role = _role(stack, ttl="3s", max_ttl="1h")
    token, first_jti = sa_issuer.mint()
    path = _token_file(tmp_path, token)
    login = VaultLogin(stack.bao.addr, kubernetes=KubernetesCredentials(role, path))
    await login.login()
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)

    # 1. An operator revokes the token; the renewal that falls due is refused, and the
    #    broker logs in again with the (rotated) file's new JWT.
    revoked = login.token()
    root.auth.token.revoke_accessor(login.accessor)
    rotated, second_jti = sa_issuer.mint()
    _rotate(path, rotated)
    for _ in range(40):
        await asyncio.sleep(0.25)
        await login.maintain()
        if login.token() != revoked:
            break
    assert login.token() != revoked, "no login after the revoked token's renewal failed"
    assert _meta(stack, login.accessor)["meta"] == {
        "role": role,
        "jti": second_jti,  # the file was read again, not a cached JWT
        "pod": "broker-0",
    }
    assert first_jti != second_jti

    # 2. Revoked again, seen by a request as a 403: one re-login, with the newest file.
    revoked = login.token()
    root.auth.token.revoke_accessor(login.accessor)
    third, third_jti = sa_issuer.mint()
    _rotate(path, third)
    assert await login.relogin_after_rejection(revoked) is True
    assert _meta(stack, login.accessor)["meta"]["jti"] == third_jti  # type: ignore[index]
    # A second caller holding the same rejected token shares that login.
    current = login.token()
    assert await login.relogin_after_rejection(revoked) is True
    assert login.token() == current

    # 3. A token file the issuer did not sign is refused at the next login (no stale copy
    #    kept), and the JWT never appears in the error.
    forged = jwt.encode(
        {"iss": _ISSUER, "aud": "vault", "sub": _SUBJECT, "exp": int(time.time()) + 60},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    _rotate(path, forged)
    with pytest.raises(VaultError) as refused:
        await login.login()
    assert forged not in str(refused.value.message)
    path.unlink()
    with pytest.raises(VaultError, match="cannot read the service-account token file"):
        await login.login()


async def test_broker_on_kubernetes_auth_survives_revocation(
    stack: DevStack,
    sa_issuer: ServiceAccountIssuer,
    broker_settings: Settings,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    role = _role(stack, ttl="1h", max_ttl="2h")
    path = _token_file(tmp_path, sa_issuer.mint()[0])
    async with (
        running_broker(
            broker_settings,
            vault_token=None,
            vault_auth_method="kubernetes",
            vault_kubernetes_role=role,
            vault_kubernetes_token_path=path,
            replica_id="k8s-auth-test",
        ) as running,
        aiohttp.ClientSession() as http,
    ):
        await issue(http, running.url, tokens["alice"], "stripe/test")
        await issue(http, running.url, tokens["alice"], "db/orders-ro")
        root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
        revoked = 0
        for accessor in root.list("auth/token/accessors")["data"]["keys"]:
            meta = root.auth.token.lookup_accessor(accessor)["data"]
            if (meta.get("meta") or {}).get("role") == role:
                root.auth.token.revoke_accessor(accessor)
                revoked += 1
        assert revoked == 1, "the broker's one token was not found"
        _rotate(path, sa_issuer.mint()[0])
        await issue(http, running.url, tokens["alice"], "stripe/test")
        await issue(http, running.url, tokens["alice"], "db/orders-ro")
