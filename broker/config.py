"""Settings: one frozen object, built once; ``from_env`` is the only reader of the environment.

Every limit the broker enforces (timeouts, sizes, intervals) is a named field here with a
sane default, so operators can find and tune it in one place.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["IssuerSettings", "Settings", "SettingsError", "load"]


class SettingsError(ValueError):
    """The configuration is invalid; the message names the variable."""


@dataclass(frozen=True)
class IssuerSettings:
    """A trusted JWT issuer (OIDC IdP, Kubernetes SA issuer, or local PEM keys)."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    public_keys: tuple[str, ...] = ()
    groups_claim: str = "groups"


@dataclass(frozen=True)
class Settings:
    # Where it listens. Loopback by default; production binds 0.0.0.0 explicitly.
    host: str = "127.0.0.1"
    port: int = 8080
    # Ledger database: the writer role's DSN (INSERT/SELECT only), and the owner's for migrate.
    database_url: str = ""
    admin_database_url: str | None = None
    # Vault/OpenBao.
    vault_addr: str = "http://127.0.0.1:8200"
    vault_token: str | None = None
    # AppRole (production): role id + secret id instead of a token.
    vault_role_id: str | None = None
    vault_secret_id: str | None = None
    vault_approle_mount: str = "approle"
    vault_secret_id_file: Path | None = None
    policies_dir: Path = Path("policies")
    # Checkpoint signing key: outside the database by design.
    checkpoint_key_path: Path = Path(".broker/checkpoint.key")
    checkpoint_key_name: str = "jit-broker"
    checkpoint_verifier_keys: tuple[str, ...] = ()
    # The newest signed checkpoint, kept outside the database (a file on a volume).
    checkpoint_witness_path: Path | None = None
    ledger_origin: str = "jit-broker/ledger"
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    issuers: tuple[IssuerSettings, ...] = ()
    dev_issuer_key_path: Path | None = None
    # Limits.
    max_body_bytes: int = 64 * 1024
    max_token_bytes: int = 8192
    jwt_leeway_seconds: int = 30
    vault_timeout_seconds: float = 5.0
    vault_max_connections: int = 64
    db_timeout_seconds: float = 5.0
    db_pool_max: int = 10
    ledger_commit_timeout_seconds: float = 5.0
    ledger_max_queue: int = 10_000
    ledger_max_batch: int = 512
    policy_max_file_bytes: int = 256 * 1024
    max_page_size: int = 500
    max_reason_chars: int = 500
    # Background intervals.
    checkpoint_interval_seconds: float = 10.0
    expiry_sweep_interval_seconds: float = 5.0
    policy_reload_interval_seconds: float = 5.0
    auth_failure_flush_seconds: float = 60.0
    orphan_lease_sweep_seconds: float = 60.0
    dependency_probe_seconds: float = 10.0
    vault_login_check_seconds: float = 5.0
    elevation_sweep_seconds: float = 5.0
    # Offboarding: the SLA from terminated_at to completion (measured, reported), and how
    # often each replica re-reads the ledger for newly offboarded/reinstated subjects.
    offboarding_sla_seconds: int = 4 * 3600
    blocklist_refresh_seconds: float = 2.0
    # Continuity: every replica appends broker.heartbeat this often; a silence longer than
    # twice this is a gap in the evidence.
    heartbeat_seconds: float = 60.0
    # Slack-compatible webhooks told of elevation requests and decisions.
    webhook_urls: tuple[str, ...] = ()
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 5
    # Kubernetes auth to Vault: the projected service-account JWT, re-read at every login
    # because the kubelet rotates it. vault_auth_method None = AppRole if a role id is set,
    # else the static token.
    vault_auth_method: str | None = None
    vault_kubernetes_role: str | None = None
    vault_kubernetes_mount: str = "kubernetes"
    vault_kubernetes_token_path: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    # Logs: "json" or "text" (None: json for `broker serve`, text for `broker dev`).
    log_format: str | None = None
    log_level: str = "info"
    # On SIGTERM: how long in-flight requests may take to finish before they are cancelled.
    shutdown_grace_seconds: float = 20.0
    # The Vault-compatible front door (its own listener; None = off): existing Vault clients
    # log in with a JWT and get a broker session token, short-lived and renewable up to a max.
    vault_api_port: int | None = None
    vault_api_session_ttl_seconds: int = 1800
    vault_api_session_max_ttl_seconds: int = 8 * 3600
    # How stale one replica's view of a session (renewal/revocation elsewhere) may be.
    vault_api_session_recheck_seconds: float = 5.0

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _issuers(raw: str | None) -> tuple[IssuerSettings, ...]:
    if not raw:
        return ()
    try:
        items = json.loads(raw)
        if not isinstance(items, list):
            raise TypeError("not a list")
        return tuple(
            IssuerSettings(
                issuer=str(i["issuer"]),
                audience=str(i["audience"]),
                algorithms=tuple(i["algorithms"]),
                jwks_url=i.get("jwks_url"),
                public_keys=tuple(i.get("public_keys", ())),
                groups_claim=str(i.get("groups_claim", "groups")),
            )
            for i in items
        )
    except (ValueError, TypeError, KeyError) as e:
        raise SettingsError(
            "BROKER_TRUSTED_ISSUERS must be a JSON list of "
            '{"issuer", "audience", "algorithms", "jwks_url"?, "public_keys"?}: ' + str(e)
        ) from None


def _secret_id(env: Mapping[str, str]) -> str | None:
    """VAULT_SECRET_ID, or the contents of VAULT_SECRET_ID_FILE (a mounted Secret)."""
    path = env.get("VAULT_SECRET_ID_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise SettingsError(f"VAULT_SECRET_ID_FILE {path!r}: {e.strerror}") from None
    return env.get("VAULT_SECRET_ID")


def load(config_path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults < config file (``config_path``, else ``BROKER_CONFIG``) < environment,
    validated (``broker.config_file``). What ``broker serve`` runs on."""
    from broker.config_file import load_settings

    return load_settings(os.environ if env is None else env, config_path)


def from_env(env: Mapping[str, str] | None = None, *, base: Settings | None = None) -> Settings:
    """Build Settings from ``BROKER_*`` / ``VAULT_*`` variables over ``base`` (defaults)."""
    env = os.environ if env is None else env
    s = base or Settings()
    verifier_keys = env.get("BROKER_CHECKPOINT_VERIFIER_KEYS")
    dev_key = env.get("BROKER_DEV_ISSUER_KEY")
    return replace(
        s,
        host=env.get("BROKER_HOST", s.host),
        port=_int(env, "BROKER_PORT", s.port),
        database_url=env.get("BROKER_DATABASE_URL", s.database_url),
        admin_database_url=env.get("BROKER_ADMIN_DATABASE_URL", s.admin_database_url),
        vault_addr=env.get("VAULT_ADDR", s.vault_addr),
        vault_token=env.get("VAULT_TOKEN", s.vault_token),
        vault_role_id=env.get("VAULT_ROLE_ID", s.vault_role_id),
        vault_secret_id=_secret_id(env) or s.vault_secret_id,
        vault_secret_id_file=(
            Path(env["VAULT_SECRET_ID_FILE"])
            if env.get("VAULT_SECRET_ID_FILE")
            else s.vault_secret_id_file
        ),
        vault_approle_mount=env.get("VAULT_APPROLE_MOUNT", s.vault_approle_mount),
        policies_dir=Path(env.get("BROKER_POLICIES_DIR", str(s.policies_dir))),
        checkpoint_key_path=Path(env.get("BROKER_CHECKPOINT_KEY", str(s.checkpoint_key_path))),
        checkpoint_key_name=env.get("BROKER_CHECKPOINT_KEY_NAME", s.checkpoint_key_name),
        checkpoint_verifier_keys=(
            tuple(k for k in verifier_keys.split(",") if k.strip())
            if verifier_keys
            else s.checkpoint_verifier_keys
        ),
        ledger_origin=env.get("BROKER_LEDGER_ORIGIN", s.ledger_origin),
        checkpoint_witness_path=(
            Path(env["BROKER_CHECKPOINT_WITNESS"])
            if env.get("BROKER_CHECKPOINT_WITNESS")
            else s.checkpoint_witness_path
        ),
        replica_id=env.get("BROKER_REPLICA_ID", s.replica_id),
        issuers=_issuers(env.get("BROKER_TRUSTED_ISSUERS")) or s.issuers,
        dev_issuer_key_path=Path(dev_key) if dev_key else s.dev_issuer_key_path,
        vault_timeout_seconds=_float(env, "BROKER_VAULT_TIMEOUT", s.vault_timeout_seconds),
        db_timeout_seconds=_float(env, "BROKER_DB_TIMEOUT", s.db_timeout_seconds),
        db_pool_max=_int(env, "BROKER_DB_POOL_MAX", s.db_pool_max),
        max_body_bytes=_int(env, "BROKER_MAX_BODY_BYTES", s.max_body_bytes),
        webhook_urls=(
            tuple(u.strip() for u in env["BROKER_WEBHOOK_URLS"].split(",") if u.strip())
            if env.get("BROKER_WEBHOOK_URLS")
            else s.webhook_urls
        ),
        checkpoint_interval_seconds=_float(
            env, "BROKER_CHECKPOINT_INTERVAL", s.checkpoint_interval_seconds
        ),
        heartbeat_seconds=_float(env, "BROKER_HEARTBEAT_SECONDS", s.heartbeat_seconds),
        offboarding_sla_seconds=_int(env, "BROKER_OFFBOARDING_SLA", s.offboarding_sla_seconds),
        blocklist_refresh_seconds=_float(
            env, "BROKER_BLOCKLIST_REFRESH", s.blocklist_refresh_seconds
        ),
        vault_auth_method=env.get("VAULT_AUTH_METHOD") or s.vault_auth_method,
        vault_kubernetes_role=env.get("VAULT_K8S_ROLE") or s.vault_kubernetes_role,
        vault_kubernetes_mount=env.get("VAULT_K8S_MOUNT") or s.vault_kubernetes_mount,
        vault_kubernetes_token_path=Path(
            env.get("VAULT_K8S_TOKEN_PATH") or str(s.vault_kubernetes_token_path)
        ),
        log_format=env.get("BROKER_LOG_FORMAT") or s.log_format,
        log_level=env.get("BROKER_LOG_LEVEL") or s.log_level,
        shutdown_grace_seconds=_float(env, "BROKER_SHUTDOWN_GRACE", s.shutdown_grace_seconds),
        vault_api_port=(
            _int(env, "BROKER_VAULT_API_PORT", 0)
            if env.get("BROKER_VAULT_API_PORT")
            else s.vault_api_port
        ),
        vault_api_session_ttl_seconds=_int(
            env, "BROKER_VAULT_API_SESSION_TTL", s.vault_api_session_ttl_seconds
        ),
        vault_api_session_max_ttl_seconds=_int(
            env, "BROKER_VAULT_API_SESSION_MAX_TTL", s.vault_api_session_max_ttl_seconds
        ),
    )
