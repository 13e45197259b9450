"""An OpenID Provider's discovery document, checked before anything trusts it.

``issuer`` must equal the configured issuer exactly (OpenID Connect Discovery 4.3: no
trailing slash added or removed), and every endpoint must be https, or http on a loopback
host (a provider in a test or on a laptop). Optional endpoints turn features on: device
sign-in, userinfo groups, revocation at logout, the provider's own logout page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from broker.tls.loopback import is_loopback

__all__ = ["MetadataError", "ProviderMetadata", "parse_metadata"]


class MetadataError(ValueError):
    """The discovery document cannot be trusted or used; the message says why."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    end_session_endpoint: str | None = None


def _url(document: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = document.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise MetadataError(f"discovery document has no {key}")
    url = urlsplit(value)
    if not (url.scheme == "https" or (url.scheme == "http" and is_loopback(url.hostname))):
        raise MetadataError(f"{key} must be https (http only on loopback), got {value[:200]}")
    return value


def parse_metadata(issuer: str, document: Any) -> ProviderMetadata:
    """The checked metadata of ``issuer``; MetadataError when it cannot be used."""
    if not isinstance(document, dict):
        raise MetadataError("discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise MetadataError(
            f"discovery document names issuer {str(document.get('issuer'))[:200]!r}, not {issuer!r}"
        )
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise MetadataError("the provider does not support PKCE with S256")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=_required(document, "authorization_endpoint"),
        token_endpoint=_required(document, "token_endpoint"),
        jwks_uri=_required(document, "jwks_uri"),
        userinfo_endpoint=_url(document, "userinfo_endpoint", required=False),
        device_authorization_endpoint=_url(
            document, "device_authorization_endpoint", required=False
        ),
        revocation_endpoint=_url(document, "revocation_endpoint", required=False),
        end_session_endpoint=_url(document, "end_session_endpoint", required=False),
    )


def _required(document: dict[str, Any], key: str) -> str:
    url = _url(document, key, required=True)
    assert url is not None  # required: _url raised otherwise
    return url
