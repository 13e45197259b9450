"""Bearer JWT verification: ``Authorization`` header in, ``Principal`` out.

Order of checks, each failing with ``AuthError`` and a stable ``code``:

1. header shape ``Bearer <jws>`` (``missing_token``), size (``token_too_large``), JWS
   compact form with base64url segments and a JSON object header (``malformed_token``);
2. ``alg``: never ``none`` nor any symmetric ``HS*``, and in some issuer's allow-list
   (``algorithm_not_allowed``); ``kid`` a short plain string (``unknown_key``); no ``crit``;
3. only then the unverified payload is read, for ``iss`` alone, to pick the issuer
   (``untrusted_issuer``), whose own allow-list must contain ``alg``;
4. key by (issuer, kid) from the local keys or the issuer's JWKS (``unknown_key``,
   ``jwks_unavailable``); the key's type must allow ``alg``;
5. PyJWT checks the signature and ``exp``/``nbf``/``iat``/``iss``/``aud`` with leeway
   (``invalid_signature``, ``token_expired``, ``token_not_yet_valid``, ``wrong_audience``,
   ``missing_claim``);
6. the verified claims make the ``Principal``: ``sub`` non-empty and at most
   ``MAX_SUBJECT_CHARS``, groups a list of strings (``missing_claim``).

No PyJWT or cryptography exception escapes ``verify``, and no message echoes the token.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from broker.auth.claims import MAX_SUBJECT_CHARS, ClaimMapping
from broker.auth.jwks import (
    SUPPORTED_ALGORITHMS,
    JwksCache,
    VerificationKey,
    b64url_decode,
    is_acceptable_kid,
    key_from_public_key,
)
from broker.auth.principal import Principal, PrincipalKind
from broker.errors import AuthError
from broker.text import is_safe_text
from broker.tls.loopback import is_loopback
from broker.tls.outbound import client_context

__all__ = ["MAX_SUBJECT_CHARS", "REQUIRED_CLAIMS", "IssuerConfig", "Verifier"]


REQUIRED_CLAIMS = ("exp", "sub", "iss", "aud")

_JWS_COMPACT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted token issuer.

    Exactly one key source: ``jwks_url`` (an OIDC IdP or the Kubernetes service-account
    issuer; https, or http on a loopback host for development) or ``public_keys`` (PEM
    public keys, each addressed by its RFC 7638 thumbprint as ``kid``). ``algorithms`` is the
    allow-list; symmetric (``HS*``) and ``none`` are refused because a verifier holding only
    public keys must never accept a MAC keyed with public material. Subjects starting with
    ``service_account_prefix`` become principals of kind ``"service"`` (empty: none do);
    with ``service_subjects`` every subject does (client-credentials tokens).

    Raises ``ValueError`` on construction if any of this does not hold.
    """

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    public_keys: tuple[str, ...] = ()
    groups_claim: str = "groups"
    service_account_prefix: str = "system:serviceaccount:"
    subject_claim: str = "sub"
    groups_prefix: str = ""
    service_subjects: bool = False

    def __post_init__(self) -> None:
        # Accept any sequence from callers but store tuples, so the config stays hashable.
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        object.__setattr__(self, "public_keys", tuple(self.public_keys))
        if not self.issuer:
            raise ValueError("issuer must be non-empty")
        if not self.audience:
            raise ValueError(f"issuer {self.issuer}: audience must be non-empty")
        if not self.algorithms:
            raise ValueError(f"issuer {self.issuer}: algorithms must not be empty")
        for alg in self.algorithms:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(
                    f"issuer {self.issuer}: algorithm {alg!r} is not allowed; only asymmetric "
                    "signatures can be verified with public keys"
                )
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"issuer {self.issuer}: unsupported algorithm {alg!r}")
        if (self.jwks_url is None) == (not self.public_keys):
            raise ValueError(
                f"issuer {self.issuer}: configure exactly one of jwks_url or public_keys"
            )
        if self.jwks_url is not None:
            url = urlsplit(self.jwks_url)
            if not (url.scheme == "https" or (url.scheme == "http" and is_loopback(url.hostname))):
                raise ValueError(
                    f"issuer {self.issuer}: jwks_url must be https (http only on loopback)"
                )
        try:
            self.claim_mapping()
        except ValueError as e:
            raise ValueError(f"issuer {self.issuer}: {e}") from None

    def claim_mapping(self) -> ClaimMapping:
        return ClaimMapping(self.subject_claim, self.groups_claim, self.groups_prefix)


@dataclass(frozen=True, slots=True)
class _Issuer:
    config: IssuerConfig
    allowed: frozenset[str]
    static_keys: Mapping[str, VerificationKey] | None
    jwks: JwksCache | None
    decode_options: Options


def _fail(code: str, message: str) -> NoReturn:
    raise AuthError(message, code=code)


def _decode_json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested JSON
        raise AuthError(f"token {what} is not base64url JSON", code="malformed_token") from e
    if not isinstance(value, dict):
        _fail("malformed_token", f"token {what} is not a JSON object")
    return value


class Verifier:
    """Verifies bearer JWTs from the configured issuers and returns a ``Principal``.

    Parsed keys are cached per (issuer, kid): local PEM keys are parsed here, JWKS keys on
    fetch, so a verification costs one signature check and no key parsing. The aiohttp
    session for JWKS fetches is made lazily by ``session_factory`` (default: a plain
    session without cookies, verifying ``https://`` JWKS URLs against ``jwks_ca_file`` when
    given, else the system trust store) and is owned, and closed by ``close()``, by this
    verifier.

    Raises ``ValueError`` on construction for duplicate issuers, unreadable PEM keys, or a
    local key that none of its issuer's algorithms can use.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        jwks_ca_file: Path | None = None,
        max_token_bytes: int = 8192,
        leeway_seconds: int = 30,
        jwks_cache_seconds: int = 300,
        jwks_min_refresh_seconds: int = 30,
        jwks_timeout_seconds: float = 5.0,
        jwks_max_bytes: int = 262144,
        verified_cache_size: int = 10_000,
        verified_cache_seconds: float = 60.0,
    ) -> None:
        if not issuers:
            raise ValueError("at least one issuer must be configured")
        jwks_ssl = (
            client_context(cafile=jwks_ca_file, what="JWKS CA file (BROKER_JWKS_CA_FILE)")
            if jwks_ca_file is not None
            else True
        )
        self._session_factory = session_factory or (lambda: _default_session(jwks_ssl))
        self._session: aiohttp.ClientSession | None = None
        self._max_token_bytes = max_token_bytes
        self._leeway = leeway_seconds
        self._issuers: dict[str, _Issuer] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer} configured twice")
            static_keys: dict[str, VerificationKey] | None = None
            jwks: JwksCache | None = None
            if config.jwks_url is not None:
                jwks = JwksCache(
                    issuer=config.issuer,
                    url=config.jwks_url,
                    session=self._get_session,
                    cache_seconds=jwks_cache_seconds,
                    min_refresh_seconds=jwks_min_refresh_seconds,
                    timeout_seconds=jwks_timeout_seconds,
                    max_bytes=jwks_max_bytes,
                )
            else:
                static_keys = {}
                for pem in config.public_keys:
                    key = _load_pem(config, pem)
                    static_keys[key.kid] = key
            self._issuers[config.issuer] = _Issuer(
                config=config,
                allowed=frozenset(config.algorithms),
                static_keys=static_keys,
                jwks=jwks,
                decode_options={"require": list(REQUIRED_CLAIMS)},
            )
        self._all_algorithms = frozenset().union(*(i.allowed for i in self._issuers.values()))
        # Verified tokens: token -> (principal, exp, cached until). A signature check is
        # ~0.2 ms, a quarter of an issuance's CPU; a token is immutable, so re-checking it
        # buys nothing but its expiry, which hits still check. Entries live at most
        # verified_cache_seconds, bounding how long a key removed from a JWKS still counts.
        self._verified: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._verified_size = verified_cache_size
        self._verified_seconds = verified_cache_seconds

    async def verify(self, authorization_header: str | None) -> Principal:
        """Verify the raw ``Authorization`` header value and return its ``Principal``.

        Raises ``AuthError`` with one of the codes listed in the module docstring; nothing
        else escapes.
        """
        token = self._extract_token(authorization_header)
        cached = self._verified.get(token)
        if cached is not None:
            principal, exp, until = cached
            now = time.time()
            if now < until and now < exp + self._leeway:
                return principal
            del self._verified[token]
        principal, claims = await self._verify_token(token)
        if self._verified_size > 0:
            if len(self._verified) >= self._verified_size:
                self._verified.popitem(last=False)
            now = time.time()
            self._verified[token] = (principal, float(claims["exp"]), now + self._verified_seconds)
        return principal

    async def verify_id_token(self, token: str) -> tuple[Principal, dict[str, Any]]:
        """An OpenID Connect ID token (the same checks, never cached: it is used once);
        returns the claims too, for the relying party's own checks (nonce, ``azp``)."""
        return await self._verify_token(self._extract_token(f"Bearer {token}"))

    async def _verify_token(self, token: str) -> tuple[Principal, dict[str, Any]]:
        header_b64, payload_b64, _ = token.split(".")
        header = _decode_json_object(header_b64, "header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            _fail("malformed_token", "token header has no 'alg'")
        if alg.lower() == "none" or alg.upper().startswith("HS") or alg not in self._all_algorithms:
            _fail("algorithm_not_allowed", "token signature algorithm is not allowed")
        if "crit" in header or "b64" in header:
            # RFC 7515 4.1.11: extensions we do not implement must be refused, not ignored.
            _fail("malformed_token", "token header uses unsupported critical extensions")
        kid = header.get("kid")
        if kid is not None:
            if not isinstance(kid, str):
                _fail("malformed_token", "token header 'kid' is not a string")
            if not is_acceptable_kid(kid):
                _fail("unknown_key", "token key id is not acceptable")

        # Unverified, and used for nothing but choosing whose keys to try.
        issuer_name = _decode_json_object(payload_b64, "payload").get("iss")
        if not isinstance(issuer_name, str) or issuer_name not in self._issuers:
            _fail("untrusted_issuer", "token issuer is missing or not trusted")
        issuer = self._issuers[issuer_name]
        if alg not in issuer.allowed:
            _fail("algorithm_not_allowed", "token algorithm is not allowed for its issuer")

        key = await self._key(issuer, kid)
        if alg not in key.algorithms:
            _fail("algorithm_not_allowed", "token signature algorithm does not match its key")
        claims = self._decode(token, key, alg, issuer)
        return self._principal(claims, issuer.config), claims

    async def close(self) -> None:
        """Stop JWKS refreshes and close the HTTP session, if one was made. Idempotent."""
        for issuer in self._issuers.values():
            if issuer.jwks is not None:
                await issuer.jwks.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _extract_token(self, authorization_header: str | None) -> str:
        if not authorization_header:
            _fail("missing_token", "missing bearer token")
        scheme, _, token = authorization_header.partition(" ")
        # RFC 7235: the auth scheme is case-insensitive.
        if scheme.lower() != "bearer":
            _fail("missing_token", "authorization is not a bearer token")
        token = token.strip()
        if not token:
            _fail("missing_token", "missing bearer token")
        if len(token) > self._max_token_bytes:
            _fail("token_too_large", f"token is larger than {self._max_token_bytes} bytes")
        if not _JWS_COMPACT_RE.fullmatch(token):
            _fail("malformed_token", "token is not a compact JWS")
        return token

    async def _key(self, issuer: _Issuer, kid: str | None) -> VerificationKey:
        if issuer.jwks is not None:
            return await issuer.jwks.get(kid)
        keys = issuer.static_keys or {}
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.values()))
            _fail("unknown_key", "token has no key id and its issuer has more than one key")
        key = keys.get(kid)
        if key is None:
            _fail("unknown_key", "token is signed with an unknown key")
        return key

    def _decode(
        self, token: str, key: VerificationKey, alg: str, issuer: _Issuer
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=issuer.config.audience,
                issuer=issuer.config.issuer,
                leeway=self._leeway,
                options=issuer.decode_options,
            )
        except jwt.InvalidSignatureError as e:
            raise AuthError("token signature is invalid", code="invalid_signature") from e
        except jwt.ExpiredSignatureError as e:
            raise AuthError("token has expired", code="token_expired") from e
        except jwt.ImmatureSignatureError as e:
            raise AuthError("token is not yet valid", code="token_not_yet_valid") from e
        except jwt.InvalidAudienceError as e:
            raise AuthError("token is not meant for this service", code="wrong_audience") from e
        except jwt.InvalidIssuerError as e:
            raise AuthError("token issuer is not trusted", code="untrusted_issuer") from e
        except jwt.InvalidAlgorithmError as e:
            raise AuthError("token algorithm is not allowed", code="algorithm_not_allowed") from e
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token lacks required claim {e.claim!r}", code="missing_claim") from e
        except (InvalidSubjectError, InvalidJTIError, jwt.InvalidIssuedAtError) as e:
            raise AuthError("token has an invalid claim", code="missing_claim") from e
        except jwt.InvalidKeyError as e:
            raise AuthError(
                "token algorithm does not match its key", code="algorithm_not_allowed"
            ) from e
        except jwt.PyJWTError as e:  # DecodeError and whatever a later PyJWT adds
            raise AuthError("token is malformed", code="malformed_token") from e
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as e:
            # Belt and braces: cryptography errors PyJWT might let through.
            raise AuthError("token signature is invalid", code="invalid_signature") from e
        return claims

    def _principal(self, claims: Mapping[str, Any], config: IssuerConfig) -> Principal:
        mapping = config.claim_mapping()
        subject = mapping.subject(claims)
        groups = mapping.groups(claims)
        prefix = config.service_account_prefix
        service = config.service_subjects or bool(prefix and subject.startswith(prefix))
        kind: PrincipalKind = "service" if service else "human"
        token_id = claims.get("jti")
        return Principal(
            subject=subject,
            kind=kind,
            issuer=config.issuer,
            groups=groups,
            token_id=token_id if isinstance(token_id, str) and is_safe_text(token_id) else None,
        )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._session_factory()
        return self._session


def _default_session(tls: ssl.SSLContext | bool) -> aiohttp.ClientSession:
    # No cookie jar: a JWKS endpoint has no business setting state on the broker.
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(ssl=tls)
    )


def _load_pem(config: IssuerConfig, pem: str) -> VerificationKey:
    try:
        key = key_from_public_key(load_pem_public_key(pem.encode("utf-8")))
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"issuer {config.issuer}: unusable public key: {e}") from e
    if not key.algorithms & frozenset(config.algorithms):
        raise ValueError(
            f"issuer {config.issuer}: key {key.kid} cannot verify any of {config.algorithms}"
        )
    return key
