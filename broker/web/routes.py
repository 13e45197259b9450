"""The route table: the whole native HTTP surface, one declaration per route.

Each ``Route`` says who may call it (``web.access``), what it accepts and answers
(``web.models``); the middleware enforces it, the OpenAPI document is generated from it,
and an app with a route missing from it refuses to start (``web.route.install``).
"""

from __future__ import annotations

from .access import authenticated, capability, public, resource
from .handlers import (
    audit,
    continuity,
    elevations,
    evidence,
    grants,
    offboarding,
    reviews,
    signin,
    ssh,
    system,
)
from .models import (
    AccessPage,
    AccessParams,
    CallbackRequest,
    Comment,
    ConsistencyProof,
    ConsistencyQuery,
    CredentialRequest,
    DeviceRequest,
    DeviceStarted,
    DeviceTokenRequest,
    Elevation,
    ElevationList,
    ElevationListQuery,
    ElevationRequest,
    EventPage,
    EventParams,
    EvidenceQuery,
    GapAnnotation,
    GapAnnotationRequest,
    GapList,
    GapQuery,
    Grant,
    GrantList,
    GrantListQuery,
    GrantSummary,
    Health,
    InclusionProof,
    InclusionQuery,
    Liveness,
    LoggedOut,
    LoginRequest,
    LoginStarted,
    Me,
    NoBody,
    OffboardingList,
    OffboardingListQuery,
    OffboardingReport,
    OffboardRequest,
    Reinstated,
    ReinstateRequest,
    Review,
    ReviewDecision,
    ReviewList,
    ReviewListQuery,
    ReviewOpen,
    RevokeQuery,
    SessionInfo,
    SignedIn,
    SignInProviders,
    SSHMountQuery,
    TtlRequest,
    Verification,
)
from .route import Route

__all__ = ["ROUTES"]

_ELEVATION_DECISION = resource(
    "the service decides: approvers of the elevation, its requester"
    " or (for break-glass reviews) a second person"
)
_REVIEWER = resource("members of the review's reviewer group now (admin and audit may read)")


def _decision(verb: str, operation: str, summary: str, forbidden: str, conflict: str) -> Route:
    return Route(
        "POST",
        f"/v1/elevations/{{elevation_id}}/{verb}",
        getattr(elevations, f"{verb}_elevation"),
        _ELEVATION_DECISION,
        operation,
        summary,
        body=Comment,
        body_required=False,
        responses={200: Elevation},
        response_descriptions={200: "The elevation after the decision"},
        errors={
            403: forbidden,
            404: "`elevation_not_found` (or not visible to you)",
            409: conflict,
        },
    )


_SIGN_IN_REFUSED = (
    "`sign_in_refused` and its reason: `invalid_state`, `client_nonce_mismatch`,"
    " `code_rejected`, `nonce_mismatch`, `azp_mismatch`, `wrong_audience`, `token_expired`,"
    " `untrusted_issuer`, `algorithm_not_allowed`, `provider_disabled`, `unknown_provider`"
)
_PROVIDER_DOWN = "`provider_unavailable`: the identity provider cannot be reached"
_QUOTA_REFUSED = (
    "`rate_limited` (your issuance rate) or `quota_exceeded` (your live grants of this"
    " secret); `Retry-After` says when to retry. Nothing was minted"
)
_BACKEND_BUSY = (
    "`backend_busy`: the secret's Vault engine has no free slot (bulkhead); `Retry-After`"
    " says when to retry. Also `vault_unavailable`, `ledger_unavailable`"
)

# People sign in through their identity provider; the broker is the relying party.
_SIGN_IN_ROUTES = [
    Route(
        "GET",
        "/v1/auth/providers",
        signin.get_providers,
        public,
        "listSignInProviders",
        "The identity providers people sign in with, and the flows each offers",
        responses={200: SignInProviders},
    ),
    Route(
        "POST",
        "/v1/auth/login",
        signin.post_login,
        public,
        "startSignIn",
        "Start a browser sign-in: the provider's authorization URL (PKCE, state, nonce)",
        body=LoginRequest,
        responses={200: LoginStarted},
        errors={400: _SIGN_IN_REFUSED + ", `invalid_redirect_uri`", 503: _PROVIDER_DOWN},
    ),
    Route(
        "POST",
        "/v1/auth/callback",
        signin.post_callback,
        public,
        "finishSignIn",
        "Finish a browser sign-in with the provider's code: a broker session token",
        body=CallbackRequest,
        responses={200: SignedIn},
        response_descriptions={200: "Signed in; session.created committed in the ledger"},
        errors={400: _SIGN_IN_REFUSED, 403: "`subject_offboarded`", 503: _PROVIDER_DOWN},
    ),
    Route(
        "POST",
        "/v1/auth/device",
        signin.post_device,
        public,
        "startDeviceSignIn",
        "Start a device sign-in (RFC 8628): a user code and the URL to enter it at",
        body=DeviceRequest,
        responses={200: DeviceStarted},
        errors={400: _SIGN_IN_REFUSED + ", `device_not_supported`", 503: _PROVIDER_DOWN},
    ),
    Route(
        "POST",
        "/v1/auth/device/token",
        signin.post_device_token,
        public,
        "pollDeviceSignIn",
        "Poll a device sign-in: a session token once the user has approved",
        body=DeviceTokenRequest,
        responses={200: SignedIn},
        errors={
            400: "`authorization_pending` or `slow_down` (poll again), `access_denied`,"
            " `expired_token`, or " + _SIGN_IN_REFUSED,
            403: "`subject_offboarded`",
            503: _PROVIDER_DOWN,
        },
    ),
    Route(
        "POST",
        "/v1/auth/session/renew",
        signin.post_renew,
        authenticated,
        "renewSession",
        "Renew a signed-in session: refreshed at the provider, groups re-read",
        responses={200: SessionInfo},
        errors={
            400: "`not_a_session`: called with a JWT",
            401: "`reauthentication_required` (no refresh token), `session_revoked`",
            503: _PROVIDER_DOWN + " (the session stays valid until it expires)",
        },
    ),
    Route(
        "POST",
        "/v1/auth/logout",
        signin.post_logout,
        authenticated,
        "signOut",
        "End the session here and at the provider; the provider's logout URL if it has one",
        responses={200: LoggedOut},
        errors={400: "`not_a_session`: called with a JWT"},
    ),
]

ROUTES: list[Route] = [
    Route(
        "POST",
        "/v1/credentials",
        grants.post_credentials,
        authenticated,
        "issueCredential",
        "Issue a just-in-time credential",
        body=CredentialRequest,
        responses={201: Grant},
        response_descriptions={201: "Issued; the ledger row committed before this response"},
        errors={
            403: "`denied` (no role grants it) or `elevation_required`",
            404: "`unknown_secret`: not in the catalog",
            429: _QUOTA_REFUSED,
            502: "Vault refused the request (broker misconfiguration)",
            503: _BACKEND_BUSY,
        },
    ),
    Route(
        "GET",
        "/v1/me",
        grants.get_me,
        authenticated,
        "me",
        "Who am I, which roles do I hold, what may I request",
        responses={200: Me},
    ),
    Route(
        "GET",
        "/v1/grants",
        grants.get_grants,
        authenticated,
        "listGrants",
        "The caller's grants, newest first",
        query=GrantListQuery,
        responses={200: GrantList},
    ),
    Route(
        "DELETE",
        "/v1/grants/{grant_id}",
        grants.revoke_grant,
        resource("the grant's subject, or an admin"),
        "revokeGrant",
        "Revoke a grant now (the Vault lease is revoked, the ledger says so)",
        query=RevokeQuery,
        responses={200: GrantSummary},
        errors={
            404: "`grant_not_found` (or not yours)",
            409: "`grant_not_active`: already revoked or expired",
            502: "Vault refused the revocation",
        },
    ),
    Route(
        "POST",
        "/v1/elevations",
        elevations.post_elevation,
        authenticated,
        "requestElevation",
        "Ask for elevation to a privileged secret (or take break-glass access)",
        body=ElevationRequest,
        responses={201: Elevation},
        response_descriptions={201: "The elevation (pending, or approved at once for break-glass)"},
        errors={
            403: "`denied`, `break_glass_not_allowed`",
            404: "`unknown_secret`",
            409: "`elevation_not_needed`: a standing role already grants it",
            429: "`quota_exceeded`: your elevation requests this hour; `Retry-After` says"
            " when the oldest leaves the hour",
        },
    ),
    Route(
        "GET",
        "/v1/elevations",
        elevations.list_elevations,
        resource(
            "the service lists what the caller requested or may decide (admin and audit: all)"
        ),
        "listElevations",
        "Elevations you requested, may decide, or (admin/audit) all",
        query=ElevationListQuery,
        responses={200: ElevationList},
        errors={400: "`invalid_status`, `invalid_break_glass`, `invalid_limit`"},
    ),
    Route(
        "GET",
        "/v1/elevations/{elevation_id}",
        elevations.get_elevation,
        resource("its requester, its approvers, admin and audit"),
        "getElevation",
        "One elevation with its full history",
        responses={200: Elevation},
        errors={404: "`elevation_not_found` (or not visible to you)"},
    ),
    _decision(
        "approve",
        "approveElevation",
        "Approve (one vote; activates when every factor is met)",
        "`self_approval`, `not_an_approver`",
        "`elevation_not_pending`, `already_voted`",
    ),
    _decision(
        "deny",
        "denyElevation",
        "Deny (comment required; closes the request)",
        "`self_approval`, `not_an_approver`",
        "`elevation_not_pending`",
    ),
    _decision(
        "cancel",
        "cancelElevation",
        "Cancel (requester), or end early (admin); revokes grants minted under it",
        "`not_requester`",
        "`elevation_not_pending`",
    ),
    _decision(
        "review",
        "reviewElevation",
        "Review a break-glass use (a second person; comment required)",
        "`self_review`, `not_a_reviewer`",
        "`not_break_glass`, `already_reviewed`",
    ),
    Route(
        "POST",
        "/v1/elevations/{elevation_id}/credentials",
        elevations.redeem_elevation,
        resource("the elevation's requester"),
        "redeemElevation",
        "Mint the credential under an approved elevation (requester only)",
        description="TTL is clipped to the role's max_ttl and to the window's end.",
        body=TtlRequest,
        body_required=False,
        responses={201: Grant},
        response_descriptions={201: "Issued; the ledger row committed first"},
        errors={
            403: "`not_requester`, `no_longer_eligible`",
            404: "`elevation_not_found`",
            409: "`elevation_not_active`: not approved, or the window ended",
            429: _QUOTA_REFUSED,
            502: "Vault refused the request",
            503: _BACKEND_BUSY,
        },
    ),
    Route(
        "POST",
        "/v1/offboarding",
        offboarding.post_offboarding,
        capability("admin"),
        "offboardSubject",
        "Offboard a person: refuse them everywhere, end every grant/elevation",
        description=(
            "Ledgers `subject.offboarding_started` (the subject is refused from then on,"
            " 403 `subject_offboarded`), closes their pending/approved elevations, revokes"
            " their active grants in Vault, then ledgers `subject.offboarded` with the SLA"
            " measured from `terminated_at`. After a 503 the subject stays refused; calling"
            " again resumes the same offboarding."
        ),
        body=OffboardRequest,
        responses={201: OffboardingReport},
        response_descriptions={201: "Completed: what was ended, and whether the SLA was met"},
        errors={409: "`already_offboarded`", 502: "Vault refused a revocation"},
    ),
    Route(
        "GET",
        "/v1/offboarding",
        offboarding.list_offboardings,
        capability("admin", "audit"),
        "listOffboardings",
        "Offboardings started in a period, with SLA met/missed",
        query=OffboardingListQuery,
        responses={200: OffboardingList},
    ),
    Route(
        "POST",
        "/v1/offboarding/{subject}/reinstate",
        offboarding.reinstate_subject,
        capability("admin"),
        "reinstateSubject",
        "Re-onboard an offboarded person (ledgered); their requests work again",
        body=ReinstateRequest,
        responses={200: Reinstated},
        errors={
            404: "`not_offboarded`",
            409: "`offboarding_in_progress`: retry the offboarding first",
        },
    ),
    Route(
        "POST",
        "/v1/reviews",
        reviews.post_review,
        capability("admin"),
        "openReview",
        "Open an access review of a quarter (snapshot of entitlements and usage)",
        description=(
            "Records `review.opened` with every entitlement (role x member source) of the"
            " policy version in force and the period's usage from `grant.issued`."
        ),
        body=ReviewOpen,
        responses={201: Review},
        response_descriptions={201: "The review, with its snapshot"},
        errors={400: "`invalid_period`, `period_not_started`, `invalid_reviewer_group`"},
    ),
    Route(
        "GET",
        "/v1/reviews",
        reviews.list_reviews,
        _REVIEWER,
        "listReviews",
        "Reviews (summaries incl. action items), newest first",
        description="`admin`/`audit` see all; members of a `reviewer_group` theirs.",
        query=ReviewListQuery,
        responses={200: ReviewList},
        errors={400: "`invalid_period`, `invalid_limit`"},
    ),
    Route(
        "GET",
        "/v1/reviews/{review_id}",
        reviews.get_review,
        _REVIEWER,
        "getReview",
        "One review: snapshot, decisions, action items",
        responses={200: Review},
        errors={404: "`review_not_found` (or not visible to you)"},
    ),
    Route(
        "POST",
        "/v1/reviews/{review_id}/decisions",
        reviews.decide_review,
        _REVIEWER,
        "decideReview",
        "Keep or revoke one entitlement (reviewer group; comment for revoke)",
        body=ReviewDecision,
        responses={200: Review},
        response_descriptions={200: "The review after the decision"},
        errors={
            400: "`invalid_decision`, `comment_required`, `unknown_entitlement`",
            403: "`not_a_reviewer` (not in `reviewer_group`), `self_review`",
            404: "`review_not_found` (or not visible to you)",
            409: "`already_decided`, `review_completed`",
        },
    ),
    Route(
        "POST",
        "/v1/reviews/{review_id}/complete",
        reviews.complete_review,
        _REVIEWER,
        "completeReview",
        "Complete a review once every entitlement is decided",
        responses={200: Review},
        response_descriptions={200: "The completed review"},
        errors={
            403: "`not_a_reviewer`",
            404: "`review_not_found` (or not visible to you)",
            409: "`review_incomplete`, `review_completed`",
        },
    ),
    Route(
        "GET",
        "/v1/ssh/krl",
        ssh.get_ssh_krl,
        public,
        "sshRevocationList",
        "The SSH key revocation list hosts install as sshd's RevokedKeys",
        description="OpenSSH KRL format: every certificate of the mount's CA still valid"
        " whose grant was revoked or whose subject was offboarded (by serial and key id)."
        " Built from the ledger on each request; fetch it on a timer (docs/ssh.md).",
        query=SSHMountQuery,
        responses={200: None},
        response_descriptions={200: "The KRL (binary)"},
        media="application/octet-stream",
        errors={404: "`unknown_ssh_mount`"},
    ),
    Route(
        "GET",
        "/v1/ssh/ca",
        ssh.get_ssh_ca,
        public,
        "sshCertificateAuthority",
        "The SSH CA public key hosts trust (sshd's TrustedUserCAKeys)",
        query=SSHMountQuery,
        responses={200: None},
        response_descriptions={200: "One OpenSSH public key line"},
        media="text/plain",
        errors={404: "`unknown_ssh_mount`"},
    ),
    Route(
        "GET",
        "/v1/health",
        system.get_health,
        public,
        "health",
        "Readiness: Vault and the ledger answer",
        responses={200: Health, 503: Health},
        response_descriptions={200: "All dependencies up", 503: "A dependency is down"},
    ),
    Route(
        "GET",
        "/v1/health/live",
        system.get_liveness,
        public,
        "liveness",
        "Liveness: the process answers (no dependency is probed)",
        responses={200: Liveness},
    ),
    Route(
        "GET",
        "/v1/audit/verify",
        system.get_verify,
        capability("audit"),
        "verifyLedger",
        "Verify the ledger rows appended since the last verified head",
        description=(
            "Incremental: every row after the newest verified head (signed by the broker"
            " after an earlier clean run) is checked — content, chain, Merkle tree and the"
            " signed checkpoints — and the tree at the head must fold to its signed root."
            " With no usable head it verifies in full (`mode` says which). A full"
            " re-verification is `POST /v1/audit/verify/full`."
        ),
        responses={200: Verification},
    ),
    Route(
        "POST",
        "/v1/audit/verify/full",
        system.post_verify_full,
        capability("admin"),
        "verifyLedgerFull",
        "Re-verify every row of the ledger (one at a time across replicas)",
        body=NoBody,
        body_required=False,
        responses={200: Verification},
        errors={409: "`verification_running`: another full verification holds the lock"},
    ),
    Route(
        "GET",
        "/v1/audit/proofs/inclusion",
        audit.get_inclusion_proof,
        capability("audit"),
        "inclusionProof",
        "Prove a ledger row is in a signed checkpoint (RFC 6962 audit path)",
        description=(
            "Against the checkpoint at `size` (default: the newest). Check it with the"
            " ledger's public key alone: the note's signature, then the path from"
            " `leaf_hash` to the note's root."
        ),
        query=InclusionQuery,
        responses={200: InclusionProof},
        errors={404: "`checkpoint_not_found`, `row_archived`"},
    ),
    Route(
        "GET",
        "/v1/audit/proofs/consistency",
        audit.get_consistency_proof,
        capability("audit"),
        "consistencyProof",
        "Prove an earlier ledger size is a prefix of a signed checkpoint (RFC 6962)",
        description=(
            "From the tree of `old` rows to the checkpoint at `new` (default: the newest):"
            " an auditor who kept an old checkpoint checks the ledger only grew since."
        ),
        query=ConsistencyQuery,
        responses={200: ConsistencyProof},
        errors={404: "`checkpoint_not_found`, `row_archived`"},
    ),
    Route(
        "GET",
        "/v1/audit/evidence",
        evidence.get_evidence,
        capability("audit"),
        "exportEvidence",
        "The signed evidence package (zip) for rows recorded in [from, to)",
        description="Check it offline with `broker evidence check FILE.zip`.",
        query=EvidenceQuery,
        responses={200: None},
        response_descriptions={
            200: "The package: events, derived CSV/JSON, policies, findings, summary.html,"
            " manifest.json and manifest.sig"
        },
        media="application/zip",
        errors={503: "`not_yet_signed` or the ledger is unavailable"},
    ),
    Route(
        "GET",
        "/v1/audit/access",
        audit.get_audit_access,
        capability("audit"),
        "auditAccess",
        "Who had access to what, when, and why: access windows in a period",
        description=(
            "Every grant whose access overlaps [`from`, `to`) — issued before `to`, not"
            " expired or revoked by `from` — oldest first, with the role, policy version"
            " and the text of the rule (role block) that allowed it, reason, ticket, how"
            " and by whom it ended, and for elevated grants the elevation (reason, ticket,"
            " approvers and approval times, window). `subject` and `secret` are optional"
            " filters. The period is at most 400 days. Page with `next_cursor`."
        ),
        query=AccessParams,
        responses={200: AccessPage},
    ),
    Route(
        "GET",
        "/v1/audit/events",
        audit.get_audit_events,
        capability("audit"),
        "auditEvents",
        "Raw ledger events, filtered, oldest first",
        description=(
            "Events (with `prev_hash` and `hash`) in time order (`recorded_at`, then `seq`),"
            " oldest first. Filters combine: `subject`, `secret`, `type` (comma-separated"
            " event names), [`from`, `to`). Page with `cursor` = the previous page's"
            " `next_cursor` (the seq of its last event); `next_cursor` is null on the last"
            " page."
        ),
        query=EventParams,
        responses={200: EventPage},
    ),
    Route(
        "GET",
        "/v1/audit/gaps",
        continuity.get_gaps,
        capability("audit"),
        "listGaps",
        "Stretches with no replica heartbeat (continuity gaps)",
        description=(
            "A gap is a stretch longer than twice `heartbeat_seconds` between consecutive"
            " `broker.heartbeat`, `broker.started` or `broker.stopped` rows of any replica;"
            " each comes with the `gap.annotated` notes overlapping it (`annotated`: one"
            " covers it). The period is at most 400 days; `to` defaults to now."
        ),
        query=GapQuery,
        responses={200: GapList},
    ),
    Route(
        "POST",
        "/v1/audit/gaps/annotate",
        continuity.annotate_gap,
        capability("admin"),
        "annotateGap",
        "Explain a gap: ledger a remediation note for a stretch",
        description="Ledgers `gap.annotated`.",
        body=GapAnnotationRequest,
        responses={201: GapAnnotation},
        response_descriptions={201: "The recorded annotation"},
    ),
    Route(
        "GET",
        "/v1/openapi.json",
        system.get_openapi,
        public,
        "openapi",
        "This document (OpenAPI 3.1, generated from the route table)",
        responses={200: None},
    ),
    Route(
        "GET",
        "/metrics",
        system.get_metrics,
        public,
        "metrics",
        "Prometheus metrics",
        responses={200: None},
        media="text/plain",
    ),
    *_SIGN_IN_ROUTES,
]
