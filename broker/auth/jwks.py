"""JSON Web Keys: parsing, RFC 7638 thumbprints, and the JWKS fetcher with its cache.

Invariants:

- Only asymmetric *public* signature keys come out of here. ``oct`` (symmetric) keys, keys
  carrying private members, keys whose ``use``/``key_ops`` exclude verification, RSA keys
  shorter than ``MIN_RSA_KEY_BITS`` and unknown curves are dropped when a JWKS is parsed.
- Every key is bound to the algorithms its type allows (narrowed further by the JWK's own
  ``alg``), so a token cannot pick another algorithm family for the same key material.
- A token's ``kid`` is only ever a dictionary lookup: it never reaches a URL, a path or a log
  line. The JWKS URL is fixed by configuration.
- Network use is bounded per issuer: one fetch in flight at a time (callers share it), at
  most one fetch per ``min_refresh_seconds`` whatever the traffic, a total timeout, and a
  response size cap. A failed fetch keeps the last good keys in service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from broker.errors import AuthError
from broker.tls.outbound import describe_tls_failure

__all__ = [
    "MAX_KID_CHARS",
    "MIN_RSA_KEY_BITS",
    "SUPPORTED_ALGORITHMS",
    "JwksCache",
    "PublicKey",
    "VerificationKey",
    "b64url_decode",
    "is_acceptable_kid",
    "jwk_thumbprint",
    "key_from_jwk",
    "key_from_public_key",
    "parse_jwks",
    "public_key_to_jwk",
]

_log = logging.getLogger(__name__)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

MIN_RSA_KEY_BITS = 2048
"""RSA keys below this size are refused (NIST SP 800-131A)."""

MAX_KID_CHARS = 128
"""Longest ``kid`` accepted from a token or a JWKS; real IdPs use 20-64 characters."""

# Deliberately excludes "/", whitespace and control characters: a kid that looks like a path
# or carries log-injection payloads is refused before any lookup, let alone a fetch.
_KID_RE = re.compile(r"[A-Za-z0-9._~+=:-]+")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Mapping[str, tuple[str, type[ec.EllipticCurve], int]] = {
    # JWK crv -> (JWS alg, curve class, coordinate bytes)
    "P-256": ("ES256", ec.SECP256R1, 32),
    "P-384": ("ES384", ec.SECP384R1, 48),
    "P-521": ("ES512", ec.SECP521R1, 66),
    "secp256k1": ("ES256K", ec.SECP256K1, 32),
}
_EC_CRV_BY_CURVE_NAME = {curve().name: crv for crv, (_, curve, _) in _EC_ALGORITHMS.items()}
_OKP_KEY_BYTES = {"Ed25519": 32, "Ed448": 57}

SUPPORTED_ALGORITHMS: frozenset[str] = (
    _RSA_ALGORITHMS | {alg for alg, _, _ in _EC_ALGORITHMS.values()} | {"EdDSA"}
)
"""Every asymmetric JWS algorithm an issuer may allow-list."""

# RFC 7638 section 3.2: the members that make up each key type's thumbprint.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A parsed public key, ready for PyJWT, with the algorithms it may verify."""

    kid: str
    key: PublicKey
    algorithms: frozenset[str]


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 section 2); raise ``ValueError`` on anything else."""
    if not _B64URL_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as e:
        raise ValueError("not unpadded base64url") from e


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_to_b64url(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url_encode(value.to_bytes(size, "big"))


def is_acceptable_kid(kid: str) -> bool:
    """True if ``kid`` is short and made of the conservative ``[A-Za-z0-9._~+=:-]`` set."""
    return len(kid) <= MAX_KID_CHARS and _KID_RE.fullmatch(kid) is not None


def public_key_to_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7517 public JWK of ``key``: only the thumbprint members (no kid/use/alg).

    Raises ``ValueError`` for a curve this module does not support.
    """
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"kty": "RSA", "n": _int_to_b64url(numbers.n), "e": _int_to_b64url(numbers.e)}
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _EC_CRV_BY_CURVE_NAME.get(key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported EC curve {key.curve.name}")
        size = _EC_ALGORITHMS[crv][2]
        point = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _int_to_b64url(point.x, size),
            "y": _int_to_b64url(point.y, size),
        }
    raw = key.public_bytes_raw()
    crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
    return {"kty": "OKP", "crv": crv, "x": _b64url_encode(raw)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding.

    Raises ``ValueError`` if the key type is unsupported or a required member is missing.
    """
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError("unsupported kty")
    try:
        canonical = {name: str(jwk[name]) for name in members}
    except KeyError as e:
        raise ValueError(f"JWK lacks member {e.args[0]!r}") from e
    encoded = json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return _b64url_encode(hashlib.sha256(encoded).digest())


def _algorithms_for(key: PublicKey) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits is below {MIN_RSA_KEY_BITS}")
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _EC_CRV_BY_CURVE_NAME.get(key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported EC curve {key.curve.name}")
        return frozenset({_EC_ALGORITHMS[crv][0]})
    return frozenset({"EdDSA"})


def key_from_public_key(key: object, kid: str | None = None) -> VerificationKey:
    """Wrap a cryptography public key; ``kid`` defaults to its RFC 7638 thumbprint.

    Raises ``ValueError`` for unsupported key types, curves or too-short RSA keys.
    """
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise ValueError(f"unsupported public key type {type(key).__name__}")
    algorithms = _algorithms_for(key)
    return VerificationKey(
        kid=kid if kid is not None else jwk_thumbprint(public_key_to_jwk(key)),
        key=key,
        algorithms=algorithms,
    )


def _member_bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK member {name!r} missing or not a string")
    return b64url_decode(value)


def key_from_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """Parse one JWK into a ``VerificationKey``.

    The kid is the JWK's ``kid``, or its RFC 7638 thumbprint when absent. Raises
    ``ValueError`` (with a reason safe to log) for anything that is not a usable public
    signature key; see the module invariants.
    """
    if _PRIVATE_MEMBERS.intersection(jwk):
        raise ValueError("JWK carries private or symmetric key material")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError("JWK use is not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("JWK key_ops does not include 'verify'")
    kty = jwk.get("kty")
    key: PublicKey
    if kty == "RSA":
        n = int.from_bytes(_member_bytes(jwk, "n"), "big")
        e = int.from_bytes(_member_bytes(jwk, "e"), "big")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    elif kty == "EC":
        spec = _EC_ALGORITHMS.get(str(jwk.get("crv")))
        if spec is None:
            raise ValueError("unsupported EC curve")
        _, curve, size = spec
        x, y = _member_bytes(jwk, "x"), _member_bytes(jwk, "y")
        if len(x) != size or len(y) != size:
            raise ValueError("EC coordinates have the wrong length")
        # cryptography checks that the point lies on the curve (invalid-curve attacks).
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
        ).public_key()
    elif kty == "OKP":
        crv = jwk.get("crv")
        x = _member_bytes(jwk, "x")
        if crv not in _OKP_KEY_BYTES or len(x) != _OKP_KEY_BYTES[str(crv)]:
            raise ValueError("unsupported OKP curve or wrong key length")
        key = (
            ed25519.Ed25519PublicKey.from_public_bytes(x)
            if crv == "Ed25519"
            else ed448.Ed448PublicKey.from_public_bytes(x)
        )
    else:
        raise ValueError("unsupported or symmetric kty")
    algorithms = _algorithms_for(key)
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in algorithms:
            raise ValueError("JWK alg does not match its key type")
        algorithms = frozenset({str(alg)})
    kid = jwk.get("kid")
    if kid is None:
        kid = jwk_thumbprint(jwk)
    elif not isinstance(kid, str) or not is_acceptable_kid(kid):
        raise ValueError("JWK kid is not an acceptable key id")
    return VerificationKey(kid=kid, key=key, algorithms=algorithms)


def parse_jwks(document: object, *, source: str) -> dict[str, VerificationKey]:
    """Usable keys of a JWK Set (RFC 7517 section 5), by kid.

    Unusable entries are skipped and logged (with ``source``, never key material); the
    first of duplicate kids wins. Raises ``ValueError`` if the document is not an object with
    a ``keys`` list or yields no usable key at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS is not an object with a 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            _log.warning("JWKS %s: entry %d is not an object; skipped", source, index)
            continue
        try:
            parsed = key_from_jwk(jwk)
        except ValueError as e:
            _log.warning("JWKS %s: entry %d skipped: %s", source, index, e)
            continue
        if parsed.kid in keys:
            _log.warning("JWKS %s: entry %d repeats an earlier kid; skipped", source, index)
            continue
        keys[parsed.kid] = parsed
    if not keys:
        raise ValueError("JWKS holds no usable signature key")
    return keys


class JwksCache:
    """The keys of one issuer, fetched from its JWKS URL and kept for ``cache_seconds``.

    ``get(kid)`` returns a cached key without I/O when it can. On a miss it triggers (or
    joins) a refresh, but fetches start at most once per ``min_refresh_seconds``, so a flood
    of unknown kids costs at most one fetch per window. A hit on a stale cache starts a
    background refresh and answers from the cache. Fetch failures leave the cached keys in
    service.
    """

    def __init__(
        self,
        *,
        issuer: str,
        url: str,
        session: Callable[[], aiohttp.ClientSession],
        cache_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._url = url
        self._session = session
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def get(self, kid: str | None) -> VerificationKey:
        """The key for ``kid`` (``None``: the issuer's only key).

        Raises ``AuthError`` ``unknown_key`` if no such key exists after the refresh allowed
        now, or ``jwks_unavailable`` if it is missing and the latest fetch failed.
        """
        key = self._lookup(kid)
        if key is not None:
            if self._is_stale() and self._may_refresh():
                self._start_refresh()
            return key
        if self._inflight is not None or self._may_refresh():
            # shield: one caller giving up must not cancel the fetch others are awaiting.
            await asyncio.shield(self._start_refresh())
            key = self._lookup(kid)
            if key is not None:
                return key
        if self._last_error is not None:
            raise AuthError(
                f"signing keys of issuer {self._issuer} are unavailable", code="jwks_unavailable"
            )
        if kid is None:
            raise AuthError(
                "token has no key id and its issuer has more than one key", code="unknown_key"
            )
        raise AuthError("token is signed with an unknown key", code="unknown_key")

    async def close(self) -> None:
        """Cancel a refresh in flight; the cache stays usable for lookups."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _lookup(self, kid: str | None) -> VerificationKey | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _is_stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._cache_seconds

    def _may_refresh(self) -> bool:
        return (
            self._last_attempt is None
            or self._clock() - self._last_attempt >= self._min_refresh_seconds
        )

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._last_attempt = self._clock()
            self._inflight = asyncio.create_task(self._refresh())
        return self._inflight

    async def _refresh(self) -> None:
        try:
            keys = await self._fetch()
        except AuthError as e:
            self._last_error = e.message
            _log.warning("JWKS refresh for issuer %s failed: %s", self._issuer, e.message)
        else:
            self._keys = keys
            self._fetched_at = self._clock()
            self._last_error = None
        finally:
            self._inflight = None

    async def _fetch(self) -> dict[str, VerificationKey]:
        def unavailable(reason: str) -> AuthError:
            return AuthError(f"JWKS of issuer {self._issuer}: {reason}", code="jwks_unavailable")

        try:
            # No redirects: the configured URL is the trust anchor for this issuer's keys.
            async with self._session().get(
                self._url,
                timeout=self._timeout,
                allow_redirects=False,
                headers={"Accept": "application/jwk-set+json, application/json"},
            ) as response:
                if response.status != 200:
                    raise unavailable(f"HTTP status {response.status}")
                if response.content_length is not None and (
                    response.content_length > self._max_bytes
                ):
                    raise unavailable(f"response larger than {self._max_bytes} bytes")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise unavailable(f"response larger than {self._max_bytes} bytes")
        except (aiohttp.ClientError, TimeoutError) as e:
            tls_reason = describe_tls_failure(e)
            if tls_reason is not None:
                raise unavailable(f"{self._url}: {tls_reason}") from e
            raise unavailable(f"fetch failed ({type(e).__name__})") from e
        try:
            return parse_jwks(json.loads(bytes(body)), source=self._url)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeError included
            raise unavailable(str(e)) from e
