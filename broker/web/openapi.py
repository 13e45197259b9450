"""The OpenAPI 3.1 document, generated from the route table, the models and the settings.

Nothing here is written by hand per route: paths, parameters, request and response
schemas come from ``web.routes`` and ``web.models`` (schemas by msgspec), limits from
``Settings`` (``Rule.limit``), and the answers every route can give from its declaration
(401/403/503 for authenticated routes, 400/413 for bodies). ``create_app`` builds the
document once and ``GET /v1/openapi.json`` serves those bytes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from broker import __version__
from broker.settings import Settings

from .fields import field_rules
from .models import Error
from .route import Route

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_ERROR_REF = {"$ref": _REF.format(name="Error")}
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
_OFFBOARDED = "`subject_offboarded`: the caller has been offboarded"
_INTRO = (
    "Just-in-time credentials from Vault/OpenBao. Every decision is recorded in an"
    " append-only, hash-chained, signed ledger before a credential leaves. Errors are"
    ' always `{"error": {"code", "message"}}`. Durations are seconds or Vault-style'
    " strings (`90s`, `15m`, `1h`)."
)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _value_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``X | None`` (or the schema itself)."""
    for branch in schema.get("anyOf", ()):
        if branch.get("type") != "null":
            return dict(branch)
    return schema


def _with_rules(
    model: type[msgspec.Struct], schema: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """``schema`` (a model's component) with each field's Rule applied: its wire form,
    and its limit read from ``settings``."""
    props = schema.get("properties", {})
    for f in field_rules(model):
        prop = props.get(f.key)
        if prop is None:
            continue
        rule = f.rule
        nullable = "anyOf" in prop
        value = dict(rule.wire) if rule.wire is not None else _value_branch(prop)
        limit = f.limit(settings)
        if limit is not None and rule.text:
            value["maxLength"] = limit
        elif limit is not None and rule.wire is None:
            value.update(minimum=1, maximum=limit)
        if rule.message is not None and "description" not in value:
            value["description"] = rule.message.replace("{limit}", str(limit))
        if nullable:
            # Keep null acceptable where the model does (an absent optional field).
            prop = {
                **{k: v for k, v in prop.items() if k != "anyOf"},
                "anyOf": [value, {"type": "null"}],
            }
        else:
            prop = {**{k: v for k, v in prop.items() if k != "anyOf"}, **value}
        props[f.key] = prop
    return schema


def _models(routes: Sequence[Route]) -> tuple[list[type[msgspec.Struct]], set[type]]:
    bodies: list[type[msgspec.Struct]] = [Error]
    queries: set[type] = set()
    for r in routes:
        if r.body is not None:
            bodies.append(r.body)
        if r.query is not None:
            queries.add(r.query)
        bodies.extend(m for m in r.responses.values() if m is not None)
    return list(dict.fromkeys([*bodies, *queries])), queries


def _parameters(
    route: Route, components: dict[str, Any], settings: Settings
) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    if route.query is not None:
        schema = _with_rules(route.query, copy.deepcopy(components[route.query.__name__]), settings)
        required = set(schema.get("required", ()))
        for key, prop in schema.get("properties", {}).items():
            prop = {k: v for k, v in _value_branch(prop).items() if k != "default"}
            param: dict[str, Any] = {"name": key, "in": "query", "schema": prop}
            if key in required:
                param["required"] = True
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    return params


def _responses(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, model in route.responses.items():
        description = route.response_descriptions.get(status, "OK")
        if model is None:
            schema: dict[str, Any] = (
                {"type": "object"} if route.media == "application/json" else {"type": "string"}
            )
        else:
            schema = {"$ref": _REF.format(name=model.__name__)}
        out[str(status)] = {
            "description": description,
            "content": {route.media: {"schema": schema}},
        }
    implied: dict[int, str] = {}
    if route.body is not None:
        implied[400] = "Malformed request; `code` names the field"
        implied[413] = "Body too large"
    if route.query is not None:
        implied[400] = "Bad query parameter; `code` names it"
    if route.access.needs_token:
        implied[401] = "Missing or unacceptable bearer token; `code` names the reason"
        implied[403] = _OFFBOARDED
        if route.access.kind == "capability":
            names = " or ".join(f"`{c}`" for c in route.access.capabilities)
            implied[403] = f"`forbidden`: the caller lacks the {names} capability; {_OFFBOARDED}"
        implied[503] = "Vault or the ledger is unavailable: nothing was issued or recorded"
    for status, description in {**implied, **route.errors}.items():
        if status == 403 and route.access.needs_token and status in route.errors:
            description = f"{route.errors[403]}; {implied[403]}"
        if status == 400 and status in route.errors and status in implied:
            description = f"{implied[400]}: {route.errors[400]}"
        out[str(status)] = _error(description)
    return dict(sorted(out.items()))


def _operation(route: Route, components: dict[str, Any], settings: Settings) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.operation_id,
        "description": " ".join(p for p in (route.access.describe(), route.description) if p),
        "x-access": {
            "kind": route.access.kind,
            **(
                {"capabilities": list(route.access.capabilities)}
                if route.access.capabilities
                else {}
            ),
        },
    }
    if not route.access.needs_token:
        op["security"] = []
    params = _parameters(route, components, settings)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(name=route.body.__name__)}}
            },
        }
    op["responses"] = _responses(route)
    return op


def _openapi_path(path: str) -> str:
    return _PATH_PARAM.sub(r"{\1}", path)


def openapi_document(routes: Iterable[Route], settings: Settings) -> dict[str, Any]:
    """The document for ``routes`` under ``settings`` (a new dict on every call)."""
    routes = list(routes)
    models, queries = _models(routes)
    _, components = msgspec.json.schema_components(models, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = paths.setdefault(_openapi_path(route.path), {})
        item[route.method.lower()] = _operation(route, components, settings)
    query_names = {q.__name__ for q in queries}
    schemas = {
        name: _with_rules(model, copy.deepcopy(components[name]), settings)
        for model in models
        if (name := model.__name__) not in query_names
    }
    # Nested models (parts of responses) are components too.
    for name, schema in components.items():
        if name not in schemas and name not in query_names:
            schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "JIT secrets broker", "version": __version__, "description": _INTRO},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": dict(sorted(schemas.items())),
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
