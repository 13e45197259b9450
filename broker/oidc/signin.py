"""Signing people in: the relying party's flows, from first redirect to broker session.

- **Browser** (``start`` .. ``finish``): authorization code with PKCE (S256), a fresh
  ``state`` and ``nonce`` per login. The client (``broker login``, the ``bao`` CLI) also
  sends a ``client_nonce`` it keeps to itself: the pending login is sealed under state +
  client nonce and taken exactly once, so a replayed or stolen ``state`` finishes nothing.
- **Device** (``start_device`` .. ``poll_device``): RFC 8628 through the native client;
  the device code stays on the server, sealed under the handle the client polls with.
- **Sessions**: a finished sign-in is a broker session (``SessionStore``: ledgered
  ``session.created`` with the provider and the client, never a token). The provider's
  refresh token is kept sealed under the session token's secret; ``renew`` spends it and
  re-reads the groups (a group removed at the provider is gone at the next renewal), and a
  provider that refuses ends the session. Without a refresh token a session is not renewed.
- **Logout** revokes the session (``session.revoked``, reason ``logout``) and the refresh
  token at the provider, and hands back the provider's end-session URL when it has one.

Every refusal raises with a reason code, is counted like a rejected token (metric and the
aggregated ``auth.failed`` row), and creates no session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from broker.errors import AuthError, BrokerError, SignInRefused
from broker.metrics import Metrics
from broker.oidc.provider import OAuthRefusal, ProviderClient, TokenSet
from broker.oidc.sealing import seal, unseal
from broker.oidc.store import Pending, SignInStore, digest
from broker.sessions import Session, SessionStore, token_secret
from broker.tls.loopback import is_loopback
from broker.web.authn import Authenticator

__all__ = ["Api", "DeviceStart", "LoginStart", "SignIn", "SignedIn"]

Api = Literal["cli", "vault", "console"]

_LOGIN_SECONDS = 600  # a browser sign-in must finish within this
_MAX_DEVICE_SECONDS = 900
_STILL_WAITING = ("authorization_pending", "slow_down")  # not failures: the user is typing
# RFC 8628's refusals, and the names Entra ID uses for them.
_DEVICE_REFUSALS = {
    "access_denied": "access_denied",
    "authorization_declined": "access_denied",
    "expired_token": "expired_token",
    "bad_verification_code": "expired_token",
}


@dataclass(frozen=True)
class LoginStart:
    auth_url: str
    state: str
    expires_in: int


@dataclass(frozen=True)
class DeviceStart:
    handle: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: int
    expires_in: int


@dataclass(frozen=True)
class SignedIn:
    token: str  # returned once, to the client that signed in
    session: Session


def _challenge(verifier: str) -> str:
    digest_ = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest_).rstrip(b"=").decode()


def check_loopback_redirect(redirect_uri: str) -> None:
    """``http`` to 127.0.0.1, ``localhost`` or ``[::1]`` with a port: what a CLI listens on."""
    url = urlsplit(redirect_uri)
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "http" or not is_loopback(url.hostname) or port is None or url.fragment:
        raise SignInRefused(
            "redirect_uri must be http://127.0.0.1:<port>/… (or localhost, [::1]):"
            " a listener on the signing-in machine",
            code="invalid_redirect_uri",
        )


class SignIn:
    def __init__(
        self,
        providers: Mapping[str, ProviderClient],
        *,
        store: SignInStore,
        sessions: SessionStore,
        authn: Authenticator,
        metrics: Metrics,
        clock: Callable[[], datetime],
        console_redirect: str | None = None,
    ) -> None:
        self._providers = providers
        # The console's callback (from public_url): the one redirect off loopback allowed.
        self._console_redirect = console_redirect
        self._store = store
        self._sessions = sessions
        self._authn = authn
        self._metrics = metrics
        self._clock = clock

    # --- which providers ------------------------------------------------------------------

    async def describe(self) -> list[dict[str, Any]]:
        """The enabled providers and the flows each offers (device needs discovery: a
        provider that is down is listed with the browser flow only)."""
        described = []
        for provider in self._providers.values():
            if not provider.settings.enabled:
                continue
            try:
                device = await provider.supports_device()
            except BrokerError:
                device = False
            described.append(
                {
                    "name": provider.name,
                    "display_name": provider.settings.display_name or provider.name,
                    "issuer": provider.settings.issuer,
                    "flows": ["browser", "device"] if device else ["browser"],
                }
            )
        return described

    def _provider(self, name: str) -> ProviderClient:
        provider = self._providers.get(name)
        if provider is None:
            raise SignInRefused(
                f"no identity provider named {name[:64]!r}", code="unknown_provider"
            )
        if not provider.settings.enabled:
            raise SignInRefused(f"identity provider {name} is disabled", code="provider_disabled")
        return provider

    # --- the browser flow ---------------------------------------------------------------

    async def start(
        self,
        provider_name: str,
        *,
        redirect_uri: str,
        client_nonce: str,
        api: Api,
        login_role: str | None = None,
    ) -> LoginStart:
        """``login_role``: a role the client named (``bao login -method=oidc role=...``),
        recorded in the session's ``session.created`` row; it grants nothing."""
        async with self._counted(provider_name, "browser"):
            # Off loopback, only the console's own callback (from public_url).
            if redirect_uri != self._console_redirect:
                check_loopback_redirect(redirect_uri)
            provider = self._provider(provider_name)
            metadata = await provider.metadata()
            client_id = provider.client_for(redirect_uri)
            state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            verifier = secrets.token_urlsafe(48)  # 64 chars, within RFC 7636's 43..128
            await self._store.put_pending(
                state,
                Pending(
                    kind="code",
                    provider=provider.name,
                    client_id=client_id,
                    api=api,
                    redirect_uri=redirect_uri,
                    nonce=nonce,
                    client_nonce_sha256=digest(client_nonce),
                    sealed=seal((state + client_nonce).encode(), "pkce", verifier),
                    expires_at=self._clock() + timedelta(seconds=_LOGIN_SECONDS),
                    login_role=login_role,
                ),
            )
            url = provider.authorization_url(
                metadata,
                client_id=client_id,
                redirect_uri=redirect_uri,
                state=state,
                nonce=nonce,
                code_challenge=_challenge(verifier),
            )
            return LoginStart(auth_url=url, state=state, expires_in=_LOGIN_SECONDS)

    async def finish(
        self,
        *,
        state: str,
        code: str,
        client_nonce: str,
        request_id: str,
        client: Mapping[str, str],
    ) -> SignedIn:
        async with self._counted(None, "browser") as note:
            pending = await self._store.take_pending(state, "code")
            if pending is None or pending.expires_at <= self._clock():
                raise SignInRefused(
                    "unknown, used or expired sign-in state: start the sign-in again",
                    code="invalid_state",
                )
            note(pending.provider)
            if not hmac.compare_digest(pending.client_nonce_sha256 or "", digest(client_nonce)):
                raise SignInRefused(
                    "client_nonce does not match the one the sign-in started with",
                    code="client_nonce_mismatch",
                )
            verifier = unseal((state + client_nonce).encode(), "pkce", pending.sealed)
            if verifier is None or pending.redirect_uri is None:
                raise SignInRefused("the sign-in state cannot be opened", code="invalid_state")
            provider = self._provider(pending.provider)
            tokens = await self._exchange(
                provider.exchange_code(
                    pending.client_id,
                    code=code,
                    redirect_uri=pending.redirect_uri,
                    code_verifier=verifier,
                )
            )
            return await self._session(
                provider, pending, tokens, nonce=pending.nonce, request_id=request_id, client=client
            )

    # --- the device flow ----------------------------------------------------------------

    async def start_device(self, provider_name: str, *, api: Api) -> DeviceStart:
        async with self._counted(provider_name, "device"):
            provider = self._provider(provider_name)
            client_id = provider.client_for(None)
            answer = await self._exchange(provider.start_device(client_id))
            expires_in = min(_int(answer.get("expires_in"), 600), _MAX_DEVICE_SECONDS)
            handle = secrets.token_urlsafe(32)
            await self._store.put_pending(
                handle,
                Pending(
                    kind="device",
                    provider=provider.name,
                    client_id=client_id,
                    api=api,
                    redirect_uri=None,
                    nonce=None,
                    client_nonce_sha256=None,
                    sealed=seal(handle.encode(), "device", str(answer["device_code"])),
                    expires_at=self._clock() + timedelta(seconds=expires_in),
                ),
            )
            complete = answer.get("verification_uri_complete")
            return DeviceStart(
                handle=handle,
                user_code=str(answer["user_code"]),
                verification_uri=str(answer["verification_uri"]),
                verification_uri_complete=complete if isinstance(complete, str) else None,
                interval=max(1, _int(answer.get("interval"), 5)),
                expires_in=expires_in,
            )

    async def poll_device(
        self, handle: str, *, request_id: str, client: Mapping[str, str]
    ) -> SignedIn:
        async with self._counted(None, "device") as note:
            pending = await self._store.peek_pending(handle, "device")
            if pending is None or pending.expires_at <= self._clock():
                raise SignInRefused(
                    "unknown, used or expired device sign-in: start again", code="expired_token"
                )
            note(pending.provider)
            device_code = unseal(handle.encode(), "device", pending.sealed)
            if device_code is None:
                raise SignInRefused("the device sign-in cannot be opened", code="invalid_state")
            provider = self._provider(pending.provider)
            try:
                tokens = await self._exchange(provider.poll_device(pending.client_id, device_code))
            except SignInRefused as e:
                if e.code not in _STILL_WAITING:
                    await self._store.take_pending(handle, "device")
                raise
            if await self._store.take_pending(handle, "device") is None:
                raise SignInRefused("the device sign-in was already used", code="expired_token")
            return await self._session(
                provider, pending, tokens, nonce=None, request_id=request_id, client=client
            )

    # --- sessions -----------------------------------------------------------------------

    async def _session(
        self,
        provider: ProviderClient,
        pending: Pending,
        tokens: TokenSet,
        *,
        nonce: str | None,
        request_id: str,
        client: Mapping[str, str],
    ) -> SignedIn:
        principal = await provider.identify(pending.client_id, tokens, nonce=nonce)
        self._authn.refuse_if_offboarded(principal)
        token, session = await self._sessions.create(
            principal,
            mount=provider.name,
            login_role=pending.login_role,
            request_id=request_id,
            client={**client, "api": pending.api},
            provider=provider.name,
        )
        if tokens.refresh_token is not None:
            await self._keep_refresh(session, token, pending.client_id, tokens.refresh_token)
        return SignedIn(token=token, session=session)

    async def _keep_refresh(
        self, session: Session, token: str, client_id: str, refresh_token: str
    ) -> None:
        await self._store.put_refresh(
            session.accessor,
            provider=session.provider or "",
            client_id=client_id,
            sealed=seal(token_secret(token), "refresh:" + session.accessor, refresh_token),
            expires_at=session.max_expires_at,
        )

    async def renew(self, session: Session, token: str, *, request_id: str) -> Session:
        """Refresh at the provider, re-read the groups, extend the session."""
        if session.provider is None:
            raise SignInRefused(
                "this session did not come from an identity provider; renew it where it was made",
                code="not_a_sign_in_session",
            )
        async with (
            self._counted(session.provider, "refresh"),
            self._store.refreshing(session.accessor),
        ):
            provider = self._provider(session.provider)
            stored = await self._store.get_refresh(session.accessor)
            refresh = (
                unseal(token_secret(token), "refresh:" + session.accessor, stored.sealed)
                if stored is not None
                else None
            )
            if stored is None or refresh is None:
                raise AuthError(
                    "the identity provider gave this session no refresh token: sign in again",
                    code="reauthentication_required",
                )
            try:
                tokens = await provider.refresh(stored.client_id, refresh)
            except OAuthRefusal as e:
                # The provider says no (user disabled, token revoked): the session ends now.
                await self._store.delete_refresh(session.accessor)
                await self._sessions.revoke(
                    session, request_id=request_id, reason="provider_refused"
                )
                raise AuthError(
                    f"the identity provider refused to renew the session ({e.error}):"
                    " sign in again",
                    code="session_revoked",
                ) from None
            principal = await provider.identify(
                stored.client_id, tokens, nonce=None, subject=session.principal.subject
            )
            renewed = await self._sessions.renew(
                session, None, request_id=request_id, groups=principal.groups
            )
            if tokens.refresh_token is not None and tokens.refresh_token != refresh:
                await self._keep_refresh(renewed, token, stored.client_id, tokens.refresh_token)
            return renewed

    async def logout(self, session: Session, token: str, *, request_id: str) -> str | None:
        """End the session here and at the provider; the provider's logout URL, if any."""
        end_session_url = None
        stored = await self._store.get_refresh(session.accessor)
        await self._store.delete_refresh(session.accessor)
        await self._sessions.revoke(session, request_id=request_id, reason="logout")
        provider = self._providers.get(session.provider or "")
        if provider is not None:
            if stored is not None:
                refresh = unseal(token_secret(token), "refresh:" + session.accessor, stored.sealed)
                if refresh is not None:
                    await provider.revoke(stored.client_id, refresh)
            try:
                end_session_url = provider.end_session_url(await provider.metadata())
            except BrokerError:
                end_session_url = None  # the provider is down: the broker's part is done
        return end_session_url

    # --- bookkeeping --------------------------------------------------------------------

    async def _exchange(self, call: Any) -> Any:
        """Await a token-endpoint call; the provider's OAuth refusal becomes ours."""
        try:
            return await call
        except OAuthRefusal as e:
            code = (
                e.error
                if e.error in _STILL_WAITING
                else _DEVICE_REFUSALS.get(e.error, "code_rejected")
            )
            raise SignInRefused(f"the identity provider refused: {e}", code=code) from None

    @asynccontextmanager
    async def _counted(
        self, provider: str | None, flow: str
    ) -> AsyncIterator[Callable[[str], None]]:
        """Count the outcome of one step; a refusal is a failed sign-in (metric and the
        aggregated ``auth.failed`` row), except "still waiting" answers of the device grant.
        Yields a function to name the provider once the step knows it."""
        seen = [provider or "-"]
        try:
            yield lambda name: seen.__setitem__(0, name)
        except BrokerError as e:
            self._metrics.signins.labels(seen[0], flow, e.code).inc()
            if e.code not in _STILL_WAITING:
                self._authn.count_failure(e.code)
            raise
        self._metrics.signins.labels(seen[0], flow, "ok").inc()


def _int(value: Any, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    )
