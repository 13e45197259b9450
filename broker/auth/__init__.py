"""Authentication: bearer JWT verification into a ``Principal``, and the local dev issuer.

``Verifier`` trusts the issuers in its ``IssuerConfig`` list (JWKS for production IdPs and
Kubernetes service-account tokens, local PEM keys for the dev issuer) and raises
``broker.errors.AuthError`` with a stable ``code`` for every rejected token.
"""

from broker.auth.dev_issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from broker.auth.principal import Principal, PrincipalKind
from broker.auth.verifier import IssuerConfig, Verifier

__all__ = [
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "DevIssuer",
    "IssuerConfig",
    "Principal",
    "PrincipalKind",
    "Verifier",
]
