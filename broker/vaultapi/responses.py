"""Vault-shaped response and error bodies, so unmodified Vault clients parse them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from broker.errors import BrokerError
from broker.logs import REQUEST_ID_VAR

__all__ = ["vault_error", "vault_json", "vault_status"]

# hvac and the Vault CLI turn these statuses into their own clean errors (InvalidRequest,
# Forbidden, InvalidPath, VaultDown...). Vault says 403 for a bad or missing token, and
# 400 for a failed JWT login; it has no 401 or 409 of its own.
_STATUS = {401: 403, 409: 400, 413: 400, 415: 400, 422: 400, 502: 503, 504: 503}


def vault_status(error: BrokerError) -> int:
    return _STATUS.get(error.status, error.status)


def vault_error(status: int, message: str, code: str, request_id: str) -> web.Response:
    """``{"errors": [...]}`` with the broker's reason code kept in the text."""
    return web.json_response(
        {"errors": [f"{message} ({code})"]},
        status=status,
        headers={"X-Request-Id": request_id, "Cache-Control": "no-store"},
    )


def vault_json(
    *,
    data: Any = None,
    auth: dict[str, Any] | None = None,
    lease_id: str = "",
    renewable: bool = False,
    lease_duration: int = 0,
    warnings: list[str] | None = None,
    request_id: str | None = None,
    top_level: Mapping[str, Any] | None = None,
) -> web.Response:
    """The envelope every Vault response has (``data`` / ``auth`` / lease fields).

    ``top_level``: keys some endpoints also repeat beside the envelope (``sys/mounts``).
    """
    return web.json_response(
        {
            **(top_level or {}),
            # The id the middleware gave this request (also in the X-Request-Id header).
            "request_id": request_id or REQUEST_ID_VAR.get() or str(uuid.uuid4()),
            "lease_id": lease_id,
            "renewable": renewable,
            "lease_duration": lease_duration,
            "data": data,
            "wrap_info": None,
            "warnings": warnings,
            "auth": auth,
        },
        headers={"Cache-Control": "no-store"},
    )
