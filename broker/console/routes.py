"""The console's routes: declared like the API's (``web.route.Route``), installed into the
same table, with the same access rules. ``front="console"``: cookie session, CSRF-checked
forms, HTML answers."""

from __future__ import annotations

import functools

from broker.web.access import Access, authenticated, public
from broker.web.models import (
    AccessParams,
    Comment,
    CredentialRequest,
    ElevationRequest,
    EventParams,
    EvidenceQuery,
    GapAnnotationRequest,
    GapQuery,
    OffboardingListQuery,
    OffboardRequest,
    ReviewDecision,
    ReviewListQuery,
    ReviewOpen,
    TtlRequest,
)
from broker.web.route import Route
from broker.web.routes import ROUTES as API_ROUTES

from .forms import CallbackQuery, DevSignIn, GapPrefill, NextQuery
from .handlers import admin, audit, elevations, home, reviews, signin, static

__all__ = ["CONSOLE_ROUTES"]


# A console page: HTML, cookie session, CSRF-checked forms.
_page = functools.partial(Route, media="text/html", front="console")


CONSOLE_ROUTES: list[Route] = [
    _page("GET", "/console/static/{name}", static.static_file, public, "consoleStatic", "CSS/JS"),
    _page(
        "GET",
        "/console/login",
        signin.login_page,
        public,
        "consoleLogin",
        "Sign-in page",
        query=NextQuery,
    ),
    _page(
        "GET",
        "/console/login/{provider}",
        signin.start_sign_in,
        public,
        "consoleStartSignIn",
        "Go to the identity provider",
        query=NextQuery,
    ),
    _page(
        "GET",
        "/console/callback",
        signin.callback,
        public,
        "consoleCallback",
        "Back from the identity provider",
        query=CallbackQuery,
    ),
    _page(
        "POST",
        "/console/login/dev",
        signin.dev_sign_in,
        public,
        "consoleDevSignIn",
        "Development: sign in as a demo identity",
        body=DevSignIn,
    ),
    _page(
        "POST",
        "/console/logout",
        signin.sign_out,
        authenticated,
        "consoleSignOut",
        "Sign out",
    ),
    _page("GET", "/console/", home.home, authenticated, "consoleHome", "What I can request"),
    _page(
        "POST",
        "/console/credentials",
        home.issue_credential,
        authenticated,
        "consoleIssueCredential",
        "Get a credential (shown once)",
        body=CredentialRequest,
    ),
    _page(
        "POST",
        "/console/grants/{grant_id}/revoke",
        home.revoke_grant,
        authenticated,
        "consoleRevokeGrant",
        "Revoke one of my grants",
    ),
]


# --- Requesters and approvers: elevations -------------------------------------------------
# Each page has the access rule of its API counterpart: the same ``Access`` object, looked
# up by the API's operation id, so the two cannot drift apart.


def _as_api(operation_id: str) -> Access:
    for route in API_ROUTES:
        if route.operation_id == operation_id:
            return route.access
    raise LookupError(f"no API route {operation_id!r} to take the access rule from")


def _decision(verb: str, operation: str, summary: str) -> Route:
    return _page(
        "POST",
        f"/console/elevations/{{elevation_id}}/{verb}",
        getattr(elevations, verb),
        _as_api(operation),
        f"console{operation[0].upper()}{operation[1:]}",
        summary,
        body=Comment,
        body_required=False,
    )


CONSOLE_ROUTES += [
    _page(
        "GET",
        "/console/elevations",
        elevations.my_requests,
        _as_api("listElevations"),
        "consoleMyElevations",
        "My elevation requests and their state",
    ),
    _page(  # before /console/elevations/{elevation_id}: the first match wins
        "GET",
        "/console/elevations/new",
        elevations.new_request,
        _as_api("requestElevation"),
        "consoleNewElevation",
        "The form to ask for elevation",
        query=elevations.ElevationFormQuery,
    ),
    _page(
        "POST",
        "/console/elevations",
        elevations.post_request,
        _as_api("requestElevation"),
        "consoleRequestElevation",
        "Ask for elevation to a privileged secret",
        body=ElevationRequest,
    ),
    _page(
        "GET",
        "/console/elevations/{elevation_id}",
        elevations.elevation_page,
        _as_api("getElevation"),
        "consoleElevation",
        "One elevation: its state, history and decision (the notification's deep link)",
    ),
    _decision("approve", "approveElevation", "Approve (one vote)"),
    _decision("deny", "denyElevation", "Deny (comment required)"),
    _decision("cancel", "cancelElevation", "Cancel my request"),
    _decision("review", "reviewElevation", "Review a break-glass use (comment required)"),
    _page(
        "POST",
        "/console/elevations/{elevation_id}/credentials",
        elevations.redeem,
        _as_api("redeemElevation"),
        "consoleRedeemElevation",
        "Get the credential under an approved elevation (shown once)",
        body=TtlRequest,
        body_required=False,
    ),
    _page(
        "GET",
        "/console/approvals",
        elevations.approvals,
        _as_api("listElevations"),
        "consoleApprovals",
        "Requests I may decide, and break-glass uses to review",
    ),
]


# --- Auditors and admins: why, events, ledger, findings, evidence, gaps, offboarding, reviews
# Same rule as above: each page takes the ``Access`` of the API route whose service it calls.

CONSOLE_ROUTES += [
    _page(
        "GET",
        "/console/audit/why",
        audit.why_form,
        _as_api("auditAccess"),
        "consoleWhyForm",
        "Why did someone have access: the question",
    ),
    _page(
        "GET",
        "/console/audit/access",
        audit.why,
        _as_api("auditAccess"),
        "consoleWhy",
        "Why did someone have access: every access window",
        query=AccessParams,
    ),
    _page(
        "GET",
        "/console/audit/events",
        audit.events,
        _as_api("auditEvents"),
        "consoleEvents",
        "The event browser",
        query=EventParams,
    ),
    _page(
        "GET",
        "/console/audit/ledger",
        audit.ledger_status,
        _as_api("verifyLedger"),
        "consoleLedger",
        "Ledger status and the last verification",
    ),
    _page(
        "POST",
        "/console/audit/verify",
        audit.verify_ledger_now,
        _as_api("verifyLedger"),
        "consoleVerifyLedger",
        "Verify the whole ledger now",
    ),
    _page(
        "GET",
        "/console/audit/findings",
        audit.findings_form,
        _as_api("exportEvidence"),
        "consoleFindingsForm",
        "Findings: the period",
    ),
    _page(
        "GET",
        "/console/audit/findings/report",
        audit.findings,
        _as_api("exportEvidence"),
        "consoleFindings",
        "Findings of the evidence package of a period",
        query=EvidenceQuery,
    ),
    _page(
        "GET",
        "/console/audit/evidence",
        audit.evidence_form,
        _as_api("exportEvidence"),
        "consoleEvidenceForm",
        "Evidence package: the period",
    ),
    _page(
        "GET",
        "/console/audit/evidence.zip",
        audit.evidence_download,
        _as_api("exportEvidence"),
        "consoleEvidence",
        "Download the evidence package (zip)",
        query=EvidenceQuery,
        media="application/zip",
    ),
    _page(
        "GET",
        "/console/audit/gaps",
        audit.gaps_recent,
        _as_api("listGaps"),
        "consoleGapsRecent",
        "Continuity gaps of the last seven days",
    ),
    _page(
        "GET",
        "/console/audit/gaps/search",
        audit.gaps,
        _as_api("listGaps"),
        "consoleGaps",
        "Continuity gaps of a period",
        query=GapQuery,
    ),
    _page(
        "GET",
        "/console/admin/gaps/annotate",
        admin.annotate_gap_form,
        _as_api("annotateGap"),
        "consoleAnnotateGapForm",
        "Annotate a logging gap: the form",
        query=GapPrefill,
    ),
    _page(
        "POST",
        "/console/admin/gaps/annotate",
        admin.annotate_gap,
        _as_api("annotateGap"),
        "consoleAnnotateGap",
        "Annotate a logging gap",
        body=GapAnnotationRequest,
    ),
    _page(
        "GET",
        "/console/offboardings",
        admin.offboardings,
        _as_api("listOffboardings"),
        "consoleOffboardings",
        "Offboardings and their SLA",
        query=OffboardingListQuery,
    ),
    _page(
        "POST",
        "/console/offboardings",
        admin.offboard,
        _as_api("offboardSubject"),
        "consoleOffboard",
        "Offboard a person (then watch it run)",
        body=OffboardRequest,
    ),
    _page(
        "GET",
        "/console/offboardings/{offboarding_id}",
        admin.offboarding,
        _as_api("listOffboardings"),
        "consoleOffboarding",
        "One offboarding: each revocation as it happens, the SLA",
    ),
    _page(
        "GET",
        "/console/reviews",
        reviews.reviews,
        _as_api("listReviews"),
        "consoleReviews",
        "Access reviews I may see",
        query=ReviewListQuery,
    ),
    _page(
        "POST",
        "/console/reviews",
        reviews.open_review,
        _as_api("openReview"),
        "consoleOpenReview",
        "Open an access review",
        body=ReviewOpen,
    ),
    _page(
        "GET",
        "/console/reviews/{review_id}",
        reviews.review,
        _as_api("getReview"),
        "consoleReview",
        "One access review: entitlements to keep or revoke",
    ),
    _page(
        "POST",
        "/console/reviews/{review_id}/decisions",
        reviews.decide_review,
        _as_api("decideReview"),
        "consoleDecideReview",
        "Keep or revoke one entitlement",
        body=ReviewDecision,
    ),
    _page(
        "POST",
        "/console/reviews/{review_id}/complete",
        reviews.complete_review,
        _as_api("completeReview"),
        "consoleCompleteReview",
        "Complete a review",
    ),
]
