"""One identity provider, as the broker's relying party talks to it.

- **Discovery** (``metadata``): fetched on first use, not at start-up (a provider that is
  down refuses sign-in with 503 ``provider_unavailable``; the broker and existing sessions
  go on), kept for an hour, re-fetched after a failure at most every 30 s.
- **Clients**: the confidential client (``client_id`` + secret, HTTP Basic at the token
  endpoint) and the public native client (``native_client_id``, PKCE only). Loopback
  redirects and the device grant use the native client when there is one.
- **ID tokens** are verified by the broker's ``Verifier`` (issuer, audience = the client,
  algorithm allow-list, signature from the provider's JWKS re-fetched on an unknown
  ``kid``, expiry), then here: ``nonce`` equal to the one sent, ``azp`` equal to the
  client when present (required when the audience has several values), claims mapped by
  the provider's ``ClaimMapping``; with ``userinfo_groups`` the groups come from userinfo.
- Every call goes over verified TLS (``BROKER_JWKS_CA_FILE``, else the system store);
  nothing the provider returns is logged.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from broker.auth import IssuerConfig, Principal, Verifier
from broker.auth.claims import ClaimMapping
from broker.errors import AuthError, ProviderUnavailable, SignInRefused
from broker.oidc.metadata import MetadataError, ProviderMetadata, parse_metadata
from broker.settings import OIDCProviderSettings
from broker.tls.loopback import is_loopback
from broker.tls.outbound import describe_tls_failure

__all__ = ["OAuthRefusal", "ProviderClient", "TokenSet"]

_log = logging.getLogger(__name__)

_METADATA_SECONDS = 3600.0
_RETRY_SECONDS = 30.0
_MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint answered (kept in memory only; never logged or ledgered)."""

    id_token: str | None
    access_token: str | None
    refresh_token: str | None


class OAuthRefusal(Exception):
    """The provider answered an OAuth error (``invalid_grant``, ``authorization_pending``)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


class ProviderClient:
    def __init__(
        self,
        settings: OIDCProviderSettings,
        *,
        http: Callable[[], aiohttp.ClientSession],
        verifier_factory: Callable[[IssuerConfig], Verifier],
        timeout_seconds: float = 10.0,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._secret = _client_secret(settings)
        self._http = http
        self._verifier_factory = verifier_factory
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._metadata: ProviderMetadata | None = None
        self._fetched = 0.0
        self._failed = 0.0
        self._verifiers: dict[str, Verifier] = {}
        self._mapping = ClaimMapping(
            settings.subject_claim, settings.groups_claim, settings.groups_prefix
        )

    # --- discovery ------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The checked discovery document; ProviderUnavailable when it cannot be had."""
        now = time.monotonic()
        if self._metadata is not None and now - self._fetched < _METADATA_SECONDS:
            return self._metadata
        if self._metadata is None and now - self._failed < _RETRY_SECONDS and self._failed:
            raise ProviderUnavailable(f"identity provider {self.name} is unavailable")
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            document = await self._get_json(url)
            metadata = parse_metadata(self.settings.issuer, document)
        except (ProviderUnavailable, MetadataError) as e:
            self._failed = now
            if self._metadata is not None:  # keep the last good document a while longer
                _log.warning("identity provider %s: discovery failed: %s", self.name, e)
                return self._metadata
            if isinstance(e, MetadataError):
                raise ProviderUnavailable(f"identity provider {self.name}: {e}") from None
            raise
        self._metadata, self._fetched = metadata, now
        return metadata

    # --- the clients ----------------------------------------------------------------------

    def client_for(self, redirect_uri: str | None) -> str:
        """The client that signs in for ``redirect_uri`` (None: the device grant)."""
        native = self.settings.native_client_id
        loopback = redirect_uri is None or is_loopback(urlsplit(redirect_uri).hostname)
        if native and loopback:
            return native
        if redirect_uri is None:
            raise SignInRefused(
                f"identity provider {self.name} has no native client for device sign-in",
                code="device_not_supported",
            )
        return self.settings.client_id

    async def supports_device(self) -> bool:
        metadata = await self.metadata()
        return bool(self.settings.native_client_id and metadata.device_authorization_endpoint)

    def authorization_url(
        self,
        metadata: ProviderMetadata,
        *,
        client_id: str,
        redirect_uri: str,
        state: str,
        nonce: str,
        code_challenge: str,
    ) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
                # offline_access needs consent at most providers to yield a refresh token.
                **({"prompt": "consent"} if "offline_access" in self.settings.scopes else {}),
            },
            quote_via=quote,
        )
        separator = "&" if urlsplit(metadata.authorization_endpoint).query else "?"
        return f"{metadata.authorization_endpoint}{separator}{query}"

    def end_session_url(self, metadata: ProviderMetadata) -> str | None:
        if metadata.end_session_endpoint is None:
            return None
        separator = "&" if urlsplit(metadata.end_session_endpoint).query else "?"
        query = urlencode({"client_id": self.settings.client_id})
        return f"{metadata.end_session_endpoint}{separator}{query}"

    # --- the token endpoint ---------------------------------------------------------------

    async def exchange_code(
        self, client_id: str, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenSet:
        return await self._token(
            client_id,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
        )

    async def refresh(self, client_id: str, refresh_token: str) -> TokenSet:
        return await self._token(
            client_id, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def start_device(self, client_id: str) -> dict[str, Any]:
        metadata = await self.metadata()
        if metadata.device_authorization_endpoint is None:
            raise SignInRefused(
                f"identity provider {self.name} offers no device sign-in",
                code="device_not_supported",
            )
        answer = await self._post(
            metadata.device_authorization_endpoint,
            client_id,
            {"scope": " ".join(self.settings.scopes)},
        )
        for key in ("device_code", "user_code", "verification_uri"):
            if not isinstance(answer.get(key), str):
                raise ProviderUnavailable(
                    f"identity provider {self.name}: device authorization answer lacks {key}"
                )
        return answer

    async def poll_device(self, client_id: str, device_code: str) -> TokenSet:
        return await self._token(
            client_id,
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": device_code,
            },
        )

    async def revoke(self, client_id: str, refresh_token: str) -> None:
        """Best effort (logout goes on without it): RFC 7009 revocation when offered."""
        try:
            metadata = await self.metadata()
            if metadata.revocation_endpoint is None:
                return
            await self._post(
                metadata.revocation_endpoint,
                client_id,
                {"token": refresh_token, "token_type_hint": "refresh_token"},
                expect_json=False,
            )
        except (ProviderUnavailable, OAuthRefusal) as e:
            _log.warning("identity provider %s: refresh token not revoked: %s", self.name, e)

    async def _token(self, client_id: str, form: dict[str, str]) -> TokenSet:
        metadata = await self.metadata()
        answer = await self._post(metadata.token_endpoint, client_id, form)
        return TokenSet(
            id_token=_str(answer.get("id_token")),
            access_token=_str(answer.get("access_token")),
            refresh_token=_str(answer.get("refresh_token")),
        )

    # --- who signed in ------------------------------------------------------------------

    async def identify(
        self, client_id: str, tokens: TokenSet, *, nonce: str | None, subject: str | None = None
    ) -> Principal:
        """The principal the ID token proves (and userinfo's groups when configured).

        ``nonce``: the one sent with the authorization request (None for the device grant
        and refreshes). ``subject``: the session's subject, which a refreshed token must
        keep. Raises SignInRefused with the reason's code."""
        if tokens.id_token is None:
            raise SignInRefused(
                f"identity provider {self.name} returned no ID token (is 'openid' a scope?)",
                code="missing_id_token",
            )
        verifier = await self._verifier(client_id)
        try:
            principal, claims = await verifier.verify_id_token(tokens.id_token)
        except AuthError as e:
            raise SignInRefused(f"ID token refused: {e.message}", code=e.code) from None
        _check_azp(claims, client_id)
        if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInRefused("ID token nonce does not match the login", code="nonce_mismatch")
        if self.settings.subject_claim == "email" and claims.get("email_verified") is False:
            # An unverified address names nobody: anyone may type it at some providers.
            raise SignInRefused(
                "the provider says this email address is not verified", code="email_not_verified"
            )
        if subject is not None and principal.subject != subject:
            raise SignInRefused(
                "the refreshed ID token names another subject", code="wrong_subject"
            )
        if self.settings.userinfo_groups:
            principal = await self._userinfo_groups(principal, claims, tokens)
        return principal

    async def _userinfo_groups(
        self, principal: Principal, claims: Mapping[str, Any], tokens: TokenSet
    ) -> Principal:
        metadata = await self.metadata()
        if metadata.userinfo_endpoint is None or tokens.access_token is None:
            raise SignInRefused(
                f"identity provider {self.name}: userinfo_groups needs a userinfo endpoint",
                code="userinfo_unavailable",
            )
        info = await self._get_json(
            metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {tokens.access_token}"}
        )
        if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
            raise SignInRefused("userinfo names another subject", code="wrong_subject")
        try:
            groups = self._mapping.groups(info)
        except AuthError as e:
            raise SignInRefused(f"userinfo refused: {e.message}", code=e.code) from None
        return Principal(
            subject=principal.subject,
            kind=principal.kind,
            issuer=principal.issuer,
            groups=groups,
            token_id=principal.token_id,
        )

    def _issuer_config(self, audience: str, jwks_uri: str) -> IssuerConfig:
        s = self.settings
        return IssuerConfig(
            issuer=s.issuer,
            audience=audience,
            algorithms=s.algorithms,
            jwks_url=jwks_uri,
            groups_claim=s.groups_claim,
            subject_claim=s.subject_claim,
            groups_prefix=s.groups_prefix,
            service_account_prefix="",  # people: never a service account
        )

    async def _verifier(self, client_id: str) -> Verifier:
        verifier = self._verifiers.get(client_id)
        if verifier is None:
            metadata = await self.metadata()
            verifier = self._verifier_factory(self._issuer_config(client_id, metadata.jwks_uri))
            self._verifiers[client_id] = verifier
        return verifier

    async def close(self) -> None:
        for verifier in self._verifiers.values():
            await verifier.close()
        self._verifiers.clear()

    # --- HTTP -----------------------------------------------------------------------------

    async def _post(
        self, url: str, client_id: str, form: dict[str, str], *, expect_json: bool = True
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        body = dict(form)
        if client_id == self.settings.client_id and self._secret is not None:
            # RFC 6749 2.3.1: both parts form-urlencoded before Basic encoding.
            pair = f"{quote(client_id, safe='')}:{quote(self._secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            body["client_id"] = client_id
        try:
            async with self._http().post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                raw = await response.content.read(_MAX_RESPONSE_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(url, e) from None
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise ProviderUnavailable(f"identity provider {self.name}: answer too large")
        answer = _json_object(raw)
        if status == 200:
            if answer is None and expect_json:
                raise ProviderUnavailable(f"identity provider {self.name}: answer is not JSON")
            return answer or {}
        if status in (400, 401) and answer is not None and isinstance(answer.get("error"), str):
            raise OAuthRefusal(
                answer["error"][:100], str(answer.get("error_description") or "")[:300]
            )
        raise ProviderUnavailable(f"identity provider {self.name} answered HTTP {status}")

    async def _get_json(self, url: str, headers: dict[str, str] | None = None) -> Any:
        try:
            async with self._http().get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                raw = await response.content.read(_MAX_RESPONSE_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(url, e) from None
        if status != 200 or len(raw) > _MAX_RESPONSE_BYTES:
            raise ProviderUnavailable(f"identity provider {self.name} answered HTTP {status}")
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderUnavailable(
                f"identity provider {self.name}: answer is not JSON"
            ) from None

    def _unreachable(self, url: str, error: BaseException) -> ProviderUnavailable:
        host = urlsplit(url).netloc
        reason = describe_tls_failure(error) or type(error).__name__
        return ProviderUnavailable(f"identity provider {self.name} at {host}: {reason}")


def _client_secret(settings: OIDCProviderSettings) -> str | None:
    if settings.client_secret_file is not None:
        return settings.client_secret_file.read_text().strip()
    return settings.client_secret


def _check_azp(claims: Mapping[str, Any], client_id: str) -> None:
    audience = claims.get("aud")
    azp = claims.get("azp")
    several = isinstance(audience, list) and len(audience) > 1
    if (azp is not None or several) and azp != client_id:
        raise SignInRefused("ID token was issued to another client (azp)", code="azp_mismatch")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
