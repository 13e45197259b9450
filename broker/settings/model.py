"""The frozen ``Settings``: every setting declared once, in the order the reference shows.

Each field is a ``setting()``: its name is the config-file key, ``env`` its environment
variable, and its bounds and one-line ``doc`` feed the loaders, ``validate`` and the
generated table in docs/configuration.md (``make docs``). Every limit the broker enforces
(timeouts, sizes, intervals) is a field here with a sane default.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from broker.settings.spec import Declared, declarations, setting

__all__ = ["SETTINGS", "IssuerSettings", "OIDCProviderSettings", "Settings"]


@dataclass(frozen=True)
class IssuerSettings:
    """A trusted JWT issuer (OIDC IdP, Kubernetes SA issuer, or local PEM keys)."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    public_keys: tuple[str, ...] = ()
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    groups_prefix: str = ""
    # Every subject is a workload (a provider's client-credentials tokens), never a person.
    service_subjects: bool = False


@dataclass(frozen=True)
class OIDCProviderSettings:
    """A company identity provider people sign in with; the broker is its relying party.

    ``client_secret`` is a secret: only in ``BROKER_OIDC_PROVIDERS`` (the environment),
    refused in a ``[[oidc_providers]]`` table; ``client_secret_file`` works in both.
    """

    name: str
    issuer: str
    client_id: str
    display_name: str = ""
    client_secret: str | None = field(default=None, repr=False, metadata={"secret": True})
    client_secret_file: Path | None = None
    native_client_id: str | None = None
    # "groups" is not a standard scope: add it for providers that define it (Okta, Dex).
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    subject_claim: str = "sub"
    groups_claim: str = "groups"
    groups_prefix: str = ""
    userinfo_groups: bool = False
    enabled: bool = True


def _replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


_LISTEN = "Listening, logs, shutdown"
_LEDGER = "The ledger database"
_VAULT = "Vault / OpenBao"
_POLICY = "Policy, identity, checkpoints"
_LIMITS = "Limits"
_BACKGROUND = "Background work, continuity, offboarding, notifications"
_FRONT_DOOR = "The Vault-compatible front door"
_TLS_SERVE = "Serving TLS"
_QUOTAS = "Quotas and backend bulkheads"


@dataclass(frozen=True)
class Settings:
    # --- where it listens, logs, shutdown ---
    host: str = setting(
        "127.0.0.1",
        env="BROKER_HOST",
        section=_LISTEN,
        doc="listen address. Loopback by default; set `0.0.0.0` in a container",
    )
    port: int = setting(
        8080,
        env="BROKER_PORT",
        section=_LISTEN,
        ge=0,
        le=65535,
        doc="listen port (`broker serve --port` overrides; `0` picks a free port)",
    )
    public_url: str | None = setting(
        None,
        env="BROKER_PUBLIC_URL",
        section=_LISTEN,
        doc="the broker's address as people's browsers reach it (`https://broker.example.com`):"
        " the console's sign-in redirect and the links in notifications use it",
    )
    log_format: str | None = setting(
        None,
        env="BROKER_LOG_FORMAT",
        section=_LISTEN,
        choices=("json", "text"),
        default_text="`json` for `broker serve`, `text` for `broker dev`",
        doc="[logs](#logs): `json` (one object per line on stderr) or `text`",
    )
    log_level: str = setting(
        "info",
        env="BROKER_LOG_LEVEL",
        section=_LISTEN,
        choices=("debug", "info", "warning", "error", "critical"),
        ignore_case=True,
        doc="log level (`broker -v serve`: `debug`)",
    )
    shutdown_grace_seconds: float = setting(
        20.0,
        env="BROKER_SHUTDOWN_GRACE",
        section=_LISTEN,
        gt=0,
        doc="on SIGTERM/SIGINT, how long in-flight requests may take before they are"
        " cancelled ([graceful shutdown](#graceful-shutdown)). Keep it below Kubernetes'"
        " `terminationGracePeriodSeconds` (default 30)",
    )
    replica_id: str = setting(
        env="BROKER_REPLICA_ID",
        section=_LISTEN,
        factory=_replica_id,
        default_text="`<hostname>-<pid>`",
        doc="recorded in every ledger row this process writes and in every log line"
        " (`broker dev`: `dev-1`)",
    )
    workers: int = setting(
        1,
        env="BROKER_WORKERS",
        section=_LISTEN,
        ge=1,
        le=64,
        doc="`broker serve` processes sharing the listening sockets (`--workers` overrides):"
        " each a full replica, its `replica_id` suffixed `-w<i>`. Use one per core; `1` runs"
        " no supervisor ([workers](operations.md#workers-one-process-per-core))",
    )

    # --- serving TLS (every listener; see broker/tls/serving.py) ---
    tls_cert_file: Path | None = setting(
        None,
        env="BROKER_TLS_CERT_FILE",
        section=_TLS_SERVE,
        readable_file=True,
        doc="PEM certificate chain (leaf first) every listener serves; with `tls_key_file`."
        " Re-read when it changes ([serving TLS](operations.md#serving-tls))",
    )
    tls_key_file: Path | None = setting(
        None,
        env="BROKER_TLS_KEY_FILE",
        section=_TLS_SERVE,
        readable_file=True,
        doc="PEM private key (unencrypted) of `tls_cert_file`; the two are set together",
    )
    tls_client_ca_file: Path | None = setting(
        None,
        env="BROKER_TLS_CLIENT_CA_FILE",
        section=_TLS_SERVE,
        readable_file=True,
        doc="PEM CA bundle: when set, every client must present a certificate it signed"
        " (mTLS). The identity still comes from the JWT",
    )
    tls_disable: bool = setting(
        False,
        env="BROKER_TLS_DISABLE",
        section=_TLS_SERVE,
        doc="serve plaintext HTTP on a non-loopback `host` (else `broker serve` refuses to"
        " start without a certificate). Logged as a warning and exposed as `broker_tls_disabled`",
    )
    tls_reload_seconds: float = setting(
        10.0,
        env="BROKER_TLS_RELOAD_INTERVAL",
        section=_TLS_SERVE,
        gt=0,
        doc="how often the certificate and key files are checked for a change (rotation"
        " without a restart)",
    )

    # --- the ledger database ---
    database_url: str = setting(
        "",
        env="BROKER_DATABASE_URL",
        section=_LEDGER,
        dsn=True,
        default_text="— (required)",
        doc="DSN of the ledger **writer** role, e.g."
        " `postgresql://broker_writer:…@db:5432/broker`. The broker never connects as the"
        " owner",
    )
    admin_database_url: str | None = setting(
        None,
        env="BROKER_ADMIN_DATABASE_URL",
        section=_LEDGER,
        dsn=True,
        doc="DSN of the ledger **owner** role; used only by `broker migrate` and by"
        " `broker dev` in external mode",
    )
    database_sslrootcert: Path | None = setting(
        None,
        env="BROKER_DATABASE_SSLROOTCERT",
        section=_LEDGER,
        readable_file=True,
        doc="PEM CA bundle that verifies PostgreSQL's certificate (`sslrootcert` in the DSN"
        " wins). With it, `sslmode` defaults to `verify-full`; a non-loopback database needs"
        " `sslmode=verify-full` ([outbound TLS](#outbound-tls))",
    )
    db_timeout_seconds: float = setting(
        5.0,
        env="BROKER_DB_TIMEOUT",
        section=_LEDGER,
        gt=0,
        doc="connect and per-statement timeout for the ledger pool",
    )
    db_pool_max: int = setting(
        10, env="BROKER_DB_POOL_MAX", section=_LEDGER, ge=1, doc="ledger connection pool size"
    )
    ledger_commit_timeout_seconds: float = setting(
        5.0,
        env="BROKER_LEDGER_COMMIT_TIMEOUT",
        section=_LEDGER,
        gt=0,
        doc="how long a request waits for its ledger row to commit before failing closed (503)",
    )
    ledger_max_queue: int = setting(
        10_000,
        env="BROKER_LEDGER_MAX_QUEUE",
        section=_LEDGER,
        ge=1,
        doc="ledger rows queued for the writer beyond this are refused (503)",
    )
    ledger_max_batch: int = setting(
        512, env="BROKER_LEDGER_MAX_BATCH", section=_LEDGER, ge=1, doc="rows per ledger transaction"
    )
    ledger_retention_months: int | None = setting(
        None,
        env="BROKER_LEDGER_RETENTION_MONTHS",
        section=_LEDGER,
        ge=12,
        default_text="— (keep forever)",
        doc="months of events kept in the database; older months may be moved to signed"
        " segment files with `broker ledger archive` (at least 12: a SOC 2 period)",
    )
    ledger_partitions_ahead_months: int = setting(
        3,
        env="BROKER_LEDGER_PARTITIONS_AHEAD",
        section=_LEDGER,
        ge=1,
        le=24,
        doc="monthly ledger partitions the broker keeps created ahead of the current month",
    )
    ledger_synchronous_standby: str = setting(
        "required",
        env="BROKER_LEDGER_SYNCHRONOUS_STANDBY",
        section=_LEDGER,
        choices=("required", "not-required"),
        default_text="`required` (`broker dev`: `not-required`)",
        doc="`required`: the broker refuses to start unless the ledger's PostgreSQL keeps"
        " each commit on a synchronous standby too (`synchronous_standby_names` set and,"
        " where the writer role may see it, that many standbys streaming), so a row"
        " acknowledged to a client survives a failover. `not-required`: start anyway (one"
        " server, development, tests). See [failover.md](failover.md)",
    )

    # --- Vault/OpenBao: the broker's own identity and limits ---
    vault_addr: str = setting(
        "http://127.0.0.1:8200",
        env="VAULT_ADDR",
        section=_VAULT,
        doc="Vault/OpenBao address. With `https://` the server certificate is always verified"
        " ([TLS to Vault, PostgreSQL and identity providers](#outbound-tls))",
    )
    vault_cacert: Path | None = setting(
        None,
        env="VAULT_CACERT",
        section=_VAULT,
        readable_file=True,
        doc="PEM CA bundle that verifies Vault's certificate (instead of the system trust store)",
    )
    vault_capath: Path | None = setting(
        None,
        env="VAULT_CAPATH",
        section=_VAULT,
        doc="directory of PEM CA certificates (OpenSSL `c_rehash` layout) that verify Vault's"
        " certificate",
    )
    vault_client_cert: Path | None = setting(
        None,
        env="VAULT_CLIENT_CERT",
        section=_VAULT,
        readable_file=True,
        doc="PEM client certificate (chain) for Vault's TLS client authentication; needs"
        " `vault_client_key`",
    )
    vault_client_key: Path | None = setting(
        None,
        env="VAULT_CLIENT_KEY",
        section=_VAULT,
        readable_file=True,
        doc="PEM private key of `vault_client_cert`",
    )
    vault_tls_server_name: str | None = setting(
        None,
        env="VAULT_TLS_SERVER_NAME",
        section=_VAULT,
        doc="name Vault's certificate must carry (and SNI), when it differs from the host in"
        " `vault_addr`",
    )
    vault_auth_method: str | None = setting(
        None,
        env="VAULT_AUTH_METHOD",
        section=_VAULT,
        choices=("token", "approle", "kubernetes"),
        requires={"approle": "vault_role_id", "kubernetes": "vault_kubernetes_role"},
        default_text="— (AppRole if `vault_role_id` is set, else token)",
        doc="the broker's own login ([the broker's Vault identity](#3-the-brokers-vault-identity))",
    )
    vault_token: str | None = setting(
        None,
        env="VAULT_TOKEN",
        section=_VAULT,
        secret=True,
        doc="a static Vault token (dev, or a periodic token you renew yourself). Used only by"
        " the `token` method",
    )
    vault_role_id: str | None = setting(
        None,
        env="VAULT_ROLE_ID",
        section=_VAULT,
        doc="AppRole role id; with it (and no `vault_auth_method`) the broker logs in with AppRole",
    )
    vault_secret_id: str | None = setting(
        None, env="VAULT_SECRET_ID", section=_VAULT, secret=True, doc="AppRole secret id"
    )
    vault_secret_id_file: Path | None = setting(
        None,
        env="VAULT_SECRET_ID_FILE",
        section=_VAULT,
        readable_file=True,
        doc="file holding the secret id (e.g. a mounted Kubernetes Secret); wins over"
        " `VAULT_SECRET_ID`. Checked at start-up and read at every AppRole login, so a"
        " rotated secret id is picked up without a restart",
    )
    vault_approle_mount: str = setting(
        "approle",
        env="VAULT_APPROLE_MOUNT",
        section=_VAULT,
        doc="where the AppRole auth method is mounted",
    )
    vault_kubernetes_role: str | None = setting(
        None,
        env="VAULT_K8S_ROLE",
        section=_VAULT,
        doc="the Vault role of the Kubernetes login (required for `kubernetes`)",
    )
    vault_kubernetes_mount: str = setting(
        "kubernetes",
        env="VAULT_K8S_MOUNT",
        section=_VAULT,
        doc="where the Kubernetes auth method is mounted",
    )
    # Re-read at every login because the kubelet rotates it.
    vault_kubernetes_token_path: Path = setting(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        env="VAULT_K8S_TOKEN_PATH",
        section=_VAULT,
        doc="the pod's projected service-account token; read at every login (the kubelet"
        " rotates it)",
    )
    vault_timeout_seconds: float = setting(
        5.0,
        env="BROKER_VAULT_TIMEOUT",
        section=_VAULT,
        gt=0,
        doc="total timeout of each Vault call",
    )
    vault_max_connections: int = setting(
        64,
        env="BROKER_VAULT_MAX_CONNECTIONS",
        section=_VAULT,
        ge=1,
        doc="connection pool size to Vault",
    )
    vault_login_check_seconds: float = setting(
        5.0,
        env="BROKER_VAULT_LOGIN_CHECK",
        section=_VAULT,
        gt=0,
        doc="how often the broker checks whether its Vault token is due for renewal",
    )

    # --- policy, identity, checkpoints ---
    policies_dir: Path = setting(
        Path("policies"),
        env="BROKER_POLICIES_DIR",
        section=_POLICY,
        doc="the policy directory (see [policy.md](policy.md))",
    )
    policy_reload_interval_seconds: float = setting(
        5.0,
        env="BROKER_POLICY_RELOAD_INTERVAL",
        section=_POLICY,
        gt=0,
        doc="how often each replica checks the policy directory for changes",
    )
    policy_max_file_bytes: int = setting(
        256 * 1024,
        env="BROKER_POLICY_MAX_FILE_BYTES",
        section=_POLICY,
        ge=1,
        doc="largest policy file",
    )
    issuers: tuple[IssuerSettings, ...] = setting(
        (),
        env="BROKER_TRUSTED_ISSUERS",
        section=_POLICY,
        doc="trusted JWT issuers: a JSON list in the environment, `[[issuers]]` tables in the"
        " file ([below](#trusted-issuers))",
    )
    oidc_providers: tuple[OIDCProviderSettings, ...] = setting(
        (),
        env="BROKER_OIDC_PROVIDERS",
        section=_POLICY,
        doc="identity providers people sign in with: a JSON list in the environment,"
        " `[[oidc_providers]]` tables in the file ([docs/sign-in.md](sign-in.md))",
    )
    jwks_ca_file: Path | None = setting(
        None,
        env="BROKER_JWKS_CA_FILE",
        section=_POLICY,
        readable_file=True,
        doc="PEM CA bundle that verifies the certificates of `https://` JWKS URLs (instead of"
        " the system trust store)",
    )
    console_key_path: Path | None = setting(
        None,
        env="BROKER_CONSOLE_KEY",
        section=_POLICY,
        doc="file of 32 random bytes that seals the console's cookies, the same on every"
        " replica (created if missing). Unset: a key per process, so console sign-ins do not"
        " survive a restart or move between replicas",
    )
    console_dev_sign_in: bool = setting(
        False,
        env="BROKER_CONSOLE_DEV_SIGN_IN",
        section=_POLICY,
        doc="offer the dev identities on the console's sign-in page (needs"
        " `dev_issuer_key_path`). `broker dev` turns it on; `broker serve` logs a warning",
    )
    dev_issuer_key_path: Path | None = setting(
        None,
        env="BROKER_DEV_ISSUER_KEY",
        section=_POLICY,
        doc="path of the local dev issuer's Ed25519 key; when set, tokens from `broker token`"
        " are trusted (the key is created if missing). Development only. Also the default"
        " key for `broker token` (else `.broker/dev-issuer.key`)",
    )
    # Outside the database by design.
    checkpoint_key_path: Path = setting(
        Path(".broker/checkpoint.key"),
        env="BROKER_CHECKPOINT_KEY",
        section=_POLICY,
        doc="Ed25519 private key (PKCS#8 PEM) that signs checkpoints. Must exist:"
        " `broker serve` does not create it",
    )
    checkpoint_key_name: str = setting(
        "jit-broker",
        env="BROKER_CHECKPOINT_KEY_NAME",
        section=_POLICY,
        doc="key name in checkpoint signatures (no spaces, no `+`)",
    )
    checkpoint_verifier_keys: tuple[str, ...] = setting(
        (),
        env="BROKER_CHECKPOINT_VERIFIER_KEYS",
        section=_POLICY,
        doc="public verifier keys also trusted when verifying (old keys after a rotation; or"
        " the only keys, for an auditor running `broker verify`)",
    )
    checkpoint_interval_seconds: float = setting(
        10.0,
        env="BROKER_CHECKPOINT_INTERVAL",
        section=_POLICY,
        gt=0,
        doc="seconds between checkpoint attempts",
    )
    # The newest signed checkpoint, kept outside the database (a file on a volume).
    checkpoint_witness_path: Path | None = setting(
        None,
        env="BROKER_CHECKPOINT_WITNESS",
        section=_POLICY,
        default_text="— (`broker dev`: `<state dir>/checkpoint.witness`, i.e."
        " `.broker/checkpoint.witness`)",
        doc="file where the broker keeps the newest checkpoint it signed, outside the database"
        " (a volume, not the database's disk). Rewritten atomically after each checkpoint;"
        " read at start-up, and the broker will not sign a chain that no longer contains"
        " that checkpoint ([ledger.md](ledger.md#signed-checkpoints)). An existing file that"
        " is not a valid note signed by the checkpoint key stops the start. Without it the"
        " anchor lives in memory only and is lost at restart",
    )
    ledger_origin: str = setting(
        "jit-broker/ledger",
        env="BROKER_LEDGER_ORIGIN",
        section=_POLICY,
        doc="origin line of checkpoints; must match between signer and verifier",
    )

    # --- limits on every input ---
    max_body_bytes: int = setting(
        64 * 1024,
        env="BROKER_MAX_BODY_BYTES",
        section=_LIMITS,
        ge=1,
        doc="largest request body; beyond it 413 `body_too_large`",
    )
    max_token_bytes: int = setting(
        8192, env="BROKER_MAX_TOKEN_BYTES", section=_LIMITS, ge=1, doc="largest bearer token"
    )
    jwt_leeway_seconds: int = setting(
        30,
        env="BROKER_JWT_LEEWAY",
        section=_LIMITS,
        ge=0,
        doc="clock skew allowed on `exp`/`nbf`/`iat`",
    )
    max_page_size: int = setting(
        500,
        env="BROKER_MAX_PAGE_SIZE",
        section=_LIMITS,
        ge=1,
        doc="largest `limit` on `/v1/grants` and other lists",
    )
    max_reason_chars: int = setting(
        500,
        env="BROKER_MAX_REASON_CHARS",
        section=_LIMITS,
        ge=1,
        doc="longest reason or comment",
    )

    # --- quotas per principal and bulkheads per Vault engine ---
    # Defaults for what policy does not declare (`limits:` on a role or catalog entry).
    quota_rate: float = setting(
        10.0,
        env="BROKER_QUOTA_RATE",
        section=_QUOTAS,
        gt=0,
        doc="issuances per second per principal (token bucket refill), for every request"
        " to `POST /v1/credentials` and its front-door equivalents, denied ones included;"
        " counted per replica (the effective limit is this times the replicas and workers)",
    )
    quota_burst: int = setting(
        40,
        env="BROKER_QUOTA_BURST",
        section=_QUOTAS,
        ge=1,
        doc="issuances a principal may make at once before `quota_rate` paces it",
    )
    quota_live_grants: int = setting(
        20,
        env="BROKER_QUOTA_LIVE_GRANTS",
        section=_QUOTAS,
        ge=1,
        doc="unended grants one principal may hold of one leased secret (database logins),"
        " counted in the ledger across all replicas",
    )
    quota_elevation_requests: int = setting(
        20,
        env="BROKER_QUOTA_ELEVATION_REQUESTS",
        section=_QUOTAS,
        ge=1,
        doc="elevation requests one requester may make per hour, across all replicas",
    )
    bulkhead_kv2: int = setting(
        64,
        env="BROKER_BULKHEAD_KV2",
        section=_QUOTAS,
        ge=1,
        doc="concurrent KV v2 reads in Vault per replica",
    )
    bulkhead_database: int = setting(
        8,
        env="BROKER_BULKHEAD_DATABASE",
        section=_QUOTAS,
        ge=1,
        doc="concurrent database-credential mints in Vault per replica (each is a"
        " `CREATE ROLE` in the database: slow, and it must not starve KV reads)",
    )
    bulkhead_pki: int = setting(
        8,
        env="BROKER_BULKHEAD_PKI",
        section=_QUOTAS,
        ge=1,
        doc="concurrent certificate issuances in Vault per replica",
    )
    bulkhead_ssh: int = setting(
        8,
        env="BROKER_BULKHEAD_SSH",
        section=_QUOTAS,
        ge=1,
        doc="concurrent SSH certificate signings in Vault per replica",
    )
    bulkhead_queue: int = setting(
        32,
        env="BROKER_BULKHEAD_QUEUE",
        section=_QUOTAS,
        ge=0,
        doc="calls that may wait for a busy engine; beyond it 503 `backend_busy` at once",
    )
    bulkhead_wait_seconds: float = setting(
        2.0,
        env="BROKER_BULKHEAD_WAIT",
        section=_QUOTAS,
        gt=0,
        doc="longest wait in an engine's queue before 503 `backend_busy`",
    )
    quota_refusal_hold_seconds: float = setting(
        1.0,
        env="BROKER_QUOTA_REFUSAL_HOLD",
        section=_QUOTAS,
        ge=0,
        le=10,
        doc="a principal refused by its rate that asks again before its `Retry-After`"
        " (a retry storm) gets the next refusal only after that wait, at most this long"
        " (jittered: half to all of it):"
        " its own connections then pace it, not the broker's CPU. `0`: answer at once",
    )
    quota_refusal_flush_seconds: float = setting(
        60.0,
        env="BROKER_QUOTA_REFUSAL_FLUSH",
        section=_QUOTAS,
        gt=0,
        doc="how often refusals are ledgered: one `quota.refused` row per refused"
        " principal per interval (per replica), never one per request",
    )

    # --- background work, continuity, offboarding, notifications ---
    expiry_sweep_interval_seconds: float = setting(
        5.0,
        env="BROKER_EXPIRY_SWEEP_INTERVAL",
        section=_BACKGROUND,
        gt=0,
        doc="how often expired grants are closed",
    )
    elevation_sweep_seconds: float = setting(
        5.0,
        env="BROKER_ELEVATION_SWEEP",
        section=_BACKGROUND,
        gt=0,
        doc="elevation expiry, pending and unreviewed gauges",
    )
    orphan_lease_sweep_seconds: float = setting(
        60.0,
        env="BROKER_ORPHAN_LEASE_SWEEP",
        section=_BACKGROUND,
        gt=0,
        doc="how often leases the ledger does not account for are revoked",
    )
    auth_failure_flush_seconds: float = setting(
        60.0,
        env="BROKER_AUTH_FAILURE_FLUSH",
        section=_BACKGROUND,
        gt=0,
        doc="how often aggregated authentication failures are ledgered",
    )
    dependency_probe_seconds: float = setting(
        10.0,
        env="BROKER_DEPENDENCY_PROBE",
        section=_BACKGROUND,
        gt=0,
        doc="how often Vault and the ledger are probed for the health metrics",
    )
    # A silence longer than twice this is a gap in the evidence.
    heartbeat_seconds: float = setting(
        60.0,
        env="BROKER_HEARTBEAT_SECONDS",
        section=_BACKGROUND,
        gt=0,
        doc="seconds between the `broker.heartbeat` rows each replica appends (continuity"
        " evidence). A silence longer than twice this is a gap. `broker evidence export`/"
        "`check --from --to` read it too, to judge gaps, and record it in the package"
        " manifest ([audit.md](audit.md#continuity-heartbeats-and-gaps))",
    )
    offboarding_sla_seconds: int = setting(
        4 * 3600,
        env="BROKER_OFFBOARDING_SLA",
        section=_BACKGROUND,
        gt=0,
        doc="whole seconds: the offboarding SLA measured from `terminated_at` to completion"
        " (met or missed, ledgered in `subject.offboarded`); also used by"
        " `broker evidence export` for its `offboarding_late` findings"
        " ([audit.md](audit.md#the-sla-measured))",
    )
    blocklist_refresh_seconds: float = setting(
        2.0,
        env="BROKER_BLOCKLIST_REFRESH",
        section=_BACKGROUND,
        gt=0,
        doc="how often each replica re-reads the ledger for newly offboarded or reinstated"
        " subjects; also the pause before offboarding's second revocation pass, and (+1 s)"
        " how long the ledger writer stays on its guarded path after another replica appended",
    )
    webhook_urls: tuple[str, ...] = setting(
        (),
        env="BROKER_WEBHOOK_URLS",
        section=_BACKGROUND,
        doc="http(s) URLs (e.g. Slack incoming webhooks) told of elevation requests and"
        " decisions; empty sends nothing. The URLs are never logged"
        " ([elevation.md](elevation.md#webhook-notifications))",
    )
    webhook_timeout_seconds: float = setting(
        5.0,
        env="BROKER_WEBHOOK_TIMEOUT",
        section=_BACKGROUND,
        gt=0,
        doc="per webhook request",
    )
    webhook_max_attempts: int = setting(
        5,
        env="BROKER_WEBHOOK_MAX_ATTEMPTS",
        section=_BACKGROUND,
        ge=1,
        doc="per notification and URL",
    )

    # --- the Vault-compatible front door (its own listener; None = off) ---
    vault_api_port: int | None = setting(
        None,
        env="BROKER_VAULT_API_PORT",
        section=_FRONT_DOOR,
        ge=0,
        le=65535,
        default_text="— (off)",
        doc="port of the second listener that speaks the Vault API to existing Vault clients",
    )
    vault_api_session_ttl_seconds: int = setting(
        1800,
        env="BROKER_VAULT_API_SESSION_TTL",
        section=_FRONT_DOOR,
        gt=0,
        doc="lifetime of a front-door session token",
    )
    vault_api_session_max_ttl_seconds: int = setting(
        8 * 3600,
        env="BROKER_VAULT_API_SESSION_MAX_TTL",
        section=_FRONT_DOOR,
        gt=0,
        doc="how far a session may be renewed",
    )
    vault_api_session_recheck_seconds: float = setting(
        5.0,
        env="BROKER_VAULT_API_SESSION_RECHECK",
        section=_FRONT_DOOR,
        ge=0,
        doc="how stale one replica's view of a session (renewed or revoked elsewhere) may be",
    )

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


SETTINGS: tuple[Declared, ...] = declarations(Settings)
"""Every setting, in declaration order."""
