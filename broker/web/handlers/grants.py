"""Credentials and grants: issue, list, revoke; and who the caller is."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from broker.grants import IssueRequest
from broker.policy.decide import capabilities, requestable, roles_for

from ..authn import principal_of, session_of
from ..keys import GRANTS, POLICY, QUOTAS
from ..middleware import REQUEST_ID
from ..models import CredentialRequest, GrantListQuery, RevokeQuery
from ..route import body_of, query_of
from . import json_reply, path_uuid
from .signin import session_info

__all__ = ["get_grants", "get_me", "post_credentials", "revoke_grant"]


async def post_credentials(request: web.Request) -> web.Response:
    body = body_of(request, CredentialRequest)
    issue = IssueRequest(
        secret=body.secret,
        reason=body.reason,
        ticket=body.ticket,
        ttl=body.ttl,
        public_key=body.public_key,
        principals=body.principals,
    )
    grant = await request.app[GRANTS].issue(
        principal_of(request), issue, request_id=request[REQUEST_ID]
    )
    return json_reply(grant, status=201, headers={"Cache-Control": "no-store"})


async def get_me(request: web.Request) -> web.Response:
    principal, session = principal_of(request), session_of(request)
    policy = request.app[POLICY].current
    return json_reply(
        {
            "subject": principal.subject,
            "kind": principal.kind,
            "issuer": principal.issuer,
            "groups": sorted(principal.groups),
            "roles": [r.name for r in roles_for(policy, principal)],
            "capabilities": sorted(capabilities(policy, principal)),
            "requestable": requestable(policy, principal),
            "policy_version": policy.version,
            "limits": await request.app[QUOTAS].usage(principal),
            # Only for a signed-in person: a service's JWT has no session.
            **({"session": session_info(session)} if session is not None else {}),
        }
    )


async def get_grants(request: web.Request) -> web.Response:
    query = query_of(request, GrantListQuery)
    records = await request.app[GRANTS].list_grants(
        principal_of(request), active_only=query.active == "true", limit=query.limit
    )
    now = datetime.now(UTC)
    return json_reply({"grants": [r.to_json(now) for r in records]})


async def revoke_grant(request: web.Request) -> web.Response:
    grant_id = path_uuid(request, "grant_id", code="grant_not_found", thing="grant")
    result = await request.app[GRANTS].revoke(
        principal_of(request),
        grant_id,
        request_id=request[REQUEST_ID],
        reason=query_of(request, RevokeQuery).reason,
    )
    return json_reply(result)
