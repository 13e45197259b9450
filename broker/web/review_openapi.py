"""The access-review part of the OpenAPI document (merged into ``web.openapi``).

Pure data, kept next to ``review_handlers`` so the review API is documented in one place.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REVIEW_PATHS", "REVIEW_SCHEMAS"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_AUTH = {"401": _err("Missing or unacceptable bearer token; `code` names the reason")}
_BAD = {"400": _err("Malformed request; `code` names the field")}
_UNAVAILABLE = {"503": _err("The ledger is unavailable: nothing was recorded")}
_REVIEW_ID = {"name": "review_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NOT_FOUND = {"404": _err("`review_not_found` (or not visible to you)")}
_TS = {"type": "string", "format": "date-time"}
_TS_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_PERIOD = {"type": "string", "pattern": "^[0-9]{4}-Q[1-4]$", "examples": ["2026-Q1"]}

_SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "period": _PERIOD,
    "period_start": _TS,
    "period_end": {**_TS, "description": "exclusive"},
    "status": {"enum": ["open", "completed"]},
    "reviewer_group": {"type": "string"},
    "opened_by": {"type": "string"},
    "opened_at": _TS,
    "policy_version": {"type": "string", "description": "the version the snapshot is of"},
    "progress": {
        "type": "object",
        "required": ["entitlements", "decided", "keep", "revoke"],
        "properties": {
            k: {"type": "integer"} for k in ("entitlements", "decided", "keep", "revoke")
        },
    },
    "entitlements_total": {"type": "integer"},
    "entitlements_truncated": {"type": "boolean"},
    "usage_truncated": {"type": "boolean"},
    "completed_by": {"type": ["string", "null"]},
    "completed_at": _TS_OR_NULL,
    "action_items": {"type": "array", "items": {"$ref": "#/components/schemas/ActionItem"}},
    "open_action_items": {"type": "integer"},
    "can_decide": {"type": "boolean"},
}

REVIEW_SCHEMAS: dict[str, Any] = {
    "ReviewOpen": {
        "type": "object",
        "additionalProperties": False,
        "required": ["period", "reviewer_group"],
        "properties": {
            "period": _PERIOD,
            "reviewer_group": {"type": "string", "maxLength": 256, "examples": ["sre-leads"]},
        },
    },
    "ReviewDecision": {
        "type": "object",
        "additionalProperties": False,
        "required": ["entitlement_id", "decision"],
        "properties": {
            "entitlement_id": {
                "type": "string",
                "examples": ["engineering/group:engineering"],
            },
            "decision": {"enum": ["keep", "revoke"]},
            "comment": {"type": "string", "maxLength": 500, "description": "required for revoke"},
        },
    },
    "ActionItem": {
        "type": "object",
        "required": ["entitlement_id", "role", "source", "status", "resolved_by_version"],
        "properties": {
            "entitlement_id": {"type": "string"},
            "role": {"type": "string"},
            "source": {"type": "string"},
            "decided_by": {"type": "string"},
            "decided_at": _TS,
            "comment": {"type": ["string", "null"]},
            "status": {"enum": ["open", "resolved"]},
            "resolved_by_version": {"type": ["string", "null"]},
            "resolved_at": _TS_OR_NULL,
        },
    },
    "ReviewSummary": {
        "type": "object",
        "required": list(_SUMMARY_PROPERTIES),
        "properties": _SUMMARY_PROPERTIES,
    },
    "Review": {
        "type": "object",
        "required": [*_SUMMARY_PROPERTIES, "entitlements", "usage"],
        "properties": {
            **_SUMMARY_PROPERTIES,
            "entitlements": {
                "type": "array",
                "description": "At most 10000 (then `entitlements_truncated`)",
                "items": {
                    "type": "object",
                    "required": ["id", "role", "source", "kind", "member", "decision"],
                    "properties": {
                        "id": {"type": "string", "description": "`<role>/<source>`"},
                        "role": {"type": "string"},
                        "source": {
                            "type": "string",
                            "description": (
                                "`group:<g>`, `subject:<s>` or `service_account:<ns:name>`"
                            ),
                        },
                        "kind": {"enum": ["group", "subject", "service_account"]},
                        "member": {"type": "string"},
                        "privileged": {"type": "boolean"},
                        "secrets": {"type": "array", "items": {"type": "string"}},
                        "capabilities": {"type": "array", "items": {"type": "string"}},
                        "role_source": {"type": "string"},
                        "decision": {"type": ["object", "null"]},
                    },
                },
            },
            "usage": {
                "type": "array",
                "description": "Distinct subject x secret x role issued in the period;"
                " at most 10000 (then `usage_truncated`)",
                "items": {
                    "type": "object",
                    "required": ["subject", "secret", "role", "grants", "last_used"],
                    "properties": {
                        "subject": {"type": "string"},
                        "subject_kind": {"type": ["string", "null"]},
                        "secret": {"type": "string"},
                        "role": {"type": "string"},
                        "grants": {"type": "integer"},
                        "last_used": _TS,
                    },
                },
            },
        },
    },
}

_REVIEWER_ERRORS = {
    "403": _err("`not_a_reviewer` (not in `reviewer_group`), `self_review`"),
}

REVIEW_PATHS: dict[str, Any] = {
    "/v1/reviews": {
        "post": {
            "summary": "Open an access review of a quarter (snapshot of entitlements and usage)",
            "operationId": "openReview",
            "description": (
                "Needs the `admin` capability. Records `review.opened` with every entitlement"
                " (role x member source) of the policy version in force and the period's"
                " usage from `grant.issued`."
            ),
            "requestBody": _body("ReviewOpen"),
            "responses": {
                "201": _json("The review, with its snapshot", "Review"),
                **_BAD,
                **_AUTH,
                "403": _err("`forbidden`: the caller lacks the `admin` capability"),
                "413": _err("Body too large"),
                **_UNAVAILABLE,
            },
        },
        "get": {
            "summary": "Reviews (summaries incl. action items), newest first",
            "operationId": "listReviews",
            "description": "`admin`/`audit` see all; members of a `reviewer_group` theirs.",
            "parameters": [
                {"name": "period", "in": "query", "schema": _PERIOD},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                },
            ],
            "responses": {
                "200": {
                    "description": "Review summaries",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["reviews"],
                                "properties": {
                                    "reviews": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/ReviewSummary"},
                                    }
                                },
                            }
                        }
                    },
                },
                "400": _err("`invalid_period`, `invalid_limit`"),
                **_AUTH,
            },
        },
    },
    "/v1/reviews/{review_id}": {
        "get": {
            "summary": "One review: snapshot, decisions, action items",
            "operationId": "getReview",
            "parameters": [_REVIEW_ID],
            "responses": {"200": _json("The review", "Review"), **_AUTH, **_NOT_FOUND},
        }
    },
    "/v1/reviews/{review_id}/decisions": {
        "post": {
            "summary": "Keep or revoke one entitlement (reviewer group; comment for revoke)",
            "operationId": "decideReview",
            "parameters": [_REVIEW_ID],
            "requestBody": _body("ReviewDecision"),
            "responses": {
                "200": _json("The review after the decision", "Review"),
                **_BAD,
                **_AUTH,
                **_REVIEWER_ERRORS,
                **_NOT_FOUND,
                "409": _err("`already_decided`, `review_completed`"),
                "413": _err("Body too large"),
                **_UNAVAILABLE,
            },
        }
    },
    "/v1/reviews/{review_id}/complete": {
        "post": {
            "summary": "Complete a review once every entitlement is decided",
            "operationId": "completeReview",
            "parameters": [_REVIEW_ID],
            "responses": {
                "200": _json("The completed review", "Review"),
                **_AUTH,
                "403": _err("`not_a_reviewer`"),
                **_NOT_FOUND,
                "409": _err("`review_incomplete`, `review_completed`"),
                **_UNAVAILABLE,
            },
        }
    },
}
