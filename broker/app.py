"""The application factory: ``create_app(settings)`` wires every part; no I/O at import.

``cleanup_ctx`` owns every pool, client and background task, in start order, and tears
them down in reverse. Handlers reach them only through the typed keys in ``web.keys``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from aiohttp import web

from broker import __version__
from broker.auth import DevIssuer, IssuerConfig, Verifier
from broker.background import (
    Checkpointer,
    Periodic,
    flush_auth_failures,
    probe_dependencies,
)
from broker.elevation import ElevationService
from broker.grants import GrantService
from broker.ledger import (
    CheckpointSigner,
    CheckpointVerifier,
    Ledger,
    LedgerWriter,
    NewEvent,
    connect_pool,
    load_or_create_signing_key,
)
from broker.logs import quiet_parser_errors
from broker.metrics import Metrics
from broker.notify import WebhookNotifier
from broker.offboarding import OffboardingService, SubjectBlocklist
from broker.policy.active import ActivePolicy
from broker.policy.model import PolicySet
from broker.settings import Settings
from broker.vault import VaultClient
from broker.vault.login import vault_login_for
from broker.web.authn import Authenticator
from broker.web.keys import (
    AUTHN,
    CHECKPOINT_VERIFIER,
    CLOCK,
    ELEVATIONS,
    GRANTS,
    LEDGER,
    METRICS,
    OFFBOARDING,
    OPENAPI,
    POLICY,
    SETTINGS,
    VAULT,
    VERIFIER,
)
from broker.web.middleware import middlewares
from broker.web.openapi import openapi_document
from broker.web.route import install
from broker.web.routes import ROUTES

__all__ = ["create_app", "issuer_configs"]

_log = logging.getLogger(__name__)


def issuer_configs(settings: Settings) -> list[IssuerConfig]:
    """Trusted issuers from settings, plus the local dev issuer when one is configured."""
    configs = [
        IssuerConfig(
            issuer=i.issuer,
            audience=i.audience,
            algorithms=i.algorithms,
            jwks_url=i.jwks_url,
            public_keys=i.public_keys,
            groups_claim=i.groups_claim,
        )
        for i in settings.issuers
    ]
    if settings.dev_issuer_key_path is not None:
        configs.append(DevIssuer.load_or_create(settings.dev_issuer_key_path).issuer_config())
    if not configs:
        raise ValueError("no trusted JWT issuer configured (BROKER_TRUSTED_ISSUERS)")
    return configs


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    login = vault_login_for(settings)  # token, AppRole or Kubernetes
    await login.login()
    signer = CheckpointSigner(
        settings.checkpoint_key_name,
        load_or_create_signing_key(settings.checkpoint_key_path, create=False),
    )
    app[CHECKPOINT_VERIFIER] = CheckpointVerifier(
        [signer.verifier_key(), *settings.checkpoint_verifier_keys]
    )
    pool = await connect_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max,
        timeout=settings.db_timeout_seconds,
    )
    writer = LedgerWriter(
        pool,
        replica=settings.replica_id,
        max_batch=settings.ledger_max_batch,
        max_queue=settings.ledger_max_queue,
        commit_timeout=settings.ledger_commit_timeout_seconds,
        on_commit=metrics.on_ledger_commit,
        # Stay on the guarded path after another replica appended until this replica's
        # offboarding blocklist has surely refreshed (see LedgerWriter).
        contended_seconds=settings.blocklist_refresh_seconds + 1.0,
    )
    writer.start()
    metrics.ledger_queue_depth.set_function(lambda: writer.queue_depth)
    metrics.ledger_queue_capacity.set(writer.queue_capacity)
    ledger = Ledger(pool, writer, origin=settings.ledger_origin)
    app[LEDGER] = ledger
    from broker.audit import AccessAudit
    from broker.web.keys import AUDIT_ACCESS

    app[AUDIT_ACCESS] = AccessAudit(ledger)
    vault = VaultClient(
        settings.vault_addr,
        login.token,
        timeout=settings.vault_timeout_seconds,
        max_connections=settings.vault_max_connections,
        on_call=metrics.on_vault_call,
        on_token_rejected=login.relogin_after_rejection,
    )
    await vault.start()
    app[VAULT] = vault

    async def record_policy(policy: PolicySet) -> None:
        await ledger.record_policy_version(policy.version, policy.documents)
        await ledger.append(
            NewEvent(
                event="policy.loaded",
                outcome="active",
                policy_version=policy.version,
                body={"files": policy.to_json()["files"]},
            )
        )

    def on_reload(outcome: str, policy: PolicySet | None) -> None:
        metrics.policy_reloads.labels(outcome).inc()
        if policy is not None:
            metrics.policy_info.clear()
            metrics.policy_info.labels(policy.version).set(1)

    active = ActivePolicy(
        settings.policies_dir,
        max_file_bytes=settings.policy_max_file_bytes,
        record=record_policy,
        on_reload=on_reload,
    )
    verifier = Verifier(
        issuer_configs(settings),
        max_token_bytes=settings.max_token_bytes,
        leeway_seconds=settings.jwt_leeway_seconds,
    )
    app[VERIFIER] = verifier
    blocklist = SubjectBlocklist(ledger, metrics)
    app[AUTHN] = Authenticator(verifier, metrics, blocklist=blocklist)
    app[POLICY] = active
    notifier = WebhookNotifier(
        settings.webhook_urls,
        timeout=settings.webhook_timeout_seconds,
        max_attempts=settings.webhook_max_attempts,
        on_result=lambda kind, outcome: metrics.webhook_deliveries.labels(kind, outcome).inc(),
    )
    await notifier.start()
    periodic = Periodic()
    checkpointer: Checkpointer | None = None  # set once start-up gets that far
    try:
        await active.load()
        app[GRANTS] = GrantService(
            ledger=ledger,
            vault=vault,
            policy=active,
            metrics=metrics,
            issue_guard=blocklist.issue_guard,
        )
        app[ELEVATIONS] = ElevationService(
            ledger=ledger,
            policy=active,
            grants=app[GRANTS],
            metrics=metrics,
            notifier=notifier,
            clock=app[CLOCK],
        )
        app[OFFBOARDING] = OffboardingService(
            ledger=ledger,
            grants=app[GRANTS],
            policy=active,
            blocklist=blocklist,
            sla_seconds=settings.offboarding_sla_seconds,
            settle_seconds=settings.blocklist_refresh_seconds,
            max_skew_seconds=settings.jwt_leeway_seconds,
            session_max_ttl_seconds=settings.vault_api_session_max_ttl_seconds,
            clock=app[CLOCK],
        )
        # Never serve before knowing who is offboarded; then follow the ledger.
        await blocklist.refresh()
        periodic.every(
            settings.blocklist_refresh_seconds, "offboarding-blocklist", blocklist.refresh
        )
        await ledger.append(
            NewEvent(event="broker.started", outcome="ok", body={"version": __version__})
        )
        checkpointer = Checkpointer(
            ledger, signer, metrics, witness_path=settings.checkpoint_witness_path
        )
        periodic.every(settings.checkpoint_interval_seconds, "checkpoint", checkpointer.run_once)
        periodic.every(settings.expiry_sweep_interval_seconds, "expiry", app[GRANTS].expire_due)
        periodic.every(settings.vault_login_check_seconds, "vault-login", login.maintain)
        periodic.every(
            settings.dependency_probe_seconds,
            "dependency-probe",
            lambda: probe_dependencies(
                {"vault": vault.health, "ledger": ledger.ping}, metrics, timeout=2.0
            ),
        )
        periodic.every(
            settings.orphan_lease_sweep_seconds,
            "orphan-leases",
            app[GRANTS].reconcile_orphan_leases,
        )
        periodic.every(settings.elevation_sweep_seconds, "elevation-sweep", app[ELEVATIONS].sweep)
        periodic.every(
            settings.policy_reload_interval_seconds, "policy-reload", active.reload_if_changed
        )
        from broker.reviews import ReviewService
        from broker.web.keys import REVIEWS

        app[REVIEWS] = ReviewService(ledger=ledger, policy=active, clock=app[CLOCK])
        # Review action items resolve when a new policy version drops them (a no-op until
        # the version changes), checked at the policy-reload pace on every replica.
        periodic.every(
            settings.policy_reload_interval_seconds,
            "review-actions",
            app[REVIEWS].resolve_actions,
        )
        periodic.every(
            settings.auth_failure_flush_seconds,
            "auth-failures",
            lambda: flush_auth_failures(ledger, app[AUTHN]),
        )
        from broker.evidence.continuity import append_heartbeat, gap_threshold

        gap_threshold(settings.heartbeat_seconds)  # refuses a non-positive interval
        periodic.every(
            settings.heartbeat_seconds,
            "heartbeat",
            lambda: append_heartbeat(
                ledger,
                replica=settings.replica_id,
                interval_seconds=settings.heartbeat_seconds,
                metrics=metrics,
            ),
        )
        yield
    finally:
        await periodic.stop()
        try:
            await flush_auth_failures(ledger, app[AUTHN])
            await ledger.append(NewEvent(event="broker.stopped", outcome="ok"))
            if checkpointer is not None:
                await checkpointer.run_once()
        except Exception as e:  # shutting down with the ledger gone: nothing more to save
            _log.warning("could not record shutdown: %s", type(e).__name__)
        await notifier.close()
        await writer.stop()
        await vault.close()
        await verifier.close()
        await pool.close()


def create_app(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> web.Application:
    """Build the broker app. Start-up I/O happens in ``cleanup_ctx`` when it runs.

    ``clock`` (default: UTC now) drives elevation expiry decisions; tests move it.
    """
    app = web.Application(
        middlewares=middlewares(),
        client_max_size=settings.max_body_bytes,
        # Let oversized tokens reach the verifier, which answers token_too_large in JSON,
        # instead of aiohttp's plain-text 400 at its 8190-byte header default.
        handler_args={"max_field_size": settings.max_token_bytes + 1024},
    )
    quiet_parser_errors()  # no token fragments from aiohttp's parser refusals in logs
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[CLOCK] = clock or (lambda: datetime.now(UTC))
    app[OPENAPI] = json.dumps(openapi_document(ROUTES, settings)).encode()
    app.cleanup_ctx.append(_lifecycle)
    install(app, ROUTES)
    return app
