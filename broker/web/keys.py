"""Typed application keys: every long-lived object the handlers use."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from broker.auth import Verifier
from broker.config import Settings
from broker.elevation import ElevationService
from broker.grants import GrantService
from broker.ledger import CheckpointVerifier, Ledger
from broker.metrics import Metrics
from broker.policy.active import ActivePolicy
from broker.vault import VaultClient

from .authn import Authenticator

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
LEDGER = web.AppKey("ledger", Ledger)
VAULT = web.AppKey("vault", VaultClient)
POLICY = web.AppKey("policy", ActivePolicy)
GRANTS = web.AppKey("grants", GrantService)
VERIFIER = web.AppKey("verifier", Verifier)
AUTHN = web.AppKey("authn", Authenticator)
CHECKPOINT_VERIFIER = web.AppKey("checkpoint_verifier", CheckpointVerifier)
ELEVATIONS = web.AppKey("elevations", ElevationService)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
