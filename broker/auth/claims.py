"""Claims to identity: which claim names the subject, which holds the groups.

One mapping for every token the broker accepts (service JWTs and people's ID tokens), so
a provider's quirks are configuration, not code:

- ``subject_claim``: ``sub`` (default), ``email``, ``preferred_username`` or any string
  claim; a non-empty printable string of at most ``MAX_SUBJECT_CHARS``.
- ``groups_claim``: a claim name, or a dotted path into nested objects
  (``realm_access.roles`` for Keycloak realm roles); a list of strings.
- A token *without* the groups claim (absent anywhere along the path) maps to no groups:
  no roles, never an error. A claim that is present but of another shape is refused.
- ``groups_prefix`` is prepended to every group (``okta:`` keeps two providers' "admins"
  apart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import AuthError
from broker.text import is_safe_text

__all__ = ["MAX_SUBJECT_CHARS", "ClaimMapping"]

MAX_SUBJECT_CHARS = 256
"""Longest subject accepted; Kubernetes SA subjects and emails stay far below it."""

_MISSING = object()


@dataclass(frozen=True)
class ClaimMapping:
    subject_claim: str = "sub"
    groups_claim: str = "groups"
    groups_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.subject_claim or not self.groups_claim:
            raise ValueError("subject_claim and groups_claim must be non-empty")
        if any(not part for part in self.groups_claim.split(".")):
            raise ValueError(f"groups_claim {self.groups_claim!r} is not a dotted claim path")

    def subject(self, claims: Mapping[str, Any]) -> str:
        """The subject, or AuthError ``missing_claim``."""
        value = claims.get(self.subject_claim)
        if (
            not isinstance(value, str)
            or not value
            or len(value) > MAX_SUBJECT_CHARS
            or not is_safe_text(value)
        ):
            raise AuthError(
                f"token {self.subject_claim!r} must be a non-empty printable string of at most"
                f" {MAX_SUBJECT_CHARS} chars",
                code="missing_claim",
            )
        return value

    def groups(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """The groups (prefixed); empty when the claim is absent; AuthError when malformed."""
        value: Any = claims
        for part in self.groups_claim.split("."):
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
            if value is _MISSING:
                return frozenset()
        if not isinstance(value, list) or not all(
            isinstance(g, str) and is_safe_text(g) for g in value
        ):
            raise AuthError(
                f"token {self.groups_claim!r} must be a list of strings", code="missing_claim"
            )
        return frozenset(self.groups_prefix + g for g in value)
