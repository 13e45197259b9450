"""The Vault-compatible front door: a second aiohttp app on its own port.

Its own port (not a ``/v1/`` namespace of the broker API) because Vault's paths are
``/v1/<mount>/...`` and a mount may be named anything, including ``credentials`` or
``audit``. It shares the broker app's services and ledger; ``start_vault_api`` starts it
after the broker app's ``cleanup_ctx`` has built them, and the caller stops it first.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.errors import BrokerError
from broker.logs import REQUEST_ID_VAR, log_access
from broker.web.access import per_operation
from broker.web.authn import PRINCIPAL
from broker.web.keys import CLOCK, LEDGER, METRICS, OFFBOARDING, SETTINGS
from broker.web.middleware import REQUEST_ID, record_rejection
from broker.web.route import Route, install

from .handlers import OPERATION, client_info, handle
from .keys import BROKER_APP, INDEX, SESSIONS, IndexCache
from .responses import vault_error, vault_status
from .sessions import SessionStore

__all__ = ["create_vault_api", "start_vault_api"]

_log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _vault_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Vault-shaped errors; refusals of a known subject ledgered, as on the native API."""
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    request_id_context = REQUEST_ID_VAR.set(request_id)  # every log line of this request
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except BrokerError as e:
        answer = e
        if 400 <= e.status < 500 and e.status != 401 and not e.recorded:
            try:
                await record_rejection(
                    request.app[BROKER_APP][LEDGER], request, e, client=client_info(request)
                )
            except BrokerError as ledger_error:
                answer = ledger_error
        status = vault_status(answer)
        return vault_error(status, answer.message, answer.code, request_id)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        status = e.status
        return vault_error(e.status, e.reason, "http_error", request_id)
    except Exception:
        _log.exception("unhandled error in the Vault API (request %s)", request_id)
        return vault_error(500, "internal error", "internal", request_id)
    finally:
        broker = request.app[BROKER_APP]
        # The operation, never the raw path (it can name secrets a caller probed for).
        route = f"vault-api:{request.get(OPERATION, 'unmatched')}"
        method = request.method if request.method.isalpha() and len(request.method) < 9 else "OTHER"
        elapsed = time.perf_counter() - started
        broker[METRICS].observe_http(route, method, status, elapsed)
        principal = request.get(PRINCIPAL)
        log_access(method, route, status, elapsed, principal.subject if principal else None)
        REQUEST_ID_VAR.reset(request_id_context)


async def _sessions(app: web.Application) -> None:
    broker = app[BROKER_APP]
    settings = broker[SETTINGS]
    app[SESSIONS] = SessionStore(
        broker[LEDGER],
        ttl_seconds=settings.vault_api_session_ttl_seconds,
        max_ttl_seconds=settings.vault_api_session_max_ttl_seconds,
        recheck_seconds=settings.vault_api_session_recheck_seconds,
        clock=broker[CLOCK],
        ended=broker[OFFBOARDING],  # offboarding ends every session of its subject
    )


def create_vault_api(broker: web.Application) -> web.Application:
    """The front door over ``broker``'s services (which must be started before this app)."""
    settings = broker[SETTINGS]
    app = web.Application(middlewares=[_vault_errors], client_max_size=settings.max_body_bytes)
    app[BROKER_APP] = broker
    app[SETTINGS] = settings
    app[INDEX] = IndexCache()
    app.on_startup.append(_sessions)
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
