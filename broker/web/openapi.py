"""The OpenAPI 3.1 document of the broker's HTTP API, served at ``/v1/openapi.json``.

Written as data next to the routes; a test checks every route is documented (and every
documented path routed), and the contract-fuzzing suite checks responses against it.
"""

from __future__ import annotations

import copy
from typing import Any

from broker import __version__

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


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not mutate the shared one)."""
    return copy.deepcopy(_DOC)
