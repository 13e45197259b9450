"""Typed application keys: every long-lived object the handlers use."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from broker.audit import AccessAudit, LedgerVerifications
from broker.auth import Verifier
from broker.elevation import ElevationService
from broker.grants import GrantService
from broker.grants.krl import RevocationList
from broker.ledger import CheckpointVerifier, Ledger
from broker.metrics import Metrics
from broker.offboarding import OffboardingService
from broker.oidc.signin import SignIn
from broker.policy.active import ActivePolicy
from broker.quotas import Quotas
from broker.reviews import ReviewService
from broker.sessions import SessionStore
from broker.settings import Settings
from broker.vault import VaultClient

from .authn import Authenticator

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
LEDGER = web.AppKey("ledger", Ledger)
VAULT = web.AppKey("vault", VaultClient)
POLICY = web.AppKey("policy", ActivePolicy)
GRANTS = web.AppKey("grants", GrantService)
KRL = web.AppKey("krl", RevocationList)
QUOTAS = web.AppKey("quotas", Quotas)
VERIFIER = web.AppKey("verifier", Verifier)
AUTHN = web.AppKey("authn", Authenticator)
CHECKPOINT_VERIFIER = web.AppKey("checkpoint_verifier", CheckpointVerifier)
AUDIT_ACCESS = web.AppKey("audit_access", AccessAudit)
VERIFICATIONS = web.AppKey("verifications", LedgerVerifications)
ELEVATIONS = web.AppKey("elevations", ElevationService)
OFFBOARDING = web.AppKey("offboarding", OffboardingService)
REVIEWS = web.AppKey("reviews", ReviewService)
SESSIONS = web.AppKey("sessions", SessionStore)
SIGNIN = web.AppKey("signin", SignIn)
OPENAPI = web.AppKey("openapi", bytes)  # the generated document, encoded once
# What GET /metrics answers: this process's series, or every worker's (broker/worker_metrics.py)
EXPOSITION: web.AppKey[Callable[[], bytes]] = web.AppKey("exposition")
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
# Per request: the id every log line and ledger row of the request carries.
REQUEST_ID = web.RequestKey("request_id", str)
