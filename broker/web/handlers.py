"""Thin HTTP handlers: parse, authenticate, call a service, shape JSON. No business rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from broker.auth import Principal
from broker.background import probe_dependencies
from broker.errors import BadRequest, Forbidden, NotFound
from broker.grants import IssueRequest
from broker.ledger import verify_ledger
from broker.policy.decide import capabilities, requestable, roles_for

from .inputs import optional_text, parse_ttl, query_text, read_object, require_secret, ticket
from .keys import (
    AUTHN,
    CHECKPOINT_VERIFIER,
    GRANTS,
    LEDGER,
    METRICS,
    POLICY,
    SETTINGS,
    VAULT,
)
from .middleware import REQUEST_ID
from .openapi import openapi_document

__all__ = [
    "authenticated",
    "get_grants",
    "get_health",
    "get_liveness",
    "get_me",
    "get_metrics",
    "get_openapi",
    "get_verify",
    "page_size",
    "post_credentials",
    "revoke_grant",
]

_ISSUE_FIELDS = frozenset({"secret", "reason", "ticket", "ttl"})


async def authenticated(request: web.Request) -> Principal:
    return await request.app[AUTHN].authenticate(request)


def _require(request: web.Request, principal: Principal, capability: str) -> None:
    if capability not in capabilities(request.app[POLICY].current, principal):
        raise Forbidden(f"this endpoint needs the {capability!r} capability", code="forbidden")


async def post_credentials(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    settings = request.app[SETTINGS]
    body = await read_object(request, _ISSUE_FIELDS)
    issue = IssueRequest(
        secret=require_secret(body),
        reason=optional_text(body, "reason", settings.max_reason_chars),
        ticket=ticket(body),
        ttl=parse_ttl(body),
    )
    grant = await request.app[GRANTS].issue(principal, issue, request_id=request[REQUEST_ID])
    return web.json_response(grant, status=201, headers={"Cache-Control": "no-store"})


async def get_me(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    policy = request.app[POLICY].current
    return web.json_response(
        {
            "subject": principal.subject,
            "kind": principal.kind,
            "issuer": principal.issuer,
            "groups": sorted(principal.groups),
            "roles": [r.name for r in roles_for(policy, principal)],
            "capabilities": sorted(capabilities(policy, principal)),
            "requestable": requestable(policy, principal),
            "policy_version": policy.version,
        }
    )


def page_size(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    maximum = request.app[SETTINGS].max_page_size
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"'limit' must be 1..{maximum}", code="invalid_limit")
    return int(raw)


async def get_grants(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    active = request.query.get("active", "false")
    if active not in ("true", "false"):
        raise BadRequest("'active' must be true or false", code="invalid_active")
    records = await request.app[GRANTS].list_grants(
        principal, active_only=active == "true", limit=page_size(request)
    )
    now = datetime.now(UTC)
    return web.json_response({"grants": [r.to_json(now) for r in records]})


async def revoke_grant(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    try:
        grant_id = uuid.UUID(request.match_info["grant_id"])
    except ValueError:
        raise NotFound("no such grant", code="grant_not_found") from None
    reason = query_text(request, "reason", request.app[SETTINGS].max_reason_chars)
    result = await request.app[GRANTS].revoke(
        principal, grant_id, request_id=request[REQUEST_ID], reason=reason
    )
    return web.json_response(result)


async def get_liveness(request: web.Request) -> web.Response:
    """Alive: the process answers. No dependency is probed, so an outage of Vault or the
    ledger takes replicas out of rotation (readiness) without restarting them all."""
    return web.json_response(
        {"status": "alive", "replica": request.app[SETTINGS].replica_id}
    )


async def get_health(request: web.Request) -> web.Response:
    up = await probe_dependencies(
        {"vault": request.app[VAULT].health, "ledger": request.app[LEDGER].ping},
        request.app[METRICS],
        timeout=2.0,
    )
    ok = all(up.values())
    return web.json_response(
        {
            "status": "ok" if ok else "unavailable",
            "checks": {name: "ok" if v else "unavailable" for name, v in up.items()},
            "replica": request.app[SETTINGS].replica_id,
            "policy_version": request.app[POLICY].current.version,
        },
        status=200 if ok else 503,
    )


async def get_verify(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    _require(request, principal, "audit")
    ledger = request.app[LEDGER]
    async with ledger.pool.acquire() as conn:
        report = await verify_ledger(
            conn, verifier=request.app[CHECKPOINT_VERIFIER], origin=ledger.origin
        )
    request.app[METRICS].ledger_verifications.labels("ok" if report.ok else "failed").inc()
    return web.json_response(report.to_json())


async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
