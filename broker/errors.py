"""One root error; subclasses by origin.

Every error that can reach a client is a ``BrokerError``: it carries an HTTP status, a
stable machine-readable ``code`` and a human ``message`` that never contains a secret.
The web middleware maps it to ``{"error": {"code", "message"}}``; anything else escaping
a handler is a bug and becomes a generic 500 without details.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BackendBusy",
    "BackendUnavailable",
    "BadRequest",
    "BrokerError",
    "Conflict",
    "Forbidden",
    "LedgerNotReplicated",
    "LedgerTampered",
    "LedgerUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "PolicyError",
    "TooManyRequests",
    "VaultError",
    "VaultUnavailable",
]


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""

    status: int = 500
    code: str = "internal"
    # Whole seconds after which a retry may succeed: sent as ``Retry-After``.
    retry_after: int | None = None

    def __init__(self, message: str, *, code: str | None = None, recorded: bool = False) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # True when the service already wrote the ledger row for this refusal (a denial),
        # so the middleware does not record it a second time as request.rejected.
        self.recorded = recorded

    def to_body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(BrokerError):
    """The request itself is malformed (400)."""

    status = 400
    code = "bad_request"


class PayloadTooLarge(BadRequest):
    """The body exceeds the configured limit (413)."""

    status = 413
    code = "body_too_large"


class AuthError(BrokerError):
    """The bearer token is missing or not acceptable (401). ``code`` names the reason."""

    status = 401
    code = "unauthenticated"


class Forbidden(BrokerError):
    """Authenticated, but policy does not allow it (403)."""

    status = 403
    code = "denied"


class NotFound(BrokerError):
    status = 404
    code = "not_found"


class Conflict(BrokerError):
    status = 409
    code = "conflict"


class PolicyError(BrokerError):
    """A policy file is invalid. ``errors`` holds ``file:line: message`` strings."""

    status = 400
    code = "invalid_policy"

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class BackendUnavailable(BrokerError):
    """A dependency is down or too slow; the broker fails closed (503)."""

    status = 503
    code = "unavailable"


class BackendBusy(BackendUnavailable):
    """A backend's concurrency cap and its wait queue are full (503 with ``Retry-After``):
    shed at once rather than queued without bound."""

    code = "backend_busy"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(BrokerError):
    """A quota refused the request (429 with ``Retry-After``): ``rate_limited`` or
    ``quota_exceeded``. Refusals are tallied, not ledgered one by one, hence ``recorded``."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, code: str, retry_after: int) -> None:
        super().__init__(message, code=code, recorded=True)
        self.retry_after = retry_after


class LedgerUnavailable(BackendUnavailable):
    code = "ledger_unavailable"


class LedgerTampered(BrokerError):
    """The ledger no longer matches what the broker signed: stop signing, raise the alarm."""

    status = 500
    code = "ledger_tampered"


class LedgerNotReplicated(BrokerError):
    """The ledger's PostgreSQL does not keep acknowledged rows on a synchronous standby,
    and ``ledger_synchronous_standby`` requires it: a start-up refusal saying what to
    change (``broker.ledger.replication``)."""

    status = 500
    code = "ledger_not_replicated"


class ProviderUnavailable(BackendUnavailable):
    """An identity provider cannot be reached (sign-in refused; existing sessions go on)."""

    code = "provider_unavailable"


class SignInRefused(BadRequest):
    """A sign-in step failed its checks (state, nonce, code, ID token); ``code`` says which."""

    code = "sign_in_refused"


class TLSConfigError(BrokerError):
    """A certificate, key or CA bundle (serving or outbound) cannot be used, or plaintext
    was asked for where it is not allowed: a start-up refusal naming the file and why."""

    status = 500
    code = "tls_config"


class VaultUnavailable(BackendUnavailable):
    code = "vault_unavailable"


class VaultError(BrokerError):
    """Vault answered, but refused or failed the request (502: our configuration is wrong)."""

    status = 502
    code = "vault_error"
