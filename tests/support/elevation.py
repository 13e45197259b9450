"""The elevation API as ``(status, body)`` results, and the checks its tests share.

``nothing_minted`` is the check that matters for every refusal: no new OpenBao lease for
the privileged orders login and no new ``grant.intent``/``grant.issued`` ledger row.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from broker.stack.devstack import DevStack
from tests.support.backends import admin_leases, db_login
from tests.support.http import JsonApi
from tests.support.ledger import count_events, ledger_rows, session_ledger_dsn

__all__ = [
    "REASON",
    "SRE_ONE",
    "ElevationApi",
    "can_insert_order",
    "elevation_rows",
    "events_of",
    "nothing_minted",
]

REASON = "reindex orders after the 2am incident"
SRE_ONE = [{"approver_groups": ["sre-leads"], "approvals": 1}]


class ElevationApi(JsonApi):
    """The elevation endpoints of one broker; ``*ed`` methods assert success and return it."""

    async def request(self, token: str, **body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/elevations", token, body)

    async def requested(self, token: str, **body: Any) -> dict[str, Any]:
        body.setdefault("reason", REASON)
        status, out = await self.request(token, **body)
        assert status == 201, out
        return dict(out)

    async def get(self, token: str, eid: str) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/elevations/{eid}", token)

    async def status_of(self, token: str, eid: str) -> str:
        status, el = await self.get(token, eid)
        assert status == 200, el
        return str(el["status"])

    async def list(self, token: str, query: str = "") -> list[dict[str, Any]]:
        status, out = await self.call("GET", f"/v1/elevations{query}", token)
        assert status == 200, out
        return list(out["elevations"])

    async def act(self, verb: str, token: str, eid: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/elevations/{eid}/{verb}", token, body)

    async def approve(self, token: str, eid: str, comment: str | None = None) -> tuple[int, Any]:
        return await self.act("approve", token, eid, {"comment": comment} if comment else None)

    async def approved(self, token: str, eid: str) -> dict[str, Any]:
        status, out = await self.approve(token, eid, "looks right")
        assert status == 200, out
        return dict(out)

    async def deny(self, token: str, eid: str, comment: str | None = None) -> tuple[int, Any]:
        return await self.act("deny", token, eid, {"comment": comment} if comment else None)

    async def cancel(self, token: str, eid: str) -> tuple[int, Any]:
        return await self.act("cancel", token, eid)

    async def review(self, token: str, eid: str, comment: str | None = None) -> tuple[int, Any]:
        return await self.act("review", token, eid, {"comment": comment} if comment else None)

    async def redeem(self, token: str, eid: str, **body: Any) -> tuple[int, Any]:
        return await self.act("credentials", token, eid, body or None)

    async def redeemed(self, token: str, eid: str, **body: Any) -> dict[str, Any]:
        status, out = await self.redeem(token, eid, **body)
        assert status == 201, out
        return dict(out)

    async def revoke_grant(self, token: str, grant_id: str) -> None:
        status, out = await self.call("DELETE", f"/v1/grants/{grant_id}", token)
        assert status in (200, 409), out


async def elevation_rows(stack: DevStack, eid: str) -> list[dict[str, Any]]:
    """Every ledger row of one elevation (incl. grants minted under it), in order."""
    return await ledger_rows(stack, "e.body->>'elevation_id' = $1", eid)


def events_of(rows: list[dict[str, Any]]) -> list[str]:
    return [r["event"] for r in rows]


_MINTING = "e.event IN ('grant.issued', 'grant.intent')"


@contextlib.asynccontextmanager
async def nothing_minted(stack: DevStack) -> AsyncIterator[None]:
    """Asserts the block minted nothing: no new admin lease, no issued/intent row."""
    leases = await admin_leases(stack)
    issued = await count_events(session_ledger_dsn(stack), _MINTING)
    yield
    assert await count_events(session_ledger_dsn(stack), _MINTING) == issued
    assert await admin_leases(stack) - leases == set()


async def can_insert_order(stack: DevStack, cred: dict[str, str]) -> None:
    """Logs in with the credential and INSERTs (rolled back): the admin role works."""
    conn = await db_login(stack, cred["username"], cred["password"])
    try:
        tr = conn.transaction()
        await tr.start()
        new_id = await conn.fetchval(
            "INSERT INTO public.orders (customer, amount_cents) VALUES ('elev-test', 1)"
            " RETURNING id"
        )
        assert new_id is not None
        await tr.rollback()
    finally:
        await conn.close()
