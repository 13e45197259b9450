"""The Vault-API front door's one handler: classify the call, authenticate, then act.

Every secret read goes through the same services as the native API (``GrantService``,
``ElevationService``), so it is decided by the same policy and leaves the same ledger rows,
with ``client: {"api": "vault", "user_agent": ...}`` added to them. Nothing is forwarded to
Vault as-is: each supported call is re-made by the broker with its own Vault identity.

People sign in with ``bao login -method=oidc -path=<provider>``: the CLI's two calls
(``auth/<provider>/oidc/auth_url`` and ``/callback``) are ``SignIn.start`` and
``SignIn.finish`` (``broker.oidc``), so the session is the broker's own, as for
``broker login``. Such a session renews through the identity provider (groups re-read) and
its ``revoke-self`` is a logout.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from broker.auth import Principal
from broker.background import probe_dependencies
from broker.durations import parse_duration
from broker.errors import AuthError, BadRequest, Forbidden
from broker.grants import IssueRequest
from broker.grants.service import common_name_for
from broker.ledger import NewEvent
from broker.policy.decide import decide, roles_for
from broker.policy.model import CatalogEntry, validate_ssh_principals
from broker.sessions import Session
from broker.text import safe_text
from broker.web.authn import PRINCIPAL
from broker.web.keys import (
    AUTHN,
    ELEVATIONS,
    GRANTS,
    LEDGER,
    METRICS,
    POLICY,
    SESSIONS,
    SIGNIN,
    VAULT,
    VERIFIER,
)
from broker.web.middleware import REQUEST_ID

from .keys import BROKER_APP, INDEX, OIDC_MOUNTS
from .paths import OPERATION_ACCESS, CatalogIndex, Operation, catalog_index, mount_of, resolve
from .responses import vault_json

__all__ = ["OPERATION", "client_info", "handle"]

# The classified call, for the middleware's metrics label.
OPERATION = web.RequestKey("vault_operation", str)

_MAX_USER_AGENT = 200
_PKI_FIELDS = frozenset({"common_name", "ttl", "format"})
_MOUNT_TYPES = {"kv2": "kv", "database": "database", "pki": "pki", "ssh": "ssh"}
# What `bao write ssh/sign/<role>` may say; the rest (key id, extensions, options) is policy.
_SSH_FIELDS = frozenset({"public_key", "valid_principals", "ttl", "cert_type"})


def client_info(request: web.Request) -> dict[str, str]:
    agent = safe_text(request.headers.get("User-Agent", ""), _MAX_USER_AGENT)
    return {"api": "vault", "user_agent": agent}


def _index(app: web.Application) -> CatalogIndex:
    policy = app[BROKER_APP][POLICY].current
    cache = app[INDEX]
    if cache.version != policy.version:
        cache.index, cache.version = catalog_index(policy.catalog), policy.version
    return cache.index


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object body (empty if none). Vault clients send extra keys: ignored."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="malformed_json")
    return body


def _seconds(value: object, name: str) -> int | None:
    if value is None or value == "" or value == 0:
        return None
    try:
        return parse_duration(value)
    except (ValueError, BadRequest):  # negative, zero, absurd, not a duration
        message = f"{name} must be a duration like 3600 or '1h'"
        raise BadRequest(message, code="invalid_ttl") from None


def _token(request: web.Request) -> str | None:
    token = request.headers.get("X-Vault-Token")
    if token:
        return token
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth[:7].lower() == "bearer " else None


def _metadata_of(session: Session) -> dict[str, str]:
    """The token's metadata (Vault's is a string map): who, and where they signed in."""
    principal = session.principal
    return {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "role": session.login_role or "",
        **({"provider": session.provider} if session.provider else {}),
    }


def _auth_block(app: web.Application, token: str, session: Session) -> dict[str, Any]:
    principal = session.principal
    roles = sorted(r.name for r in roles_for(app[BROKER_APP][POLICY].current, principal))
    return {
        "client_token": token,
        "accessor": session.accessor,
        "policies": roles,
        "token_policies": roles,
        "identity_policies": [],
        "metadata": _metadata_of(session),
        "lease_duration": session.remaining(datetime.now(UTC)),
        "renewable": True,
        "entity_id": "",
        "token_type": "service",
        "orphan": True,
        "num_uses": 0,
    }


async def handle(request: web.Request) -> web.StreamResponse:
    app = request.app
    op = resolve(request.method, request.match_info["tail"], _index(app), app[OIDC_MOUNTS])
    request[OPERATION] = op.kind
    access = OPERATION_ACCESS.get(op.kind)
    if access is None:  # deny by default: every kind declares its access in paths
        raise _refusal(Operation("refused", detail="not_supported"))
    if not access.needs_token:
        match op.kind:
            case "health":
                return await _health(request, always_ok=op.detail == "seal_status")
            case "login":
                return await _login(request, op)
            case "oidc_auth_url":
                return await _oidc_auth_url(request, op)
            case "oidc_callback":
                return await _oidc_callback(request, op)
        raise _refusal(Operation("refused", detail="not_supported"))
    broker = app[BROKER_APP]
    token = _token(request)
    try:
        session = await broker[SESSIONS].authenticate(token)
    except AuthError as e:
        broker[AUTHN].count_failure(e.code)
        raise
    principal = session.principal
    request[PRINCIPAL] = principal  # refusals from here on are ledgered under the subject
    broker[AUTHN].refuse_if_offboarded(principal)
    match op.kind:
        case "token_lookup":
            return _lookup_self(request, token or "", session)
        case "token_renew":
            body = await _body(request)
            increment = _seconds(body.get("increment"), "increment")
            if session.provider is not None:
                # A sign-in renews at its identity provider, which says the groups anew (and
                # may refuse: then the session ends), as POST /v1/auth/session/renew does; by
                # the session TTL, whatever the increment.
                renewed = await broker[SIGNIN].renew(session, token or "", request_id=_rid(request))
            else:
                renewed = await broker[SESSIONS].renew(session, increment, request_id=_rid(request))
            return vault_json(auth=_auth_block(app, token or "", renewed))
        case "token_revoke":
            if session.provider is not None:  # a logout: the provider's refresh token goes too
                await broker[SIGNIN].logout(session, token or "", request_id=_rid(request))
            else:
                await broker[SESSIONS].revoke(session, request_id=_rid(request))
            return web.Response(status=204)
        case "mounts":
            return _mounts(request, principal)
        case "ui_mount":
            return _ui_mount(request, op)
        case "lease_renew" | "lease_revoke":
            return await _lease(request, op, principal)
        case "kv_read" | "db_creds" | "pki_issue" | "ssh_sign":
            return await _issue(request, op, principal)
        case "kv_metadata":
            return await _metadata(request, op, principal)
    raise _refusal(op)


def _rid(request: web.Request) -> str:
    return request[REQUEST_ID]


def _refusal(op: Operation) -> Forbidden:
    messages = {
        "read_only": "the broker's Vault API is read-only: writes are refused",
        "not_supported": "the broker's Vault API does not serve this path",
        "method_not_allowed": "this method is not supported on this path",
        "not_in_catalog": "permission denied: this path is not in the broker's catalog",
    }
    return Forbidden(messages.get(op.detail, "permission denied"), code=op.detail or "forbidden")


async def _health(request: web.Request, *, always_ok: bool) -> web.Response:
    """The broker's own readiness in Vault's shape: 200 when it can serve (Vault and the
    ledger answer), else 503 — what Vault says when it cannot (sealed), so load balancers
    and clients that probe ``sys/health`` move on to another replica. ``sys/seal-status``
    (``always_ok``) says the same in its body with a 200, as Vault does."""
    broker = request.app[BROKER_APP]
    up = await probe_dependencies(
        {"vault": broker[VAULT].health, "ledger": broker[LEDGER].ping},
        broker[METRICS],
        timeout=2.0,
    )
    ready = all(up.values())
    return web.json_response(
        {
            "initialized": True,
            "sealed": not ready,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(datetime.now(UTC).timestamp()),
            "version": "jit-broker",
            "cluster_name": "jit-broker",
            # sys/seal-status's fields, for clients that ask that instead.
            "type": "shamir",
            "t": 1,
            "n": 1,
            "progress": 0,
        },
        status=200 if ready or always_ok else 503,
    )


async def _login(request: web.Request, op: Operation) -> web.Response:
    app = request.app
    broker = app[BROKER_APP]
    body = await _body(request)
    jwt = body.get("jwt")
    role = body.get("role")
    if not isinstance(jwt, str) or not jwt:
        raise BadRequest("missing jwt", code="missing_jwt")
    if role is not None and not isinstance(role, str):
        raise BadRequest("role must be a string", code="invalid_role")
    try:
        principal = await broker[VERIFIER].verify(f"Bearer {jwt}")
    except AuthError as e:
        broker[AUTHN].count_failure(e.code)
        # Vault answers a failed JWT login with 400 "error validating token".
        raise BadRequest(f"error validating token: {e.message}", code=e.code) from None
    request[PRINCIPAL] = principal
    broker[AUTHN].refuse_if_offboarded(principal)
    token, session = await broker[SESSIONS].create(
        principal,
        mount=op.detail,
        login_role=safe_text(role, 64) if role else None,
        request_id=_rid(request),
        client=client_info(request),
    )
    return vault_json(auth=_auth_block(app, token, session))


# --- bao login -method=oidc --------------------------------------------------------------


def _opaque(value: object, name: str, shortest: int, longest: int) -> str:
    """A protocol string (a nonce, a state, a code, a redirect URI) within the bounds the
    native sign-in routes use: printable, no spaces."""
    if value is None or value == "":
        raise BadRequest(f"missing {name}", code=f"missing_{name}")
    if not (
        isinstance(value, str)
        and shortest <= len(value) <= longest
        and value.isprintable()
        and " " not in value
    ):
        raise BadRequest(
            f"{name} must be {shortest}..{longest} printable characters", code=f"invalid_{name}"
        )
    return value


async def _oidc_auth_url(request: web.Request, op: Operation) -> web.Response:
    """``auth/<provider>/oidc/auth_url {role, redirect_uri, client_nonce}`` -> the provider's
    authorization URL, as Vault's OIDC method answers it (``data.auth_url``). No ``state`` or
    ``poll_interval`` beside it: the CLI would take the login for a direct/device one."""
    body = await _body(request)
    redirect_uri = _opaque(body.get("redirect_uri"), "redirect_uri", 1, 2048)
    client_nonce = _opaque(body.get("client_nonce"), "client_nonce", 16, 128)
    role = body.get("role")
    if role is not None and not isinstance(role, str):
        raise BadRequest("role must be a string", code="invalid_role")
    started = await request.app[BROKER_APP][SIGNIN].start(
        op.detail,
        redirect_uri=redirect_uri,
        client_nonce=client_nonce,
        api="vault",
        login_role=safe_text(role, 64) if role else None,
    )
    return vault_json(data={"auth_url": started.auth_url})


async def _oidc_callback(request: web.Request, op: Operation) -> web.Response:
    """``GET auth/<provider>/oidc/callback?state&code&client_nonce`` -> a Vault ``auth``
    block with a broker session token. The pending login is taken once (a replay is
    ``invalid_state``) and names its provider; ``op.detail`` is only the mount it came in on."""
    query = request.query
    if not query.get("code"):
        # The provider redirected without a code (``?error=access_denied``): bao passes on
        # only state and code.
        request.app[BROKER_APP][AUTHN].count_failure("missing_code")
        raise BadRequest(
            "no authorization code in the callback: the sign-in was refused or cancelled at"
            " the identity provider; start again",
            code="missing_code",
        )
    state = _opaque(query.get("state"), "state", 1, 512)
    code = _opaque(query.get("code"), "code", 1, 4096)
    client_nonce = _opaque(query.get("client_nonce"), "client_nonce", 16, 128)
    signed_in = await request.app[BROKER_APP][SIGNIN].finish(
        state=state,
        code=code,
        client_nonce=client_nonce,
        request_id=_rid(request),
        client=client_info(request),
    )
    request[PRINCIPAL] = signed_in.session.principal
    return vault_json(auth=_auth_block(request.app, signed_in.token, signed_in.session))


def _lookup_self(request: web.Request, token: str, session: Session) -> web.Response:
    p = session.principal
    roles = sorted(r.name for r in roles_for(request.app[BROKER_APP][POLICY].current, p))
    now = datetime.now(UTC)
    return vault_json(
        data={
            "accessor": session.accessor,
            "creation_time": int(session.created_at.timestamp()),
            "creation_ttl": session.ttl_seconds,
            "display_name": f"{session.login_mount}-{p.subject}",
            "entity_id": "",
            "expire_time": session.expires_at.isoformat(),
            "explicit_max_ttl": int((session.max_expires_at - session.created_at).total_seconds()),
            "id": token,
            "issue_time": session.created_at.isoformat(),
            "meta": _metadata_of(session),
            "num_uses": 0,
            "orphan": True,
            "path": (
                f"auth/{session.login_mount}/oidc/callback"
                if session.provider
                else f"auth/{session.login_mount}/login"
            ),
            "policies": roles,
            "renewable": True,
            "ttl": session.remaining(now),
            "type": "service",
        }
    )


def _visible_entries(request: web.Request, principal: Principal) -> list[CatalogEntry]:
    """Catalog entries the caller may read now or after elevation."""
    policy = request.app[BROKER_APP][POLICY].current
    return [
        e
        for e in policy.catalog.values()
        if decide(policy, principal, e.name, None).outcome in ("allow", "elevation_required")
    ]


def _mount_info(entry: CatalogEntry) -> dict[str, Any]:
    return {
        "type": _MOUNT_TYPES[entry.engine],
        "options": {"version": "2"} if entry.engine == "kv2" else None,
        "description": "",
        "accessor": "",
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
        "local": False,
        "seal_wrap": False,
        "external_entropy_access": False,
        "uuid": "",
    }


def _mounts(request: web.Request, principal: Principal) -> web.Response:
    mounts = {
        e.mount.strip("/") + "/": _mount_info(e) for e in _visible_entries(request, principal)
    }
    # Vault returns the mounts both at the top level and under "data".
    return vault_json(data=mounts, top_level=mounts)


def _ui_mount(request: web.Request, op: Operation) -> web.Response:
    entry = mount_of(op.detail, request.app[BROKER_APP][POLICY].current.catalog)
    if entry is None:
        raise _refusal(Operation("refused", detail="not_in_catalog"))
    return vault_json(data={"path": entry.mount.strip("/") + "/", **_mount_info(entry)})


async def _issue(request: web.Request, op: Operation, principal: Principal) -> web.Response:
    assert op.entry is not None
    broker = request.app[BROKER_APP]
    entry = op.entry
    ttl: int | None = None
    if op.kind == "kv_read" and request.query.get("version") not in (None, "", "0"):
        raise BadRequest(
            "the broker hands out the current version only", code="version_not_supported"
        )
    if op.kind == "pki_issue":
        body = await _body(request)
        extra = sorted(set(body) - _PKI_FIELDS)
        wanted_cn = common_name_for(principal)
        if extra or body.get("common_name") not in (None, "", wanted_cn):
            raise Forbidden(
                "certificate names come from your identity: only common_name"
                f" ({wanted_cn!r}) and ttl may be given"
                + (f"; refused: {', '.join(k[:40] for k in extra[:5])}" if extra else ""),
                code="certificate_names_fixed",
            )
        ttl = _seconds(body.get("ttl"), "ttl")
    public_key: str | None = None
    principals: tuple[str, ...] | None = None
    if op.kind == "ssh_sign":
        ttl, public_key, principals = _ssh_fields(await _body(request))
    client = client_info(request)
    req = IssueRequest(
        secret=entry.name, ttl=ttl, client=client, public_key=public_key, principals=principals
    )
    policy = broker[POLICY].current
    decision = decide(policy, principal, entry.name, ttl, ssh_principals=req.ssh_principals)
    if decision.outcome == "elevation_required":
        elevation_id = await broker[ELEVATIONS].approved_for(principal, entry.name)
        if elevation_id is not None:
            grant = await broker[ELEVATIONS].redeem(
                principal,
                elevation_id,
                ttl,
                _rid(request),
                client=client,
                public_key=public_key,
                principals=principals,
            )
            return _grant_response(op, grant)
    try:
        grant = await broker[GRANTS].issue(
            principal,
            req,
            request_id=_rid(request),
            decision=decision,
        )
    except Forbidden as e:
        if e.code != "elevation_required":
            raise
        raise Forbidden(
            f"{entry.name!r} is privileged: request elevation first (`broker elevations"
            f" request {entry.name} --reason ...`, or POST /v1/elevations on the broker API);"
            " once approved, repeat this call within the window",
            code="elevation_required",
            recorded=True,
        ) from None
    return _grant_response(op, grant)


def _ssh_fields(body: dict[str, Any]) -> tuple[int | None, str, tuple[str, ...] | None]:
    """(ttl, public key, principals) of an ``ssh/sign`` body, as Vault's CLI sends it."""
    extra = sorted(set(body) - _SSH_FIELDS)
    if extra:
        raise Forbidden(
            "the certificate's key id, extensions and options come from policy: only"
            " public_key, valid_principals and ttl may be given; refused: "
            + ", ".join(k[:40] for k in extra[:5]),
            code="certificate_terms_fixed",
        )
    if body.get("cert_type") not in (None, "", "user"):
        raise BadRequest("only user certificates are signed", code="user_certificates_only")
    key = body.get("public_key")
    if not isinstance(key, str) or not key.strip():  # its other bounds: parse_public_key
        raise BadRequest(
            "public_key is required: one OpenSSH public key line", code="public_key_required"
        )
    raw = body.get("valid_principals")
    principals: tuple[str, ...] | None = None
    if raw not in (None, ""):
        if not isinstance(raw, str) or len(raw) > 2048:
            raise BadRequest(
                "valid_principals must be a comma-separated list", code="invalid_principals"
            )
        principals = tuple(p.strip() for p in raw.split(",") if p.strip())
        if not validate_ssh_principals(principals):
            raise BadRequest(
                "valid_principals must be 1-32 names like 'deploy' or 'root'",
                code="invalid_principals",
            )
    return _seconds(body.get("ttl"), "ttl"), key, principals


def _grant_response(op: Operation, grant: dict[str, Any]) -> web.Response:
    credential = grant["credential"]
    expires = datetime.fromisoformat(grant["expires_at"])
    left = max(0, int((expires - datetime.now(UTC)).total_seconds()))
    warnings = [f"broker grant {grant['id']} ends at {grant['expires_at']}"]
    if op.kind == "ssh_sign":
        return vault_json(
            data={
                "serial_number": format(int(credential["serial_number"]), "x"),
                "signed_key": credential["signed_key"] + "\n",
            },
            warnings=warnings,
        )
    if op.kind == "kv_read":
        metadata = {
            "version": credential.get("version"),
            "created_time": "",
            "deletion_time": "",
            "destroyed": False,
            "custom_metadata": None,
        }
        return vault_json(
            data={"data": credential["data"], "metadata": metadata}, warnings=warnings
        )
    if op.kind == "db_creds":
        return vault_json(
            data=credential,
            lease_id=grant["lease_id"] or "",
            renewable=True,
            lease_duration=left,
            warnings=warnings,
        )
    return vault_json(
        data={**credential, "expiration": int(expires.timestamp())}, warnings=warnings
    )


async def _metadata(request: web.Request, op: Operation, principal: Principal) -> web.Response:
    assert op.entry is not None
    broker = request.app[BROKER_APP]
    policy = broker[POLICY].current
    decision = decide(policy, principal, op.entry.name, None)
    if decision.outcome not in ("allow", "elevation_required"):
        raise Forbidden(decision.message, code="denied")
    metadata = await broker[VAULT].read_kv2_metadata(op.entry.mount, op.entry.path)
    await broker[LEDGER].append(
        NewEvent(
            event="secret.metadata_read",
            outcome="ok",
            subject=principal.subject,
            subject_kind=principal.kind,
            secret=op.entry.name,
            policy_version=policy.version,
            request_id=_rid(request),
            body={"client": client_info(request)},
        )
    )
    return vault_json(data=metadata)


async def _lease(request: web.Request, op: Operation, principal: Principal) -> web.Response:
    broker = request.app[BROKER_APP]
    body = await _body(request)
    lease_id = op.detail or body.get("lease_id")
    if not isinstance(lease_id, str) or not lease_id or len(lease_id) > 512:
        raise BadRequest("lease_id is required", code="missing_lease_id")
    if op.kind == "lease_revoke":
        await broker[GRANTS].revoke_lease(
            principal, lease_id, request_id=_rid(request), reason="revoked through the Vault API"
        )
        return web.Response(status=204)
    duration = await broker[GRANTS].renew_lease(
        principal,
        lease_id,
        _seconds(body.get("increment"), "increment"),
        request_id=_rid(request),
        client=client_info(request),
    )
    return vault_json(lease_id=lease_id, renewable=True, lease_duration=duration)
