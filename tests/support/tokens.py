"""Dev JWTs for identities the demo does not have (a fresh subject, other groups)."""

from __future__ import annotations

import uuid
from typing import Any

from broker.auth import DevIssuer
from broker.settings import Settings

__all__ = ["claims_with", "dev_issuer", "fresh_subject", "mint"]


def dev_issuer(settings: Settings) -> DevIssuer:
    """The session's dev issuer (its key file is created by ``prepare_broker``)."""
    assert settings.dev_issuer_key_path is not None
    return DevIssuer.load_or_create(settings.dev_issuer_key_path)


def mint(settings: Settings, subject: str, groups: list[str]) -> str:
    """A token the session broker accepts, for ``subject`` in ``groups``."""
    return dev_issuer(settings).mint(subject, groups)


def fresh_subject(prefix: str) -> str:
    """A subject no other test uses: the ledger is shared by the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def claims_with(claims: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``claims`` with ``overrides`` applied; an override of None drops that claim."""
    out = dict(claims)
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out
