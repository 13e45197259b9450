"""Who is asking: the result of verifying a bearer token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Principal", "PrincipalKind"]

PrincipalKind = Literal["human", "service"]


@dataclass(frozen=True)
class Principal:
    """A verified identity.

    ``subject`` is the token's ``sub`` (for Kubernetes service accounts the full
    ``system:serviceaccount:<ns>:<name>``); ``issuer`` is the trusted issuer that vouched for
    it; ``groups`` come from the issuer's groups claim. ``token_id`` is the ``jti`` if any
    (recorded, never the token itself).
    """

    subject: str
    kind: PrincipalKind
    issuer: str
    groups: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None

    @property
    def service_account(self) -> str | None:
        """``<namespace>:<name>`` for a Kubernetes service account, else None."""
        prefix = "system:serviceaccount:"
        if self.subject.startswith(prefix):
            return self.subject[len(prefix) :]
        return None
