"""The requester's pages: what I may ask for, a credential shown once, my grants."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from broker.grants import IssueRequest
from broker.policy.decide import requestable, roles_for
from broker.web.authn import principal_of
from broker.web.handlers import path_uuid
from broker.web.keys import GRANTS, POLICY
from broker.web.middleware import REQUEST_ID
from broker.web.models import CredentialRequest
from broker.web.route import body_of

from ..render import page, redirect

__all__ = ["home", "issue_credential", "revoke_grant"]

_CLIENT = {"api": "console"}


async def home(request: web.Request) -> web.Response:
    principal = principal_of(request)
    policy = request.app[POLICY].current
    grants = await request.app[GRANTS].list_grants(principal, active_only=True, limit=50)
    now = datetime.now(UTC)
    return page(
        request,
        "home.html",
        roles=[r.name for r in roles_for(policy, principal)],
        requestable=requestable(policy, principal),
        # A certificate needs the person's own public key: `broker ssh` has it, a form not.
        ssh_secrets={e.name for e in policy.catalog.values() if e.engine == "ssh"},
        grants=[g.to_json(now) for g in grants],
    )


async def issue_credential(request: web.Request) -> web.Response:
    body = body_of(request, CredentialRequest)
    grant = await request.app[GRANTS].issue(
        principal_of(request),
        IssueRequest(
            secret=body.secret,
            reason=body.reason,
            ticket=body.ticket,
            ttl=body.ttl,
            client=_CLIENT,
        ),
        request_id=request[REQUEST_ID],
    )
    # Shown once: the page is no-store and the credential is never in a URL.
    return page(
        request,
        "credential.html",
        status=201,
        grant=grant,
        fields=shown_fields(grant["credential"]),
    )


def shown_fields(credential: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a person copies: a KV secret's keys, a login's username and password, a
    certificate's parts; lists joined one per line."""
    data = credential.get("data")
    source = data if isinstance(data, Mapping) else credential
    return [
        (str(key), "\n".join(map(str, value)) if isinstance(value, list) else str(value))
        for key, value in source.items()
        if value is not None
    ]


async def revoke_grant(request: web.Request) -> web.Response:
    grant_id = path_uuid(request, "grant_id", code="grant_not_found", thing="grant")
    await request.app[GRANTS].revoke(
        principal_of(request), grant_id, request_id=request[REQUEST_ID], reason="console"
    )
    return redirect(request, "/console/")
