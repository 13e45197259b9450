"""The API's typed models: request bodies, query strings and response bodies.

Requests are decoded into these by ``web.fields`` before a handler runs (unknown fields
refused, limits from ``Settings``); the OpenAPI document is generated from them and the
route table. Response models describe what the services return (the contract tests check
real responses against them); they never forbid extra fields, so adding one is not a
breaking change.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from broker.durations import parse_duration
from broker.ledger import EVENT_TYPES
from broker.periods import MAX_QUERY_PERIOD, check_period, parse_instant
from broker.policy.model import (
    MAX_SSH_PRINCIPALS,
    MOUNT_PATH,
    validate_secret_name,
    validate_ssh_principals,
)
from broker.settings import Settings
from broker.ssh.keys import MAX_PUBLIC_KEY_CHARS
from broker.text import is_safe_text

from .fields import Rule

__all__ = [
    "MAX_SUBJECT_CHARS",
    "AccessPage",
    "AccessParams",
    "ActionItem",
    "Comment",
    "CredentialRequest",
    "Elevation",
    "ElevationList",
    "ElevationListQuery",
    "ElevationRequest",
    "Error",
    "EventPage",
    "EventParams",
    "EvidenceQuery",
    "GapAnnotation",
    "GapAnnotationRequest",
    "GapList",
    "GapQuery",
    "Grant",
    "GrantList",
    "GrantListQuery",
    "GrantSummary",
    "Health",
    "Liveness",
    "Me",
    "OffboardRequest",
    "OffboardingList",
    "OffboardingListQuery",
    "OffboardingReport",
    "Page",
    "ReinstateRequest",
    "Reinstated",
    "Review",
    "ReviewDecision",
    "ReviewList",
    "ReviewListQuery",
    "ReviewOpen",
    "ReviewSummary",
    "RevokeQuery",
    "TtlRequest",
    "Verification",
]

_TICKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$")
_DURATION_WIRE = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": "^([0-9]+|([0-9]+[smhd])+)$"},
    ],
    "description": "seconds, or a Vault-style duration (`90s`, `15m`, `1h`)",
}
_INSTANT_WIRE = {
    "type": "string",
    "description": "`YYYY-MM-DD` (midnight UTC) or an ISO 8601 date-time (no offset: UTC)",
    "examples": ["2026-02-01", "2026-02-01T09:00:00Z"],
}
MAX_SUBJECT_CHARS = 256
_MAX_CURSOR = 2**63 - 1
_MAX_REVIEW_FIELD = 512


def _instant(name: str, *, required: bool) -> Rule:
    """An instant bounding a period: one parser, one set of codes (``broker.periods``)."""
    return Rule(
        code=f"invalid_{name}",
        message=f"'{name}' must be a date (YYYY-MM-DD) or an ISO 8601 date-time",
        missing_code=f"missing_{name}",
        missing_message=f"'{name}' is required (YYYY-MM-DD or ISO 8601)" if required else None,
        parse=parse_instant,
        wire=_INSTANT_WIRE,
    )


def _aware_instant(value: str) -> datetime:
    """An ISO 8601 time with an offset (a moment someone states, not a period bound)."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("not a time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("no offset")
    return parsed


def _subject_text(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("blank")
    return text


# The bounds of a period (``broker.periods``): one parser, one set of codes.
From = Annotated[datetime, _instant("from", required=True)]
To = Annotated[datetime, _instant("to", required=True)]
OptionalFrom = Annotated[datetime, _instant("from", required=False)] | None
OptionalTo = Annotated[datetime, _instant("to", required=False)] | None


def _check_open_period(start: datetime | None, end: datetime | None) -> None:
    """Either bound may be absent; both given, ``to`` must be after ``from``."""
    if start is not None and end is not None:
        check_period(start, end, maximum=None)


# --- field types: each rule written once --------------------------------------------

SecretName = Annotated[
    str,
    Meta(max_length=128, examples=["db/orders-ro"], description="a catalog secret name"),
    Rule(
        code="invalid_secret_name",
        message="'secret' must be a catalog name like 'db/orders-ro' (lowercase,"
        " '/'-separated, at most 128 characters)",
        check=validate_secret_name,
    ),
]
Reason = Annotated[
    str,
    Meta(description="why (shown to approvers and auditors)"),
    Rule(text=True, limit="max_reason_chars"),
]
Ticket = Annotated[
    str,
    Meta(pattern=_TICKET.pattern, examples=["INC-1234"]),
    Rule(
        message="'ticket' must be a ticket reference like 'INC-1234' (letters, digits, ._:/#-)",
        check=lambda v: isinstance(v, str) and _TICKET.match(v) is not None,
    ),
]
Ttl = Annotated[int, Rule(parse=parse_duration, wire=_DURATION_WIRE)]
MountPath = Annotated[
    str,
    Meta(max_length=128, examples=["ssh"], description="the SSH engine's mount"),
    Rule(
        code="invalid_mount",
        message="'mount' must be a mount path like 'ssh'",
        check=lambda v: isinstance(v, str) and MOUNT_PATH.fullmatch(v) is not None,
    ),
]
PublicKeyText = Annotated[
    str,
    Meta(
        # Far under the body limit even when every character is a JSON escape pair.
        max_length=MAX_PUBLIC_KEY_CHARS,
        examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop"],
        description="SSH secrets: your OpenSSH public key line (never a private key)",
    ),
    # Never echo it: a private key pasted by mistake must not reach a log or a row.
    Rule(
        code="invalid_public_key",
        message=f"'public_key' must be one OpenSSH public key line of at most"
        f" {MAX_PUBLIC_KEY_CHARS} characters",
        check=lambda v: isinstance(v, str) and 0 < len(v) <= MAX_PUBLIC_KEY_CHARS,
    ),
]
SSHPrincipals = Annotated[
    tuple[str, ...],
    Meta(
        max_length=MAX_SSH_PRINCIPALS,
        examples=[["deploy"]],
        description="SSH secrets: the principals to sign for, a subset of what the role"
        " allows (default: all of them)",
    ),
    Rule(
        code="invalid_principals",
        message="'principals' must be 1-32 names like 'deploy' or 'root'",
        check=validate_ssh_principals,
    ),
]
PageLimit = Annotated[int, Rule(limit="max_page_size", message="'limit' must be 1..{limit}")]
Timestamp = Annotated[
    str, Meta(description="ISO 8601 date-time", extra_json_schema={"format": "date-time"})
]
Uuid = Annotated[str, Meta(extra_json_schema={"format": "uuid"})]


class _Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are refused so typos never pass silently."""


class _Query(Struct, kw_only=True):
    """Base of query strings: unknown parameters are ignored unless a model forbids them."""


class _Response(Struct, kw_only=True, omit_defaults=True):
    """Base of response bodies (documentation and contract checks)."""


# --- requests -----------------------------------------------------------------------


def _opaque(value: Any, shortest: int, longest: int) -> bool:
    return (
        isinstance(value, str)
        and shortest <= len(value) <= longest
        and value.isprintable()
        and " " not in value
    )


# Opaque protocol strings (a state, a code, a nonce, a handle): printable, no spaces, bounded.
SignInState = Annotated[
    str,
    Meta(max_length=512),
    Rule(message="'state' must be 1..512 printable characters", check=lambda v: _opaque(v, 1, 512)),
]
AuthorizationCode = Annotated[
    str,
    Meta(max_length=4096),
    Rule(
        message="'code' must be 1..4096 printable characters", check=lambda v: _opaque(v, 1, 4096)
    ),
]
ClientNonce = Annotated[
    str,
    Meta(min_length=16, max_length=128),
    Rule(
        message="'client_nonce' must be 16..128 printable characters",
        check=lambda v: _opaque(v, 16, 128),
    ),
]
DeviceHandle = Annotated[
    str,
    Meta(max_length=128),
    Rule(
        message="'handle' must be 1..128 printable characters", check=lambda v: _opaque(v, 1, 128)
    ),
]
RedirectUri = Annotated[
    str,
    Meta(max_length=2048, examples=["http://127.0.0.1:53123/callback"]),
    Rule(
        message="'redirect_uri' must be 1..2048 printable characters",
        check=lambda v: _opaque(v, 1, 2048),
    ),
]
ProviderName = Annotated[
    str,
    Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$", examples=["oidc"]),
    Rule(
        code="unknown_provider",
        message="'provider' must name a configured identity provider",
        check=lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", v) is not None,
    ),
]


class CredentialRequest(_Request):
    secret: SecretName
    reason: Reason | None = None
    ticket: Ticket | None = None
    ttl: Ttl | None = None
    public_key: PublicKeyText | None = None
    principals: SSHPrincipals | None = None


class ElevationRequest(_Request):
    secret: Annotated[SecretName, Meta(examples=["stripe/prod"])]
    reason: Reason | None = None
    ticket: Ticket | None = None
    duration: Ttl | None = None
    break_glass: bool = False
    principals: SSHPrincipals | None = None


class LoginRequest(_Request):
    provider: ProviderName
    redirect_uri: RedirectUri
    client_nonce: ClientNonce


class CallbackRequest(_Request):
    state: SignInState
    code: AuthorizationCode
    client_nonce: ClientNonce


class DeviceRequest(_Request):
    provider: ProviderName


class DeviceTokenRequest(_Request):
    handle: DeviceHandle


class Comment(_Request):
    comment: Annotated[str, Rule(text=True, limit="max_reason_chars")] | None = None


class NoBody(_Request):
    """A POST that takes no fields: an empty body or ``{}``; anything else is refused."""


class TtlRequest(_Request):
    ttl: Ttl | None = None
    public_key: PublicKeyText | None = None
    principals: SSHPrincipals | None = None


class OffboardRequest(_Request):
    subject: Annotated[
        str,
        Meta(max_length=MAX_SUBJECT_CHARS),
        Rule(
            code="invalid_subject",
            message=f"'subject' must be at most {MAX_SUBJECT_CHARS} printable characters",
            missing_code="invalid_subject",
            text=True,
            limit=MAX_SUBJECT_CHARS,
        ),
    ]
    reason: Annotated[
        str,
        Rule(
            text=True,
            limit="max_reason_chars",
            missing_code="reason_required",
            missing_message="a reason is required",
        ),
    ]
    terminated_at: (
        Annotated[
            datetime,
            Rule(
                message="'terminated_at' must be an ISO 8601 time with offset,"
                " e.g. 2026-02-01T09:00:00Z",
                parse=_aware_instant,
                wire={
                    "type": "string",
                    "format": "date-time",
                    "description": "default now; not in the future",
                },
            ),
        ]
        | None
    ) = None


class ReinstateRequest(_Request):
    reason: Annotated[
        str,
        Rule(
            text=True,
            limit="max_reason_chars",
            missing_code="reason_required",
            missing_message="a reason is required",
        ),
    ]


class ReviewOpen(_Request):
    period: Annotated[str, Meta(examples=["2026-Q1"]), Rule(text=True, limit=_MAX_REVIEW_FIELD)]
    reviewer_group: Annotated[
        str, Meta(examples=["sre-leads"]), Rule(text=True, limit=_MAX_REVIEW_FIELD)
    ]


class ReviewDecision(_Request):
    entitlement_id: Annotated[
        str,
        Meta(examples=["engineering/group:engineering"]),
        Rule(text=True, limit=_MAX_REVIEW_FIELD),
    ]
    decision: Annotated[
        str, Meta(examples=["keep", "revoke"]), Rule(text=True, limit=_MAX_REVIEW_FIELD)
    ]
    comment: (
        Annotated[
            str, Meta(description="required for revoke"), Rule(text=True, limit="max_reason_chars")
        ]
        | None
    ) = None


class GapAnnotationRequest(_Request):
    from_: From = msgspec.field(name="from")
    to: To
    remediation: Annotated[
        str,
        Rule(
            text=True,
            limit="max_reason_chars",
            missing_code="invalid_remediation",
            missing_message="'remediation' must not be empty",
        ),
    ]

    def check(self, settings: Settings) -> None:
        check_period(self.from_, self.to, maximum=MAX_QUERY_PERIOD)


# --- query strings ------------------------------------------------------------------


class Page(_Query):
    limit: PageLimit = 100


class GrantListQuery(Page, kw_only=True):
    active: Annotated[
        Literal["true", "false"],
        Rule(message="'active' must be true or false"),
    ] = "false"


class SSHMountQuery(_Query):
    mount: MountPath | None = None


class RevokeQuery(_Query):
    reason: Reason | None = None


class ElevationListQuery(Page, kw_only=True):
    status: Annotated[str, Meta(examples=["pending"])] | None = None
    break_glass: (
        Annotated[Literal["unreviewed"], Rule(message="'break_glass' may only be 'unreviewed'")]
        | None
    ) = None


class ReviewListQuery(Page, kw_only=True):
    period: (
        Annotated[
            str,
            Meta(pattern=r"^[0-9]{4}-Q[1-4]$", examples=["2026-Q1"]),
            Rule(code="invalid_period", message="'period' must look like 2026-Q1"),
        ]
        | None
    ) = None


class OffboardingListQuery(Page, kw_only=True):
    from_: OptionalFrom = msgspec.field(default=None, name="from")
    to: OptionalTo = None

    def check(self, settings: Settings) -> None:
        _check_open_period(self.from_, self.to)


_AuditSubject = Annotated[
    str,
    Meta(max_length=MAX_SUBJECT_CHARS),
    Rule(
        message=f"'subject' must be 1..{MAX_SUBJECT_CHARS} characters without control characters",
        check=lambda v: bool(v) and len(v) <= MAX_SUBJECT_CHARS and is_safe_text(v),
    ),
]
_AuditSecret = Annotated[
    str,
    Rule(message="'secret' must be a catalog name like 'stripe/prod'", check=validate_secret_name),
]
_Cursor = Annotated[
    int,
    Meta(description="the `next_cursor` of the previous page"),
    Rule(
        limit=_MAX_CURSOR,
        message="'cursor' must be a next_cursor from a previous page",
        wire={"type": "string", "description": "the `next_cursor` of the previous page"},
    ),
]


class _AuditQuery(Page, forbid_unknown_fields=True, kw_only=True):
    """Strict: a typo such as ``form=`` must not silently widen an auditor's answer."""

    subject: _AuditSubject | None = None
    secret: _AuditSecret | None = None
    cursor: _Cursor | None = None


class AccessParams(_AuditQuery, kw_only=True):
    from_: From = msgspec.field(name="from")
    to: To

    def check(self, settings: Settings) -> None:
        check_period(self.from_, self.to, maximum=MAX_QUERY_PERIOD)


def _event_types(value: str) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(t.strip() for t in value.split(",")))
    if not types or any(t not in EVENT_TYPES for t in types):
        raise ValueError("unknown event type")
    return types


class EventParams(_AuditQuery, kw_only=True):
    type: Annotated[
        tuple[str, ...],
        Rule(
            message="'type' must be ledger event names, comma-separated"
            " (e.g. grant.issued,grant.revoked)",
            parse=_event_types,
            wire={"type": "string", "examples": ["grant.issued,grant.revoked"]},
        ),
    ] = ()
    from_: OptionalFrom = msgspec.field(default=None, name="from")
    to: OptionalTo = None

    def check(self, settings: Settings) -> None:
        _check_open_period(self.from_, self.to)


class GapQuery(Page, kw_only=True):
    from_: From = msgspec.field(name="from")
    to: (
        Annotated[
            datetime, _instant("to", required=False), Meta(description="default and latest: now")
        ]
        | None
    ) = None


_TreeSize = Annotated[
    int, Meta(ge=1, le=2**62, description="a ledger size (rows): 1 .. 2^62 (a PostgreSQL bigint)")
]


class InclusionQuery(_Query, forbid_unknown_fields=True):
    seq: _TreeSize
    size: _TreeSize | None = None


class ConsistencyQuery(_Query, forbid_unknown_fields=True):
    old: _TreeSize
    new: _TreeSize | None = None


class EvidenceQuery(_Query):
    from_: From = msgspec.field(name="from")
    to: To

    def check(self, settings: Settings) -> None:
        check_period(self.from_, self.to, maximum=None)


# --- responses ----------------------------------------------------------------------


class ErrorDetail(_Response):
    code: str
    message: str


class Error(_Response):
    """Every error: ``{"error": {"code", "message"}}``; ``code`` is stable, for programs."""

    error: ErrorDetail


class Grant(_Response):
    """An issued credential; shown once, never stored by the broker."""

    id: Uuid
    secret: str
    subject: str
    role: str
    policy_version: str
    issued_at: Timestamp
    expires_at: Timestamp
    credential: Annotated[
        dict[str, Any],
        Meta(
            description="kv2: {data, version}; database: {username, password};"
            " pki: {certificate, private_key, issuing_ca, ca_chain, serial_number};"
            " ssh: {signed_key, serial_number, key_id, principals, valid_after,"
            " valid_before}"
        ),
    ]
    lease_id: str | UnsetType | None = UNSET
    warnings: Annotated[
        list[str] | UnsetType,
        Meta(description="what the caller should know, e.g. a TTL clipped to the role's max_ttl"),
    ] = UNSET


GrantStatus = Literal["active", "revoked", "expired"]


class GrantSummary(_Response):
    id: Uuid
    secret: str | None
    subject: str | None
    status: GrantStatus
    issued_at: Timestamp
    role: str | UnsetType | None = UNSET
    policy_version: str | UnsetType | None = UNSET
    expires_at: Timestamp | UnsetType | None = UNSET
    lease_id: str | UnsetType | None = UNSET
    engine: str | UnsetType | None = UNSET
    ended_at: Timestamp | UnsetType | None = UNSET
    ended_by: str | UnsetType | None = UNSET


class GrantList(_Response):
    grants: list[GrantSummary]


ElevationStatus = Literal["pending", "approved", "denied", "cancelled", "expired", "ended"]


class ApprovalFactor(_Response):
    approver_groups: list[str] | UnsetType = UNSET
    approvals: int | UnsetType = UNSET


class Elevation(_Response):
    id: Uuid
    status: ElevationStatus
    secret: str
    role: str
    requester: str
    reason: str
    duration: Annotated[int, Meta(description="window length, seconds")]
    break_glass: bool
    requested_at: Timestamp
    expires_at: Annotated[Timestamp, Meta(description="when an undecided request expires")]
    approvals_required: Annotated[
        list[ApprovalFactor],
        Meta(description="factors, all required; one approver counts once"),
    ]
    approvals: list[dict[str, Any]]
    grants: list[Uuid]
    can_decide: bool
    ticket: str | UnsetType | None = UNSET
    principals: Annotated[
        list[str] | UnsetType,
        Meta(description="SSH secrets: the principals asked for, what approvers approve"),
    ] = UNSET
    policy_version: str | UnsetType | None = UNSET
    approved_at: Timestamp | UnsetType | None = UNSET
    window_ends_at: Timestamp | UnsetType | None = UNSET
    closed: dict[str, Any] | UnsetType | None = UNSET
    review: dict[str, Any] | UnsetType | None = UNSET


class ElevationList(_Response):
    elevations: list[Elevation]


class SignInProvider(_Response):
    name: str
    display_name: str
    issuer: str
    flows: list[Literal["browser", "device"]]


class SignInProviders(_Response):
    providers: list[SignInProvider]


class LoginStarted(_Response):
    auth_url: str
    state: str
    expires_in: int


class DeviceStarted(_Response):
    handle: str
    user_code: str
    verification_uri: str
    interval: int
    expires_in: int
    verification_uri_complete: str | None = None


class SessionInfo(_Response):
    subject: str
    groups: list[str]
    expires_at: Timestamp
    max_expires_at: Timestamp
    provider: str | None = None


class SignedIn(_Response):
    token: str
    subject: str
    groups: list[str]
    expires_at: Timestamp
    max_expires_at: Timestamp
    provider: str | None = None


class LoggedOut(_Response):
    revoked: bool
    end_session_url: str | None = None


class RateLimit(_Response):
    scope: Annotated[str, Meta(description="`default`, `role:<name>` or `secret:<name>`")]
    rate: Annotated[str, Meta(description="refill, e.g. `10/s`")]
    burst: int
    available: Annotated[int, Meta(description="tokens left now, on this replica")]
    per: Literal["replica"]


class LiveGrantLimit(_Response):
    secret: str
    limit: int
    live: Annotated[int, Meta(description="your issued grants of it not yet ended")]


class ElevationRequestLimit(_Response):
    per_hour: int
    used: Annotated[int, Meta(description="requests you made in the last hour")]


class Limits(_Response):
    issuance_rate: list[RateLimit]
    live_grants: list[LiveGrantLimit]
    elevation_requests: ElevationRequestLimit


class Me(_Response):
    subject: str
    kind: str
    issuer: str
    groups: list[str]
    roles: list[str]
    capabilities: list[str]
    requestable: list[dict[str, Any]]
    policy_version: str
    limits: Annotated[Limits, Meta(description="your quotas and their current use")]
    session: SessionInfo | None = None


class Health(_Response):
    status: Literal["ok", "unavailable"]
    checks: dict[str, Literal["ok", "unavailable"]]
    replica: str
    policy_version: str


class Liveness(_Response):
    status: Literal["alive"]
    replica: str


class InclusionProof(_Response):
    """RFC 6962 audit path of ``leaf_hash`` (leaf ``seq - 1``) to ``root`` (base64), and
    the signed checkpoint note whose root it is."""

    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    proof: list[str]
    root: str
    checkpoint: str
    event: dict[str, Any]


class ConsistencyProof(_Response):
    """RFC 6962 consistency proof from the tree of ``old_size`` to ``new_size``."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    proof: list[str]
    old_checkpoint: str | None
    new_checkpoint: str


class Verification(_Response):
    """``ok`` is false when tampering is detected; ``first_bad_seq`` names the first bad row.

    ``mode`` is ``full`` or ``incremental``; ``verified_from`` the size the scan started
    after (0, the archived rows, or the verified head); ``rows`` how many it checked."""

    ok: bool
    mode: str
    verified_from: int
    rows: int
    head_seq: int
    root: str | None
    first_bad_seq: int | None
    problems: list[Any]


class OffboardingReport(_Response):
    offboarding_id: str
    subject: str
    completed_at: Timestamp
    grants_revoked: Any
    elevations_closed: Any
    sessions_revoked: Annotated[
        list[str], Meta(description="accessors of the Vault front-door sessions it ended")
    ]
    terminated_at: Timestamp
    sla_deadline: Timestamp
    sla_met: bool
    seconds_from_termination: float


class OffboardingList(_Response):
    offboardings: list[dict[str, Any]]


class Reinstated(_Response):
    subject: str | UnsetType = UNSET


class GapAnnotation(_Response):
    annotation: dict[str, Any]


class Gap(_Response):
    start: Timestamp
    end: Timestamp
    duration_seconds: float
    annotated: bool
    annotation: dict[str, Any] | None
    annotations: list[dict[str, Any]]


class GapList(_Response):
    from_: Timestamp = msgspec.field(name="from")
    to: Timestamp
    heartbeat_seconds: float
    threshold_seconds: float
    gaps: list[Gap]


class RuleText(_Response):
    source: str | UnsetType | None = UNSET
    text: str | UnsetType | None = UNSET


class AccessEnd(_Response):
    how: Literal["revoked", "expired", "offboarded"] | UnsetType = UNSET
    at: str | UnsetType = UNSET
    by: str | UnsetType | None = UNSET


class AccessWindow(_Response):
    grant_id: Uuid
    subject: str
    secret: str
    role: str | None
    policy_version: str | None
    rule: RuleText
    issued_at: Timestamp
    expires_at: Timestamp | None
    ended: AccessEnd | None
    elevation: dict[str, Any] | None


class AccessPage(_Response):
    """Access windows overlapping the period; ``ended`` is null while still open."""

    from_: Timestamp = msgspec.field(name="from")
    to: Timestamp
    access: list[AccessWindow]
    next_cursor: str | None


class EventPage(_Response):
    events: list[dict[str, Any]]
    next_cursor: str | None


ReviewPeriod = Annotated[str, Meta(pattern=r"^[0-9]{4}-Q[1-4]$", examples=["2026-Q1"])]


class ReviewProgress(_Response):
    entitlements: int
    decided: int
    keep: int
    revoke: int


class ActionItem(_Response):
    entitlement_id: str
    role: str
    source: str
    status: Literal["open", "resolved"]
    resolved_by_version: str | None
    decided_by: str | UnsetType = UNSET
    decided_at: Timestamp | UnsetType = UNSET
    comment: str | UnsetType | None = UNSET
    resolved_at: Timestamp | UnsetType | None = UNSET


class ReviewSummary(_Response):
    id: Uuid
    period: ReviewPeriod
    period_start: Timestamp
    period_end: Annotated[Timestamp, Meta(description="exclusive")]
    status: Literal["open", "completed"]
    reviewer_group: str
    opened_by: str
    opened_at: Timestamp
    policy_version: Annotated[str, Meta(description="the version the snapshot is of")]
    progress: ReviewProgress
    entitlements_total: int
    entitlements_truncated: bool
    usage_truncated: bool
    completed_by: str | None
    completed_at: Timestamp | None
    action_items: list[ActionItem]
    open_action_items: int
    can_decide: bool


class Entitlement(_Response):
    id: Annotated[str, Meta(description="`<role>/<source>`")]
    role: str
    source: Annotated[
        str, Meta(description="`group:<g>`, `subject:<s>` or `service_account:<ns:name>`")
    ]
    kind: Literal["group", "subject", "service_account"]
    member: str
    decision: dict[str, Any] | None
    privileged: bool | UnsetType = UNSET
    secrets: list[str] | UnsetType = UNSET
    capabilities: list[str] | UnsetType = UNSET
    role_source: str | UnsetType = UNSET


class Usage(_Response):
    subject: str
    secret: str
    role: str
    grants: int
    last_used: Timestamp
    subject_kind: str | UnsetType | None = UNSET


class Review(ReviewSummary):
    entitlements: Annotated[
        list[Entitlement], Meta(description="At most 10000 (then `entitlements_truncated`)")
    ]
    usage: Annotated[
        list[Usage],
        Meta(
            description="Distinct subject x secret x role issued in the period;"
            " at most 10000 (then `usage_truncated`)"
        ),
    ]


class ReviewList(_Response):
    reviews: list[ReviewSummary]
