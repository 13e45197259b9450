"""The served OpenAPI document and the route table agree, and real responses match it."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import jsonschema
import pytest

from broker.web.routes import ROUTES
from tests.support.brokers import RunningBroker
from tests.support.http import auth

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_ERROR_REF = "#/components/schemas/Error"


def _template(path: str) -> str:
    """One spelling for path parameters: aiohttp ``{id}``/``{id:regex}`` and OpenAPI ``{id}``."""
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}", r"{\1}", path)


@pytest.fixture
async def document(broker: RunningBroker, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"{broker.url}/v1/openapi.json") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        doc: dict[str, Any] = await r.json()
    return doc


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), _template(path)): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in _METHODS
    }


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


async def test_document_has_openapi_31_shape(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"]
    assert document["info"]["version"]
    assert isinstance(document["paths"], dict) and document["paths"]
    for path, item in document["paths"].items():
        assert path.startswith("/"), path
        ops = [m for m in item if m in _METHODS]
        assert ops, f"{path} has no operations"
        for method in ops:
            op = item[method]
            assert op["responses"], (path, method)
            for status in op["responses"]:
                assert re.fullmatch(r"[1-5][0-9]{2}|default", status), (path, method, status)
            # Path parameters in the template are declared, and vice versa.
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{([^}:]+)", path)), (path, method)
    op_ids = [op["operationId"] for op in _operations(document).values()]
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"
    # Every $ref points at something that exists.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    refs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)


async def test_every_route_is_documented_and_every_documented_path_routed(
    document: dict[str, Any],
) -> None:
    routed = {(r.method.upper(), _template(r.path)) for r in ROUTES}
    documented = set(_operations(document))
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented operations with no route"


async def test_every_error_response_uses_the_error_schema(document: dict[str, Any]) -> None:
    error = _resolve(document, _ERROR_REF)
    assert error["required"] == ["error"]
    detail = _resolve(document, error["properties"]["error"]["$ref"])
    assert set(detail["required"]) == {"code", "message"}
    checked = 0
    for (method, path), op in _operations(document).items():
        for status, response in op["responses"].items():
            if status.startswith(("2", "3")):
                continue
            if (method, path, status) == ("GET", "/v1/health", "503"):
                continue  # health reports per-dependency checks, not an error
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": _ERROR_REF}, (method, path, status)
            checked += 1
    assert checked >= 10


async def test_real_grant_has_every_required_field(
    document: dict[str, Any],
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    op = document["paths"]["/v1/credentials"]["post"]
    ref = op["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    schema = _resolve(document, ref)
    async with http.post(
        f"{broker.url}/v1/credentials",
        json={"secret": "stripe/test"},
        headers=auth(tokens["alice"]),
    ) as r:
        assert r.status == 201, await r.text()
        grant = await r.json()
    missing = [f for f in schema["required"] if f not in grant]
    assert missing == []
    _conforms(document, ref, grant)
    for name, prop in schema["properties"].items():
        if name in grant and prop.get("format") == "date-time":
            assert datetime.fromisoformat(grant[name]).tzinfo is not None, name
        if name in grant and prop.get("format") == "uuid":
            uuid.UUID(grant[name])
    # And the documented summary shape is what GET /v1/grants returns for it.
    summary_schema = _resolve(document, "#/components/schemas/GrantSummary")
    async with http.get(f"{broker.url}/v1/grants", headers=auth(tokens["alice"])) as r:
        listed = [g for g in (await r.json())["grants"] if g["id"] == grant["id"]]
    assert len(listed) == 1
    assert [f for f in summary_schema["required"] if f not in listed[0]] == []
    assert set(listed[0]) <= set(summary_schema["properties"])
    _conforms(document, "#/components/schemas/GrantSummary", listed[0])


def _conforms(document: dict[str, Any], ref: str, value: Any) -> None:
    """``value`` is valid under the document's schema ``ref`` (JSON Schema 2020-12)."""
    validator = jsonschema.Draft202012Validator(
        {"$ref": ref, "components": document["components"]},
        format_checker=jsonschema.FormatChecker(),
    )
    errors = [e.message for e in validator.iter_errors(value)]
    assert errors == [], errors
