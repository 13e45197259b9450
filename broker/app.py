"""The application factory: ``create_app(settings)`` wires every part; no I/O at import.

``cleanup_ctx`` owns every pool, client and background task, in start order, and tears
them down in reverse. Handlers reach them only through the typed keys in ``web.keys``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from broker import __version__
from broker.audit import AccessAudit, LedgerVerifications
from broker.auth import DevIssuer, IssuerConfig, Verifier
from broker.background import (
    Checkpointer,
    Periodic,
    flush_auth_failures,
    probe_dependencies,
)
from broker.console.cookies import ConsoleCookies, load_console_key
from broker.console.keys import CONSOLE, Console
from broker.console.routes import CONSOLE_ROUTES
from broker.elevation import ElevationService
from broker.errors import LedgerNotReplicated, VaultUnavailable
from broker.evidence.continuity import append_heartbeat, gap_threshold
from broker.grants import GrantService
from broker.grants.krl import RevocationList
from broker.ledger import (
    CheckpointSigner,
    CheckpointVerifier,
    Ledger,
    LedgerWriter,
    NewEvent,
    ReplicationState,
    connect_pool,
    load_or_create_signing_key,
    replication_refusal,
    replication_state,
)
from broker.ledger.relay import LedgerLink, RelayServer, RelayWriter
from broker.logs import quiet_parser_errors
from broker.metrics import Metrics
from broker.notify import WebhookNotifier
from broker.offboarding import OffboardingService, SubjectBlocklist
from broker.oidc.provider import ProviderClient
from broker.oidc.signin import SignIn
from broker.oidc.store import SignInStore
from broker.policy.active import ActivePolicy
from broker.policy.model import PolicySet
from broker.quotas import Quotas, flush_refusals
from broker.reviews import ReviewService
from broker.sessions import SessionStore
from broker.settings import Settings
from broker.tls.loopback import is_loopback
from broker.tls.outbound import ClientTLS, client_context
from broker.tls.serving import ServingCertificate, ServingTLS
from broker.vault import VaultClient
from broker.vault.login import VaultLogin, vault_login_for, vault_tls_for
from broker.web.authn import Authenticator
from broker.web.keys import (
    AUDIT_ACCESS,
    AUTHN,
    CHECKPOINT_VERIFIER,
    CLOCK,
    ELEVATIONS,
    EXPOSITION,
    GRANTS,
    KRL,
    LEDGER,
    METRICS,
    OFFBOARDING,
    OPENAPI,
    POLICY,
    QUOTAS,
    REVIEWS,
    SESSIONS,
    SETTINGS,
    SIGNIN,
    VAULT,
    VERIFICATIONS,
    VERIFIER,
)
from broker.web.middleware import middlewares
from broker.web.openapi import openapi_document
from broker.web.route import install
from broker.web.routes import ROUTES
from broker.worker_metrics import WorkerMetrics

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
            subject_claim=i.subject_claim,
            groups_prefix=i.groups_prefix,
            service_subjects=i.service_subjects,
        )
        for i in settings.issuers
    ]
    if settings.dev_issuer_key_path is not None:
        configs.append(DevIssuer.load_or_create(settings.dev_issuer_key_path).issuer_config())
    if not configs:
        raise ValueError("no trusted JWT issuer configured (BROKER_TRUSTED_ISSUERS)")
    return configs


# Objects the start-up steps hand to each other; handlers use the keys in ``web.keys``.
_LOGIN = web.AppKey("vault_login", VaultLogin)
_VAULT_TLS: web.AppKey[ClientTLS | None] = web.AppKey("vault_tls")
_SIGNER = web.AppKey("checkpoint_signer", CheckpointSigner)
_LEDGER_LINK = web.AppKey("ledger_link", LedgerLink)
_BLOCKLIST = web.AppKey("offboarding_blocklist", SubjectBlocklist)
_NOTIFIER = web.AppKey("webhook_notifier", WebhookNotifier)


async def _vault_identity(app: web.Application) -> AsyncIterator[None]:
    """The broker's own Vault login (token, AppRole or Kubernetes), over verified TLS for
    an ``https://`` address."""
    tls = vault_tls_for(app[SETTINGS])
    app[_VAULT_TLS] = tls
    login = vault_login_for(app[SETTINGS], tls)
    await login.login()
    app[_LOGIN] = login
    yield


async def _checkpoint_keys(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    signer = CheckpointSigner(
        settings.checkpoint_key_name,
        load_or_create_signing_key(settings.checkpoint_key_path, create=False),
    )
    app[_SIGNER] = signer
    verifications = app[VERIFICATIONS]
    verifications.signer = signer  # clean verifications record their verified head
    verifications.dsn, verifications.sslrootcert = (
        settings.database_url,
        settings.database_sslrootcert,
    )
    app[CHECKPOINT_VERIFIER] = CheckpointVerifier(
        [signer.verifier_key(), *settings.checkpoint_verifier_keys]
    )
    yield


async def _ledger(app: web.Application) -> AsyncIterator[None]:
    """The pool and the batching writer; closed last of all but the clients."""
    settings, metrics = app[SETTINGS], app[METRICS]
    pool = await connect_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max,
        timeout=settings.db_timeout_seconds,
        sslrootcert=settings.database_sslrootcert,
    )
    try:
        _require_replication(settings, await replication_state(pool), metrics)
        link = app[_LEDGER_LINK]
        writer: LedgerWriter | RelayWriter
        server: RelayServer | None = None
        if link.relay is not None:  # worker 1..N-1: worker 0 writes this host's rows
            writer = RelayWriter(
                link.relay,
                replica=settings.replica_id,
                max_queue=settings.ledger_max_queue,
                commit_timeout=settings.ledger_commit_timeout_seconds,
            )
            await writer.start()
        else:
            writer = LedgerWriter(
                pool,
                replica=settings.replica_id,
                max_batch=settings.ledger_max_batch,
                max_queue=settings.ledger_max_queue,
                commit_timeout=settings.ledger_commit_timeout_seconds,
                on_commit=metrics.on_ledger_commit,
                # Stay on the guarded path after another replica appended until this
                # replica's offboarding blocklist has surely refreshed (see LedgerWriter).
                contended_seconds=settings.blocklist_refresh_seconds + 1.0,
            )
            writer.start()
            if link.serves:
                server = RelayServer(writer, link.serves)
                await server.start()
        try:
            metrics.ledger_queue_depth.set_function(lambda: writer.queue_depth)
            metrics.ledger_queue_capacity.set(writer.queue_capacity)
            metrics.watch_ledger_contention(lambda: (writer.locked_batches, writer.conflicts))
            app[LEDGER] = Ledger(pool, writer, origin=settings.ledger_origin)
            app[AUDIT_ACCESS] = AccessAudit(app[LEDGER])
            yield
        finally:
            if server is not None:  # the other workers' last rows come through it
                await server.stop(settings.shutdown_grace_seconds + 5.0)
            await writer.stop()
    finally:
        await pool.close()


def _require_replication(settings: Settings, state: ReplicationState, metrics: Metrics) -> None:
    """Raise ``LedgerNotReplicated`` if the ledger's primary would acknowledge a row that a
    failover can lose, unless ``ledger_synchronous_standby`` is ``not-required``."""
    _set_standbys_gauge(settings, state, metrics)
    problem = replication_refusal(state)
    if problem is None:
        _log.info(
            "ledger: synchronous_standby_names = %r, synchronous standbys streaming: %s",
            state.standby_names,
            "not visible to this role" if state.streaming is None else state.streaming,
        )
    elif settings.ledger_synchronous_standby == "required":
        raise LedgerNotReplicated(problem)
    else:
        _log.info(
            "ledger: no synchronous standby, and ledger_synchronous_standby = not-required:"
            " a failover can lose acknowledged rows"
        )


async def _vault_client(app: web.Application) -> AsyncIterator[None]:
    settings, metrics, login = app[SETTINGS], app[METRICS], app[_LOGIN]
    vault = VaultClient(
        settings.vault_addr,
        login.token,
        timeout=settings.vault_timeout_seconds,
        max_connections=settings.vault_max_connections,
        on_call=metrics.on_vault_call,
        on_token_rejected=login.relogin_after_rejection,
        tls=app[_VAULT_TLS],
    )
    await vault.start()
    try:
        if app[_VAULT_TLS] is not None:
            await _refuse_unverified_vault(vault)
        app[VAULT] = vault
        yield
    finally:
        await vault.close()


async def _refuse_unverified_vault(vault: VaultClient) -> None:
    """Raise ``VaultUnavailable`` (code ``vault_tls``) if Vault's certificate does not
    verify: a configuration error, so the broker refuses to start. Vault merely down or
    sealed is not: the broker starts and fails closed until it is back."""
    try:
        await vault.health()
    except VaultUnavailable as e:
        if e.code == "vault_tls":
            raise


async def _authentication(app: web.Application) -> AsyncIterator[None]:
    """Token verification (JWKS clients) and the offboarding blocklist it consults."""
    settings = app[SETTINGS]
    verifier = Verifier(
        issuer_configs(settings),
        jwks_ca_file=settings.jwks_ca_file,
        max_token_bytes=settings.max_token_bytes,
        leeway_seconds=settings.jwt_leeway_seconds,
    )
    try:
        app[VERIFIER] = verifier
        blocklist = SubjectBlocklist(app[LEDGER], app[METRICS])
        app[_BLOCKLIST] = blocklist
        app[AUTHN] = Authenticator(verifier, app[METRICS], blocklist=blocklist)
        yield
    finally:
        await verifier.close()


async def _policy(app: web.Application) -> AsyncIterator[None]:
    """The policy in force, loaded (and ledgered) before anything is served."""
    metrics, ledger = app[METRICS], app[LEDGER]

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

    settings = app[SETTINGS]
    active = ActivePolicy(
        settings.policies_dir,
        max_file_bytes=settings.policy_max_file_bytes,
        record=record_policy,
        on_reload=on_reload,
    )
    await active.load()
    app[POLICY] = active
    yield


async def _notifier(app: web.Application) -> AsyncIterator[None]:
    settings, metrics = app[SETTINGS], app[METRICS]
    notifier = WebhookNotifier(
        settings.webhook_urls,
        timeout=settings.webhook_timeout_seconds,
        max_attempts=settings.webhook_max_attempts,
        on_result=lambda kind, outcome: metrics.webhook_deliveries.labels(kind, outcome).inc(),
    )
    await notifier.start()
    try:
        app[_NOTIFIER] = notifier
        yield
    finally:
        await notifier.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    """The domain services; never serve before knowing who is offboarded."""
    settings, ledger, active, metrics = app[SETTINGS], app[LEDGER], app[POLICY], app[METRICS]
    blocklist = app[_BLOCKLIST]
    app[QUOTAS] = Quotas(settings, ledger=ledger, policy=active, metrics=metrics)
    app[GRANTS] = GrantService(
        ledger=ledger,
        vault=app[VAULT],
        policy=active,
        metrics=metrics,
        quotas=app[QUOTAS],
        issue_guard=blocklist.issue_guard,
    )
    app[KRL] = RevocationList(ledger=ledger, vault=app[VAULT], policy=active)
    app[ELEVATIONS] = ElevationService(
        ledger=ledger,
        policy=active,
        grants=app[GRANTS],
        quotas=app[QUOTAS],
        metrics=metrics,
        notifier=app[_NOTIFIER],
        clock=app[CLOCK],
        public_url=settings.public_url,
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
    app[REVIEWS] = ReviewService(ledger=ledger, policy=active, clock=app[CLOCK])
    app[SESSIONS] = SessionStore(
        ledger,
        ttl_seconds=settings.vault_api_session_ttl_seconds,
        max_ttl_seconds=settings.vault_api_session_max_ttl_seconds,
        recheck_seconds=settings.vault_api_session_recheck_seconds,
        clock=app[CLOCK],
        ended=app[OFFBOARDING],  # offboarding ends every session of its subject
    )
    app[AUTHN].attach_sessions(app[SESSIONS])
    await blocklist.refresh()
    yield


async def _signin(app: web.Application) -> AsyncIterator[None]:
    """People's sign-in through the configured identity providers (discovery on first use)."""
    settings = app[SETTINGS]
    tls = (
        client_context(cafile=settings.jwks_ca_file, what="JWKS CA file (BROKER_JWKS_CA_FILE)")
        if settings.jwks_ca_file is not None
        else True
    )
    http = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(ssl=tls)
    )

    def verifier(config: IssuerConfig) -> Verifier:
        return Verifier(
            [config],
            jwks_ca_file=settings.jwks_ca_file,
            max_token_bytes=settings.max_token_bytes,
            leeway_seconds=settings.jwt_leeway_seconds,
            verified_cache_size=0,  # ID tokens are used once
        )

    providers = {
        p.name: ProviderClient(p, http=lambda: http, verifier_factory=verifier)
        for p in settings.oidc_providers
    }
    try:
        app[SIGNIN] = SignIn(
            providers,
            store=SignInStore(app[LEDGER].pool),
            sessions=app[SESSIONS],
            authn=app[AUTHN],
            metrics=app[METRICS],
            clock=app[CLOCK],
            console_redirect=app[CONSOLE].callback_url,
        )
        yield
    finally:
        for provider in providers.values():
            await provider.close()
        await http.close()


def _console(settings: Settings) -> Console:
    """The console's cookie key and sign-in options (no I/O beyond the key file)."""
    dev_issuer = None
    if settings.console_dev_sign_in:
        if settings.dev_issuer_key_path is None:
            raise ValueError("console_dev_sign_in needs dev_issuer_key_path (the dev issuer)")
        dev_issuer = DevIssuer.load_or_create(settings.dev_issuer_key_path)
        _log.warning(
            "console_dev_sign_in is on: anyone who reaches /console/login can sign in as a"
            " demo identity. Development only: never on a broker people rely on"
        )
    secure = (settings.public_url or "").startswith("https://") or (
        settings.tls_cert_file is not None
    )
    return Console(
        cookies=ConsoleCookies(load_console_key(settings.console_key_path), secure=secure),
        public_url=settings.public_url,
        dev_issuer=dev_issuer,
    )


# Monthly partitions are created months ahead; checking a few times a day is plenty.
_PARTITION_CHECK_SECONDS = 6 * 3600.0


async def _running(app: web.Application) -> AsyncIterator[None]:
    """``broker.started`` .. ``broker.stopped``, and every background job in between."""
    settings, ledger, metrics = app[SETTINGS], app[LEDGER], app[METRICS]
    gap_threshold(settings.heartbeat_seconds)  # refuses a non-positive interval
    ahead = settings.ledger_partitions_ahead_months

    async def partitions() -> None:
        until = await ledger.create_partitions(ahead)
        metrics.ledger_partitions_until.set(until.timestamp())

    await partitions()  # before the first row of a new month needs one
    await ledger.append(
        NewEvent(event="broker.started", outcome="ok", body={"version": __version__})
    )
    checkpointer = Checkpointer(
        ledger, app[_SIGNER], metrics, witness_path=settings.checkpoint_witness_path
    )
    vault, active, login = app[VAULT], app[POLICY], app[_LOGIN]
    periodic = Periodic()
    every = periodic.every
    every(settings.blocklist_refresh_seconds, "offboarding-blocklist", app[_BLOCKLIST].refresh)
    every(settings.checkpoint_interval_seconds, "checkpoint", checkpointer.run_once)
    every(_PARTITION_CHECK_SECONDS, "ledger-partitions", partitions)
    every(settings.expiry_sweep_interval_seconds, "expiry", app[GRANTS].expire_due)
    every(settings.vault_login_check_seconds, "vault-login", login.maintain)
    every(
        settings.dependency_probe_seconds,
        "dependency-probe",
        lambda: probe_dependencies(
            {"vault": vault.health, "ledger": ledger.ping}, metrics, timeout=2.0
        ),
    )
    every(
        settings.dependency_probe_seconds,
        "ledger-replication",
        lambda: _watch_replication(settings, ledger, metrics),
    )
    every(settings.orphan_lease_sweep_seconds, "orphan-leases", app[GRANTS].reconcile_orphan_leases)
    every(settings.elevation_sweep_seconds, "elevation-sweep", app[ELEVATIONS].sweep)
    every(settings.policy_reload_interval_seconds, "policy-reload", active.reload_if_changed)
    # Review action items resolve when a new policy version drops them (a no-op until the
    # version changes), checked at the policy-reload pace on every replica.
    every(settings.policy_reload_interval_seconds, "review-actions", app[REVIEWS].resolve_actions)
    every(
        settings.auth_failure_flush_seconds,
        "auth-failures",
        lambda: flush_auth_failures(ledger, app[AUTHN]),
    )
    every(
        settings.quota_refusal_flush_seconds,
        "quota-refusals",
        lambda: flush_refusals(ledger, app[QUOTAS].refusals, metrics),
    )
    every(
        settings.heartbeat_seconds,
        "heartbeat",
        lambda: append_heartbeat(
            ledger,
            replica=settings.replica_id,
            interval_seconds=settings.heartbeat_seconds,
            metrics=metrics,
        ),
    )
    try:
        yield
    finally:
        await periodic.stop()
        try:
            await flush_auth_failures(ledger, app[AUTHN])
            await flush_refusals(ledger, app[QUOTAS].refusals, metrics)
            await ledger.append(NewEvent(event="broker.stopped", outcome="ok"))
            await checkpointer.run_once()
        except Exception as e:  # shutting down with the ledger gone: nothing more to save
            _log.warning("could not record shutdown: %s", type(e).__name__)


async def _watch_replication(settings: Settings, ledger: Ledger, metrics: Metrics) -> None:
    """Keep ``broker_ledger_synchronous_standbys`` current (a standby lost, a failover)."""
    _set_standbys_gauge(settings, await replication_state(ledger.pool), metrics)


def _set_standbys_gauge(settings: Settings, state: ReplicationState, metrics: Metrics) -> None:
    required = "true" if settings.ledger_synchronous_standby == "required" else "false"
    metrics.ledger_synchronous_standbys.labels(required).set(state.gauge)


def _serving_tls(tls: ServingTLS | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """The serving certificate's metrics and reload watcher; the plaintext warning."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, metrics = app[SETTINGS], app[METRICS]
        periodic = Periodic()
        if tls is None:
            exposed = not is_loopback(settings.host)
            metrics.tls_disabled.set(1 if exposed else 0)
            if exposed:  # only reachable with tls_disable: broker serve refuses otherwise
                _log.warning(
                    "TLS is disabled (tls_disable): serving plaintext HTTP on %s; bearer"
                    " tokens and credentials cross the network unencrypted",
                    settings.host,
                )
        else:

            def on_reload(outcome: str, cert: ServingCertificate) -> None:
                metrics.tls_reloads.labels(outcome).inc()
                metrics.tls_certificate_expiry.set(cert.not_after)

            tls.on_reload = on_reload
            metrics.tls_certificate_expiry.set(tls.current.not_after)

            async def reload() -> None:
                tls.reload_if_changed()

            periodic.every(settings.tls_reload_seconds, "tls-reload", reload)
        try:
            yield
        finally:
            await periodic.stop()

    return ctx


def _publishing(shared: WorkerMetrics) -> Callable[[web.Application], AsyncIterator[None]]:
    """This worker's series, published for the others' scrapes while it runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        periodic = Periodic()

        async def publish() -> None:
            shared.publish()

        await publish()
        periodic.every(shared.interval, "metrics-publish", publish)
        try:
            yield
        finally:
            await periodic.stop()
            shared.remove()

    return ctx


# Start order; each step's clean-up runs in reverse, and a step that fails to start
# closes what the steps before it opened.
_RESOURCES = (
    _vault_identity,
    _checkpoint_keys,
    _ledger,
    _vault_client,
    _authentication,
    _policy,
    _notifier,
    _services,
    _signin,
    _running,
)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], datetime] | None = None,
    tls: ServingTLS | None = None,
    ledger_link: LedgerLink | None = None,
    worker_metrics: tuple[Path, int] | None = None,
) -> web.Application:
    """Build the broker app. Start-up I/O happens in ``cleanup_ctx`` when it runs.

    ``clock`` (default: UTC now) drives elevation expiry decisions; tests move it.
    ``tls`` (already loaded) is the certificate the caller serves with: its expiry and
    reloads become metrics and its files are watched every ``tls_reload_seconds``.
    ``ledger_link``: this worker's part in its host's one ledger writer (``broker serve
    --workers``; broker/ledger/relay.py). ``worker_metrics``: the supervisor's metrics
    directory and this worker's index, so ``/metrics`` answers with every worker's series
    (broker/worker_metrics.py).
    """
    app = web.Application(
        middlewares=middlewares(),
        client_max_size=settings.max_body_bytes,
        # Let oversized tokens reach the verifier, which answers token_too_large in JSON,
        # and long query strings the route's model (a JSON 400 naming the parameter),
        # instead of aiohttp's plain-text 400 at its 8190-byte defaults.
        handler_args={
            "max_field_size": settings.max_token_bytes + 1024,
            "max_line_size": settings.max_body_bytes,
        },
    )
    quiet_parser_errors()  # no token fragments from aiohttp's parser refusals in logs
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    shared = WorkerMetrics(*worker_metrics, app[METRICS]) if worker_metrics else None
    app[EXPOSITION] = shared.render if shared is not None else app[METRICS].render
    app[VERIFICATIONS] = LedgerVerifications(app[METRICS])
    app[CLOCK] = clock or (lambda: datetime.now(UTC))
    app[_LEDGER_LINK] = ledger_link or LedgerLink()
    app[OPENAPI] = json.dumps(openapi_document(ROUTES, settings)).encode()
    app.cleanup_ctx.extend(_RESOURCES)
    app.cleanup_ctx.append(_serving_tls(tls))
    if shared is not None:
        app.cleanup_ctx.append(_publishing(shared))
    app[CONSOLE] = _console(settings)
    install(app, [*ROUTES, *CONSOLE_ROUTES])
    return app
