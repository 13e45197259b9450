"""The Vault-compatible front door: a second aiohttp app on its own port.

Its own port (not a ``/v1/`` namespace of the broker API) because Vault's paths are
``/v1/<mount>/...`` and a mount may be named anything, including ``credentials`` or
``audit``. It shares the broker app's services and ledger; ``start_vault_api`` starts it
after the broker app's ``cleanup_ctx`` has built them, and the caller stops it first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.web.access import per_operation
from broker.web.keys import SETTINGS
from broker.web.middleware import FrontEnd, request_context
from broker.web.route import Route, install

from .handlers import OPERATION, client_info, handle
from .keys import BROKER_APP, INDEX, OIDC_MOUNTS, IndexCache
from .responses import vault_error, vault_status

__all__ = ["create_vault_api", "start_vault_api"]

_log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _operation_label(request: web.Request) -> str:
    # The operation, never the raw path (it can name secrets a caller probed for).
    return f"vault-api:{request.get(OPERATION, 'unmatched')}"


# Vault-shaped errors; refusals of a known subject ledgered, as on the native API.
_VAULT_API = FrontEnd(
    name="Vault API",
    request_id=lambda _: uuid.uuid4().hex,
    answer=lambda status, code, message, request_id: vault_error(status, message, code, request_id),
    status_of=vault_status,
    http_code=lambda _: "http_error",
    route_label=_operation_label,
    broker_app=lambda app: app[BROKER_APP],
    client=client_info,
)


def create_vault_api(broker: web.Application) -> web.Application:
    """The front door over ``broker``'s services (which must be started before this app)."""
    settings = broker[SETTINGS]
    app = web.Application(
        middlewares=[request_context(_VAULT_API)], client_max_size=settings.max_body_bytes
    )
    app[BROKER_APP] = broker
    app[SETTINGS] = settings
    app[INDEX] = IndexCache()
    app[OIDC_MOUNTS] = frozenset(p.name for p in settings.oidc_providers)
    install(
        app,
        [
            Route(
                "*",
                "/v1/{tail:.*}",
                handle,
                per_operation("OPERATION_ACCESS, the access column in broker.vaultapi.paths"),
                "vaultApi",
                "Vault-compatible calls (classified by broker.vaultapi.paths)",
            )
        ],
    )
    return app


async def start_vault_api(broker: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve the front door on ``host:port`` (0 = any free port); the caller cleans it up."""
    runner = web.AppRunner(create_vault_api(broker), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    return runner
