"""A small synchronous HTTP client for the broker API, used by the ``broker`` CLI.

Standard library only (``urllib``), one public method per endpoint, a timeout on every
call. The bearer token is sent in the ``Authorization`` header and nowhere else; nothing
here logs requests or responses (a response may carry a credential). Every answer is a
JSON object, returned as a ``dict``; list endpoints return the page as the broker sent it
(with ``next_cursor`` where the endpoint pages) unless the method says otherwise.

Errors (all ``ClientError``; none of them is ``broker.errors.BrokerError``, the server's
root error):
  ``BrokerHTTPError``   the broker answered with an error status (``{"error": {code,
                        message}}``) or with a body that is not a JSON object; with
                        ``retry_after`` (and ``retry_at``) when the answer said when to retry
  ``BrokerUnreachable`` no answer: connection refused, DNS failure, timeout, broken response

Retry-After: a 429 or 503 that carries ``Retry-After`` is a refusal made before the broker
acted (a quota or an engine's bulkhead: nothing minted, no elevation opened; the grant
service and ``broker/quotas/`` say so). Every call may therefore be repeated after it,
POSTs included: when the wait is at most ``MAX_RETRY_WAIT`` the client sleeps it and
retries once; otherwise, or when the retry is refused too, the error says when to retry.
No other answer is retried: a 503 without ``Retry-After`` (Vault or the ledger down) may
come after a credential was minted and revoked, or an elevation recorded.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_RETRY_WAIT",
    "BrokerClient",
    "BrokerHTTPError",
    "BrokerUnreachable",
    "ClientError",
]

_MAX_ERROR_TEXT = 200

# The longest Retry-After the client sits out itself before its one retry (seconds). A
# burst of issuances or a busy engine clears in a second or two; a longer wait is a quota
# that will not clear in a moment (live grants, elevation requests per hour, a slow rate),
# and a command that stays silent for longer looks hung: better to say when to come back.
MAX_RETRY_WAIT = 5

# Statuses whose Retry-After means "refused before acting" (quotas, bulkheads).
_RETRYABLE = frozenset({429, 503})
_SECONDS = re.compile(r"[0-9]{1,9}")


class ClientError(Exception):
    """Root of the errors ``BrokerClient`` raises."""


class BrokerHTTPError(ClientError):
    """The broker refused: ``status`` is the HTTP status, ``code``/``message`` its error body.

    ``retry_after``: whole seconds from the answer's ``Retry-After`` (None without one);
    ``retry_at``: when that is, counted from the answer's arrival; ``waited``: the seconds
    the client already sat out before this (second) refusal. ``str()`` is ``code:
    message``, then a dash and ``retry_hint`` when there is one."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        waited: int | None = None,
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.retry_at = (
            None if retry_after is None else datetime.now(UTC) + timedelta(seconds=retry_after)
        )
        self.waited = waited

    @property
    def retry_hint(self) -> str | None:
        """``retry in N s (at HH:MM:SS UTC)``, after what was waited already; None when
        the answer did not say when to retry."""
        if self.retry_after is None or self.retry_at is None:
            return None
        hint = f"retry in {self.retry_after} s (at {self.retry_at:%H:%M:%S} UTC)"
        if self.waited is not None:
            hint = f"refused again after waiting {self.waited} s; {hint}"
        return hint

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        hint = self.retry_hint
        return f"{text} — {hint}" if hint else text


class BrokerUnreachable(ClientError):
    """The broker could not be reached or gave no usable answer."""


def _error_from(status: int, raw: bytes, headers: Message) -> BrokerHTTPError:
    retry_after = _retry_after(headers.get("Retry-After"))
    try:
        body = json.loads(raw)
        err = body["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT]
        code, message = f"http_{status}", text or "no error body"
    return BrokerHTTPError(status, code, message, retry_after=retry_after)


def _retry_after(value: str | None) -> int | None:
    """Whole seconds from a ``Retry-After`` value: delta-seconds (what the broker sends) or
    an HTTP-date (what a proxy in front of it may send); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return int(value)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:  # RFC 9110 dates are GMT
        at = at.replace(tzinfo=UTC)
    return max(0, math.ceil((at - datetime.now(UTC)).total_seconds()))


class BrokerClient:
    """Talks to one broker at ``url`` as the holder of ``token``.

    ``token=None`` is an anonymous client: it can only call the public sign-in endpoints
    (``providers``, ``start_login`` .. ``poll_device``); ``with_token`` gives the signed-in
    one.

    ``timeout`` bounds each HTTP exchange; a call retried after a ``Retry-After`` can take
    two of them plus the wait (at most ``MAX_RETRY_WAIT``). ``on_wait(error)`` is called
    before the client sleeps ``error.retry_after`` seconds for that retry (the CLI says so
    on stderr)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        cafile: Path | None = None,
        on_wait: Callable[[BrokerHTTPError], None] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"broker URL must be http(s)://host[:port], got {url!r}")
        if token is not None and not token:
            raise ValueError("a bearer token is required")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        # https: always verified; cafile (a private or the dev CA) instead of the system's.
        self._cafile = cafile
        self._tls = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        self._on_wait = on_wait

    def with_token(self, token: str) -> BrokerClient:
        """The same broker, as the holder of ``token``."""
        return BrokerClient(
            self.url, token, timeout=self.timeout, cafile=self._cafile, on_wait=self._on_wait
        )

    def __repr__(self) -> str:  # never show the token
        return f"BrokerClient(url={self.url!r})"

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """The broker's answer to one call, retried once after a short ``Retry-After``
        (the module docstring says why that is safe for every method)."""
        try:
            return self._send(method, path, body=body, query=query)
        except BrokerHTTPError as e:
            wait = e.retry_after
            if e.status not in _RETRYABLE or wait is None or wait > MAX_RETRY_WAIT:
                raise
            if self._on_wait is not None:
                self._on_wait(e)
            time.sleep(wait)
        try:
            return self._send(method, path, body=body, query=query)
        except BrokerHTTPError as again:
            again.waited = wait
            raise

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None,
        query: Mapping[str, str | None] | None,
    ) -> dict[str, Any]:
        url = self.url + path
        given = {k: v for k, v in (query or {}).items() if v is not None}
        if given:
            url += "?" + urllib.parse.urlencode(given)
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - scheme checked in __init__
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:  # noqa: S310
                raw: bytes = resp.read()
                status: int = resp.status
        except urllib.error.HTTPError as e:
            with e:
                raise _error_from(e.code, e.read(), e.headers) from None
        except urllib.error.URLError as e:
            raise BrokerUnreachable(f"cannot reach broker at {self.url}: {e.reason}") from None
        except TimeoutError:
            raise BrokerUnreachable(
                f"broker at {self.url} did not answer within {self.timeout:g}s"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise BrokerUnreachable(f"broker at {self.url} failed: {e!r}") from None
        try:
            result = json.loads(raw)
        except ValueError:
            raise BrokerHTTPError(
                status, "bad_response", "the broker's answer is not JSON"
            ) from None
        if not isinstance(result, dict):
            raise BrokerHTTPError(
                status, "bad_response", "the broker's answer is not a JSON object"
            )
        return result

    # --- signing in (public, except renew and logout: the session token) -------------

    def sign_in_providers(self) -> list[dict[str, Any]]:
        """The identity providers people sign in with: name, display_name, issuer, flows."""
        return list(self._call("GET", "/v1/auth/providers").get("providers") or [])

    def start_login(self, provider: str, *, redirect_uri: str, client_nonce: str) -> dict[str, Any]:
        """A browser sign-in: ``auth_url``, ``state``, ``expires_in``."""
        body = {"provider": provider, "redirect_uri": redirect_uri, "client_nonce": client_nonce}
        return self._call("POST", "/v1/auth/login", body=body)

    def finish_login(self, *, state: str, code: str, client_nonce: str) -> dict[str, Any]:
        """The broker session: ``token``, ``subject``, ``groups``, ``provider``, expiries."""
        body = {"state": state, "code": code, "client_nonce": client_nonce}
        return self._call("POST", "/v1/auth/callback", body=body)

    def start_device(self, provider: str) -> dict[str, Any]:
        """A device sign-in: ``handle``, ``user_code``, ``verification_uri`` (``_complete``),
        ``interval``, ``expires_in``."""
        return self._call("POST", "/v1/auth/device", body={"provider": provider})

    def poll_device(self, handle: str) -> dict[str, Any]:
        """The session once approved; ``BrokerHTTPError`` 400 ``authorization_pending``,
        ``slow_down``, ``access_denied`` or ``expired_token`` before or instead."""
        return self._call("POST", "/v1/auth/device/token", body={"handle": handle})

    def renew_session(self) -> dict[str, Any]:
        """Renew this client's session (refreshed at the provider): the new expiries."""
        return self._call("POST", "/v1/auth/session/renew")

    def logout(self) -> dict[str, Any]:
        """End this client's session: ``revoked``, ``end_session_url`` (or null)."""
        return self._call("POST", "/v1/auth/logout")

    # --- identity and plain credentials ---------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/v1/me")

    def issue_credentials(
        self,
        secret: str,
        *,
        ttl: str | None = None,
        reason: str | None = None,
        ticket: str | None = None,
        public_key: str | None = None,
        principals: list[str] | None = None,
    ) -> dict[str, Any]:
        """A grant with its credential. For an ``ssh`` secret, ``public_key`` (one OpenSSH
        public key line) is signed for ``principals`` (None: all the role allows)."""
        body = _drop_none(
            {
                "secret": secret,
                "ttl": ttl,
                "reason": reason,
                "ticket": ticket,
                "public_key": public_key,
                "principals": principals,
            }
        )
        return self._call("POST", "/v1/credentials", body=body)

    def list_grants(self, *, active: bool = False) -> list[dict[str, Any]]:
        out = self._call("GET", "/v1/grants", query={"active": "true" if active else "false"})
        return list(out.get("grants") or [])

    def revoke_grant(self, grant_id: str, *, reason: str | None = None) -> dict[str, Any]:
        query = {"reason": reason} if reason else None
        return self._call("DELETE", f"/v1/grants/{_seg(grant_id)}", query=query)

    # --- elevations ---------------------------------------------------------------------

    def request_elevation(
        self,
        secret: str,
        *,
        reason: str | None,
        ticket: str | None = None,
        duration: str | None = None,
        break_glass: bool = False,
        principals: list[str] | None = None,
    ) -> dict[str, Any]:
        """A new elevation request; ``principals``: the SSH principals it is for."""
        body = _drop_none(
            {
                "secret": secret,
                "reason": reason,
                "ticket": ticket,
                "duration": duration,
                "principals": principals,
            }
        )
        if break_glass:
            body["break_glass"] = True
        return self._call("POST", "/v1/elevations", body=body)

    def list_elevations(
        self, *, status: str | None = None, unreviewed_break_glass: bool = False
    ) -> list[dict[str, Any]]:
        query: dict[str, str] = {}
        if status:
            query["status"] = status
        if unreviewed_break_glass:
            query["break_glass"] = "unreviewed"
        out = self._call("GET", "/v1/elevations", query=query)
        return list(out.get("elevations") or [])

    def get_elevation(self, elevation_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/elevations/{_seg(elevation_id)}")

    def _decide(self, elevation_id: str, action: str, comment: str | None) -> dict[str, Any]:
        body = {"comment": comment} if comment is not None else {}
        return self._call("POST", f"/v1/elevations/{_seg(elevation_id)}/{action}", body=body)

    def approve_elevation(self, elevation_id: str, comment: str | None = None) -> dict[str, Any]:
        return self._decide(elevation_id, "approve", comment)

    def deny_elevation(self, elevation_id: str, comment: str) -> dict[str, Any]:
        return self._decide(elevation_id, "deny", comment)

    def cancel_elevation(self, elevation_id: str, comment: str | None = None) -> dict[str, Any]:
        return self._decide(elevation_id, "cancel", comment)

    def review_elevation(self, elevation_id: str, comment: str) -> dict[str, Any]:
        return self._decide(elevation_id, "review", comment)

    def redeem_elevation(
        self,
        elevation_id: str,
        *,
        ttl: str | None = None,
        public_key: str | None = None,
        principals: list[str] | None = None,
    ) -> dict[str, Any]:
        """The grant of an approved elevation; for an ``ssh`` secret ``public_key`` is
        signed for ``principals`` (None: the elevation's)."""
        body = _drop_none({"ttl": ttl, "public_key": public_key, "principals": principals})
        return self._call("POST", f"/v1/elevations/{_seg(elevation_id)}/credentials", body=body)

    # --- audit (the audit capability; annotate-gap: admin) ------------------------------

    def audit_access(
        self,
        *,
        period_from: str,
        period_to: str,
        subject: str | None = None,
        secret: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of access windows in [from, to): ``access``, ``next_cursor``."""
        query = {
            "subject": subject,
            "secret": secret,
            "from": period_from,
            "to": period_to,
            "limit": _str(limit),
            "cursor": cursor,
        }
        return self._call("GET", "/v1/audit/access", query=query)

    def audit_events(
        self,
        *,
        subject: str | None = None,
        secret: str | None = None,
        types: str | None = None,
        period_from: str | None = None,
        period_to: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One page of ledger events, oldest first: ``events``, ``next_cursor``.

        ``types`` is a comma-separated list of event names."""
        query = {
            "subject": subject,
            "secret": secret,
            "type": types,
            "from": period_from,
            "to": period_to,
            "cursor": cursor,
            "limit": _str(limit),
        }
        return self._call("GET", "/v1/audit/events", query=query)

    def audit_gaps(self, *, period_from: str, period_to: str | None = None) -> dict[str, Any]:
        """Heartbeat gaps in the period (``to`` defaults to now on the broker): ``gaps``."""
        query = {"from": period_from, "to": period_to}
        return self._call("GET", "/v1/audit/gaps", query=query)

    def annotate_gap(self, *, period_from: str, period_to: str, remediation: str) -> dict[str, Any]:
        """Ledger a remediation note for the gap [from, to): ``annotation``."""
        body = {"from": period_from, "to": period_to, "remediation": remediation}
        return self._call("POST", "/v1/audit/gaps/annotate", body=body)

    # --- offboarding (admin; listing: admin or audit) -----------------------------------

    def offboard(
        self, subject: str, *, reason: str, terminated_at: str | None = None
    ) -> dict[str, Any]:
        """Offboard ``subject`` (or resume an unfinished offboarding): the report."""
        body = _drop_none({"subject": subject, "reason": reason, "terminated_at": terminated_at})
        return self._call("POST", "/v1/offboarding", body=body)

    def reinstate(self, subject: str, *, reason: str) -> dict[str, Any]:
        """Re-onboard an offboarded ``subject``."""
        path = f"/v1/offboarding/{_seg(subject)}/reinstate"
        return self._call("POST", path, body={"reason": reason})

    def list_offboardings(
        self, *, period_from: str | None = None, period_to: str | None = None
    ) -> list[dict[str, Any]]:
        """Offboardings started in the period."""
        query = {"from": period_from, "to": period_to}
        out = self._call("GET", "/v1/offboarding", query=query)
        return list(out.get("offboardings") or [])

    # --- access reviews -------------------------------------------------------------------

    def open_review(self, *, period: str, reviewer_group: str) -> dict[str, Any]:
        body = {"period": period, "reviewer_group": reviewer_group}
        return self._call("POST", "/v1/reviews", body=body)

    def list_reviews(
        self, *, period: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        out = self._call("GET", "/v1/reviews", query={"period": period, "limit": _str(limit)})
        return list(out.get("reviews") or [])

    def get_review(self, review_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/reviews/{_seg(review_id)}")

    def decide_review(
        self, review_id: str, *, entitlement_id: str, decision: str, comment: str | None = None
    ) -> dict[str, Any]:
        """Keep or revoke one entitlement of the review: the review after the decision."""
        body = _drop_none(
            {"entitlement_id": entitlement_id, "decision": decision, "comment": comment}
        )
        return self._call("POST", f"/v1/reviews/{_seg(review_id)}/decisions", body=body)

    def complete_review(self, review_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/reviews/{_seg(review_id)}/complete")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _str(value: int | None) -> str | None:
    return None if value is None else str(value)


def _seg(value: str) -> str:
    """One URL path segment: an ID can never change which endpoint is called."""
    return urllib.parse.quote(value, safe="")
