"""The OpenAPI 3.1 document of the broker's HTTP API, served at ``/v1/openapi.json``.

Written as data next to the routes; a test checks every route is documented (and every
documented path routed), and the contract-fuzzing suite checks responses against it.
"""

from __future__ import annotations

import copy
from typing import Any

from broker import __version__

from .review_openapi import REVIEW_PATHS, REVIEW_SCHEMAS

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_AUTH_ERRORS = {
    "401": _err("Missing or unacceptable bearer token; `code` names the reason"),
}
_COMMON = {
    "400": _err("Malformed request"),
    **_AUTH_ERRORS,
    "503": _err("Vault or the ledger is unavailable: nothing was issued"),
}

_ELEVATION_ID = {
    "name": "elevation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _decision(operation: str, summary: str, forbidden: str, conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation,
            "parameters": [_ELEVATION_ID],
            "requestBody": _body("Comment", required=False),
            "responses": {
                "200": _json("The elevation after the decision", "Elevation"),
                **_COMMON,
                "403": _err(forbidden),
                "404": _err("`elevation_not_found` (or not visible to you)"),
                "409": _err(conflict),
            },
        }
    }


_DOC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "JIT secrets broker",
        "version": __version__,
        "description": (
            "Just-in-time credentials from Vault/OpenBao. Every decision is recorded in an"
            " append-only, hash-chained, signed ledger before a credential leaves. Errors are"
            ' always `{"error": {"code", "message"}}`. Durations are seconds or Vault-style'
            " strings (`90s`, `15m`, `1h`)."
        ),
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            **REVIEW_SCHEMAS,
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Duration": {
                "oneOf": [
                    {"type": "integer", "minimum": 1},
                    {"type": "string", "pattern": "^([0-9]+|([0-9]+[smhd])+)$"},
                ]
            },
            "CredentialRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secret"],
                "properties": {
                    "secret": {"type": "string", "maxLength": 128, "examples": ["db/orders-ro"]},
                    "reason": {"type": "string", "maxLength": 500},
                    "ticket": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$"},
                    "ttl": {"$ref": "#/components/schemas/Duration"},
                },
            },
            "Grant": {
                "type": "object",
                "required": [
                    "id",
                    "secret",
                    "subject",
                    "role",
                    "policy_version",
                    "issued_at",
                    "expires_at",
                    "credential",
                ],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "secret": {"type": "string"},
                    "subject": {"type": "string"},
                    "role": {"type": "string"},
                    "policy_version": {"type": "string"},
                    "issued_at": {"type": "string", "format": "date-time"},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "lease_id": {"type": ["string", "null"]},
                    "credential": {
                        "type": "object",
                        "description": (
                            "kv2: {data, version}; database: {username, password};"
                            " pki: {certificate, private_key, issuing_ca, ca_chain, serial_number}"
                        ),
                    },
                },
            },
            "ElevationRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secret"],
                "properties": {
                    "secret": {"type": "string", "maxLength": 128, "examples": ["stripe/prod"]},
                    "reason": {"type": "string", "maxLength": 500},
                    "ticket": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$"},
                    "duration": {"$ref": "#/components/schemas/Duration"},
                    "break_glass": {"type": "boolean"},
                },
            },
            "Comment": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"comment": {"type": "string", "maxLength": 500}},
            },
            "Elevation": {
                "type": "object",
                "required": [
                    "id",
                    "status",
                    "secret",
                    "role",
                    "requester",
                    "reason",
                    "duration",
                    "break_glass",
                    "requested_at",
                    "expires_at",
                    "approvals_required",
                    "approvals",
                    "grants",
                    "can_decide",
                ],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "status": {
                        "enum": ["pending", "approved", "denied", "cancelled", "expired", "ended"]
                    },
                    "secret": {"type": "string"},
                    "role": {"type": "string"},
                    "requester": {"type": "string"},
                    "reason": {"type": "string"},
                    "ticket": {"type": ["string", "null"]},
                    "duration": {"type": "integer", "description": "window length, seconds"},
                    "break_glass": {"type": "boolean"},
                    "policy_version": {"type": ["string", "null"]},
                    "requested_at": {"type": "string", "format": "date-time"},
                    "expires_at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "when an undecided request expires",
                    },
                    "approvals_required": {
                        "type": "array",
                        "description": "factors, all required; one approver counts once",
                        "items": {
                            "type": "object",
                            "properties": {
                                "approver_groups": {"type": "array", "items": {"type": "string"}},
                                "approvals": {"type": "integer"},
                            },
                        },
                    },
                    "approvals": {"type": "array", "items": {"type": "object"}},
                    "approved_at": {"type": ["string", "null"], "format": "date-time"},
                    "window_ends_at": {"type": ["string", "null"], "format": "date-time"},
                    "closed": {"type": ["object", "null"]},
                    "review": {"type": ["object", "null"]},
                    "grants": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                    "can_decide": {"type": "boolean"},
                },
            },
            "GrantSummary": {
                "type": "object",
                "required": ["id", "secret", "subject", "status", "issued_at"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "secret": {"type": ["string", "null"]},
                    "subject": {"type": ["string", "null"]},
                    "role": {"type": ["string", "null"]},
                    "policy_version": {"type": ["string", "null"]},
                    "issued_at": {"type": "string", "format": "date-time"},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                    "lease_id": {"type": ["string", "null"]},
                    "engine": {"type": ["string", "null"]},
                    "status": {"enum": ["active", "revoked", "expired"]},
                    "ended_at": {"type": ["string", "null"], "format": "date-time"},
                    "ended_by": {"type": ["string", "null"]},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        **REVIEW_PATHS,
        "/v1/credentials": {
            "post": {
                "summary": "Issue a just-in-time credential",
                "operationId": "issueCredential",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CredentialRequest"}
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Issued; the ledger row committed before this response",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Grant"}}
                        },
                    },
                    **_COMMON,
                    "403": _err("`denied` (no role grants it) or `elevation_required`"),
                    "404": _err("`unknown_secret`: not in the catalog"),
                    "413": _err("Body too large"),
                    "502": _err("Vault refused the request (broker misconfiguration)"),
                },
            }
        },
        "/v1/me": {
            "get": {
                "summary": "Who am I, which roles do I hold, what may I request",
                "operationId": "me",
                "responses": {
                    "200": {
                        "description": "The caller",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/grants": {
            "get": {
                "summary": "The caller's grants, newest first",
                "operationId": "listGrants",
                "parameters": [
                    {"name": "active", "in": "query", "schema": {"enum": ["true", "false"]}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Grants",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["grants"],
                                    "properties": {
                                        "grants": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/GrantSummary"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": _err("Bad query parameter"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/grants/{grant_id}": {
            "delete": {
                "summary": "Revoke a grant now (the Vault lease is revoked, the ledger says so)",
                "operationId": "revokeGrant",
                "parameters": [
                    {
                        "name": "grant_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "reason", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "Revoked",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/GrantSummary"}
                            }
                        },
                    },
                    **_COMMON,
                    "404": _err("`grant_not_found` (or not yours)"),
                    "409": _err("`grant_not_active`: already revoked or expired"),
                    "502": _err("Vault refused the revocation"),
                },
            }
        },
        "/v1/elevations": {
            "post": {
                "summary": "Ask for elevation to a privileged secret (or take break-glass access)",
                "operationId": "requestElevation",
                "requestBody": _body("ElevationRequest"),
                "responses": {
                    "201": _json(
                        "The elevation (pending, or approved at once for break-glass)", "Elevation"
                    ),
                    **_COMMON,
                    "403": _err("`denied`, `break_glass_not_allowed`"),
                    "404": _err("`unknown_secret`"),
                    "409": _err("`elevation_not_needed`: a standing role already grants it"),
                    "413": _err("Body too large"),
                },
            },
            "get": {
                "summary": "Elevations you requested, may decide, or (admin/audit) all",
                "operationId": "listElevations",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "enum": [
                                "pending",
                                "approved",
                                "denied",
                                "cancelled",
                                "expired",
                                "ended",
                            ]
                        },
                    },
                    {"name": "break_glass", "in": "query", "schema": {"enum": ["unreviewed"]}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Elevations, newest first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["elevations"],
                                    "properties": {
                                        "elevations": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Elevation"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": _err("Bad query parameter"),
                    **_AUTH_ERRORS,
                },
            },
        },
        "/v1/elevations/{elevation_id}": {
            "get": {
                "summary": "One elevation with its full history",
                "operationId": "getElevation",
                "parameters": [_ELEVATION_ID],
                "responses": {
                    "200": _json("The elevation", "Elevation"),
                    **_AUTH_ERRORS,
                    "404": _err("`elevation_not_found` (or not visible to you)"),
                },
            }
        },
        "/v1/elevations/{elevation_id}/approve": _decision(
            "approveElevation",
            "Approve (one vote; activates when every factor is met)",
            "`self_approval`, `not_an_approver`",
            "`elevation_not_pending`, `already_voted`",
        ),
        "/v1/elevations/{elevation_id}/deny": _decision(
            "denyElevation",
            "Deny (comment required; closes the request)",
            "`self_approval`, `not_an_approver`",
            "`elevation_not_pending`",
        ),
        "/v1/elevations/{elevation_id}/cancel": _decision(
            "cancelElevation",
            "Cancel (requester), or end early (admin); revokes grants minted under it",
            "`not_requester`",
            "`elevation_not_pending`",
        ),
        "/v1/elevations/{elevation_id}/review": _decision(
            "reviewElevation",
            "Review a break-glass use (a second person; comment required)",
            "`self_review`, `not_a_reviewer`",
            "`not_break_glass`, `already_reviewed`",
        ),
        "/v1/elevations/{elevation_id}/credentials": {
            "post": {
                "summary": "Mint the credential under an approved elevation (requester only)",
                "operationId": "redeemElevation",
                "description": "TTL is clipped to the role's max_ttl and to the window's end.",
                "parameters": [_ELEVATION_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"ttl": {"$ref": "#/components/schemas/Duration"}},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json("Issued; the ledger row committed first", "Grant"),
                    **_COMMON,
                    "403": _err("`not_requester`, `no_longer_eligible`"),
                    "404": _err("`elevation_not_found`"),
                    "409": _err("`elevation_not_active`: not approved, or the window ended"),
                    "502": _err("Vault refused the request"),
                },
            }
        },
        "/v1/offboarding": {
            "post": {
                "summary": "Offboard a person: refuse them everywhere, end every grant/elevation",
                "operationId": "offboardSubject",
                "description": (
                    "Needs the `admin` capability. Ledgers `subject.offboarding_started`"
                    " (the subject is refused from then on, 403 `subject_offboarded`), closes"
                    " their pending/approved elevations, revokes their active grants in Vault,"
                    " then ledgers `subject.offboarded` with the SLA measured from"
                    " `terminated_at`. After a 503 the subject stays refused; calling again"
                    " resumes the same offboarding."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["subject", "reason"],
                                "properties": {
                                    "subject": {"type": "string", "maxLength": 256},
                                    "reason": {"type": "string", "maxLength": 500},
                                    "terminated_at": {
                                        "type": "string",
                                        "format": "date-time",
                                        "description": "default now; not in the future",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Completed: what was ended, and whether the SLA was met",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "offboarding_id",
                                        "subject",
                                        "completed_at",
                                        "grants_revoked",
                                        "elevations_closed",
                                        "terminated_at",
                                        "sla_deadline",
                                        "sla_met",
                                        "seconds_from_termination",
                                    ],
                                }
                            }
                        },
                    },
                    **_COMMON,
                    "403": _err("`forbidden`: the caller lacks the `admin` capability"),
                    "409": _err("`already_offboarded`"),
                    "413": _err("Body too large"),
                    "502": _err("Vault refused a revocation"),
                },
            },
            "get": {
                "summary": "Offboardings started in a period, with SLA met/missed",
                "operationId": "listOffboardings",
                "description": "Needs the `admin` or `audit` capability.",
                "parameters": [
                    {"name": "from", "in": "query", "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Offboardings, newest first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["offboardings"],
                                    "properties": {
                                        "offboardings": {
                                            "type": "array",
                                            "items": {"type": "object"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": _err("Bad query parameter"),
                    **_AUTH_ERRORS,
                    "403": _err("`forbidden`: needs `admin` or `audit`"),
                },
            },
        },
        "/v1/offboarding/{subject}/reinstate": {
            "post": {
                "summary": "Re-onboard an offboarded person (ledgered); their requests work again",
                "operationId": "reinstateSubject",
                "description": "Needs the `admin` capability.",
                "parameters": [
                    {
                        "name": "subject",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["reason"],
                                "properties": {"reason": {"type": "string", "maxLength": 500}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Reinstated",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_COMMON,
                    "403": _err("`forbidden`: the caller lacks the `admin` capability"),
                    "404": _err("`not_offboarded`"),
                    "409": _err("`offboarding_in_progress`: retry the offboarding first"),
                },
            }
        },
        "/v1/health": {
            "get": {
                "summary": "Readiness: Vault and the ledger answer",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": {
                        "description": "All dependencies up",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "A dependency is down",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
        "/v1/health/live": {
            "get": {
                "summary": "Liveness: the process answers (no dependency is probed)",
                "operationId": "liveness",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Alive",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
        "/v1/audit/verify": {
            "get": {
                "summary": "Verify the whole ledger chain and its signed checkpoints",
                "operationId": "verifyLedger",
                "description": "Needs the `audit` capability.",
                "responses": {
                    "200": {
                        "description": "`ok` is false when tampering is detected; "
                        "`first_bad_seq` names the first bad row",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["ok", "rows", "first_bad_seq", "problems"],
                                }
                            }
                        },
                    },
                    **_AUTH_ERRORS,
                    "403": _err("Caller lacks the `audit` capability"),
                },
            }
        },
        "/v1/audit/evidence": {
            "get": {
                "summary": "The signed evidence package (zip) for rows recorded in [from, to)",
                "operationId": "exportEvidence",
                "description": "Needs the `audit` capability. Check it offline with"
                " `broker evidence check FILE.zip`.",
                "parameters": [
                    {"name": n, "in": "query", "required": True, "schema": {"type": "string"}}
                    for n in ("from", "to")
                ],
                "responses": {
                    "200": {
                        "description": "The package: events, derived CSV/JSON, policies,"
                        " findings, summary.html, manifest.json and manifest.sig",
                        "content": {"application/zip": {"schema": {"type": "string"}}},
                    },
                    "400": _err("`bad_period`: from/to missing, malformed or reversed"),
                    **_AUTH_ERRORS,
                    "403": _err("Caller lacks the `audit` capability"),
                    "503": _err("`not_yet_signed` or the ledger is unavailable"),
                },
            }
        },
        "/v1/audit/access": {
            "get": {
                "summary": "Who had access to what, when, and why: access windows in a period",
                "operationId": "auditAccess",
                "description": (
                    "Needs the `audit` capability. Every grant whose access overlaps"
                    " [`from`, `to`) — issued before `to`, not expired or revoked by `from` —"
                    " oldest first, with the role, policy version and the text of the rule"
                    " (role block) that allowed it, reason, ticket, how and by whom it ended,"
                    " and for elevated grants the elevation (reason, ticket, approvers and"
                    " approval times, window). `subject` and `secret` are optional filters."
                    " Dates are `YYYY-MM-DD` (midnight UTC) or ISO 8601 date-times (no offset"
                    " means UTC); the period is at most 400 days. Page with `next_cursor`."
                ),
                "parameters": [
                    {"name": "from", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "subject", "in": "query", "schema": {"type": "string"}},
                    {"name": "secret", "in": "query", "schema": {"type": "string"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Access windows; `ended` is null while still open",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["from", "to", "access", "next_cursor"],
                                    "properties": {
                                        "from": {"type": "string", "format": "date-time"},
                                        "to": {"type": "string", "format": "date-time"},
                                        "next_cursor": {"type": ["string", "null"]},
                                        "access": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": [
                                                    "grant_id",
                                                    "subject",
                                                    "secret",
                                                    "role",
                                                    "policy_version",
                                                    "rule",
                                                    "issued_at",
                                                    "expires_at",
                                                    "ended",
                                                    "elevation",
                                                ],
                                                "properties": {
                                                    "rule": {
                                                        "type": "object",
                                                        "properties": {
                                                            "source": {"type": ["string", "null"]},
                                                            "text": {"type": ["string", "null"]},
                                                        },
                                                    },
                                                    "ended": {
                                                        "type": ["object", "null"],
                                                        "properties": {
                                                            "how": {
                                                                "enum": [
                                                                    "revoked",
                                                                    "expired",
                                                                    "offboarded",
                                                                ]
                                                            },
                                                            "at": {"type": "string"},
                                                            "by": {"type": ["string", "null"]},
                                                        },
                                                    },
                                                    "elevation": {"type": ["object", "null"]},
                                                },
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "400": _err(
                        "`missing_from`, `missing_to`, `invalid_from`, `invalid_to`,"
                        " `invalid_window`, `invalid_subject`, `invalid_secret`,"
                        " `invalid_cursor`, `invalid_limit`, `unknown_parameter`"
                    ),
                    **_AUTH_ERRORS,
                    "403": _err("Caller lacks the `audit` capability"),
                },
            }
        },
        "/v1/audit/events": {
            "get": {
                "summary": "Raw ledger events, filtered, oldest first",
                "operationId": "auditEvents",
                "description": (
                    "Needs the `audit` capability. Events (with `prev_hash` and `hash`) in"
                    " time order (`recorded_at`, then `seq`), oldest first. Filters combine:"
                    " `subject`, `secret`, `type` (comma-separated event names), [`from`,"
                    " `to`). Page with `cursor` = the previous page's `next_cursor` (the seq"
                    " of its last event); `next_cursor` is null on the last page."
                ),
                "parameters": [
                    {"name": "subject", "in": "query", "schema": {"type": "string"}},
                    {"name": "secret", "in": "query", "schema": {"type": "string"}},
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "schema": {"type": "string"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One page of events",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["events", "next_cursor"],
                                    "properties": {
                                        "events": {"type": "array", "items": {"type": "object"}},
                                        "next_cursor": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    "400": _err(
                        "`invalid_from`, `invalid_to`, `invalid_window`, `invalid_type`,"
                        " `invalid_subject`, `invalid_secret`, `invalid_cursor`,"
                        " `invalid_limit`, `unknown_parameter`"
                    ),
                    **_AUTH_ERRORS,
                    "403": _err("Caller lacks the `audit` capability"),
                },
            }
        },
        "/v1/audit/gaps": {
            "get": {
                "summary": "Stretches with no replica heartbeat (continuity gaps)",
                "operationId": "listGaps",
                "description": (
                    "Needs the `audit` capability. A gap is a stretch longer than twice"
                    " `heartbeat_seconds` between consecutive `broker.heartbeat`,"
                    " `broker.started` or `broker.stopped` rows of any replica; each comes with"
                    " the `gap.annotated` notes overlapping it (`annotated`: one covers it)."
                    " Times without an offset are UTC."
                ),
                "parameters": [
                    {"name": "from", "in": "query", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "to",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "default and latest: now",
                    },
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": {
                        "description": "Gaps overlapping [from, to), oldest first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "from",
                                        "to",
                                        "heartbeat_seconds",
                                        "threshold_seconds",
                                        "gaps",
                                    ],
                                    "properties": {
                                        "gaps": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": [
                                                    "start",
                                                    "end",
                                                    "duration_seconds",
                                                    "annotated",
                                                    "annotation",
                                                    "annotations",
                                                ],
                                            },
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": _err("Bad `from`/`to` (`invalid_from`, `invalid_to`, `invalid_range`)"),
                    **_AUTH_ERRORS,
                    "403": _err("Caller lacks the `audit` capability"),
                    "503": _err("The ledger is unavailable"),
                },
            }
        },
        "/v1/audit/gaps/annotate": {
            "post": {
                "summary": "Explain a gap: ledger a remediation note for a stretch",
                "operationId": "annotateGap",
                "description": "Needs the `admin` capability. Ledgers `gap.annotated`.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["from", "to", "remediation"],
                                "additionalProperties": False,
                                "properties": {
                                    "from": {"type": "string"},
                                    "to": {"type": "string"},
                                    "remediation": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "The recorded annotation",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "required": ["annotation"]}
                            }
                        },
                    },
                    **_COMMON,
                    "403": _err("Caller lacks the `admin` capability"),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
}


_OFFBOARDED = "`subject_offboarded`: the caller has been offboarded"


def _document_authenticated_errors(doc: dict[str, Any]) -> None:
    """Add the answers any authenticated operation can give, whatever it does.

    401 (token refused); 403 ``subject_offboarded`` (a valid token of an offboarded
    subject is refused before anything else); 503 (a refusal of a known subject is
    ledgered as part of answering, so with the ledger down the answer is 503).
    Found missing by the contract fuzzing in tests/reliability/test_contract_fuzz.py.
    """
    for item in doc["paths"].values():
        for op in item.values():
            if op.get("security") == []:
                continue
            responses = op["responses"]
            responses.setdefault("401", _AUTH_ERRORS["401"])
            if "403" in responses:  # shared dicts: replace, never mutate
                own = responses["403"]
                responses["403"] = {**own, "description": f"{own['description']}; {_OFFBOARDED}"}
            else:
                responses["403"] = _err(_OFFBOARDED)
            responses.setdefault("503", _err("The ledger is unavailable: nothing was recorded"))


_document_authenticated_errors(_DOC)


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not mutate the shared one)."""
    return copy.deepcopy(_DOC)
