"""Structured logs of a real ``broker serve``: JSON lines, request ids, nothing secret.

A canary secret value is issued through the broker; the test then reads every byte the
process wrote to stderr: each line must be one JSON object, every request has exactly one
access line carrying its request id and the route template, and neither the canary, the
caller's token, a secret-looking query parameter, nor the Vault token appears anywhere.
"""

from __future__ import annotations

import json
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import hvac

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.paths import REPO
from tests.support.processes import serve_env, serving, start_serve

_CANARY_SECRET = "canary/log-test"


def _policies_with_canary(tmp_path: Path, kv_path: str) -> Path:
    """The demo policies plus one KV secret engineers may read: the canary."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    with (policies / "catalog.yaml").open("a") as catalog:
        catalog.write(
            f"\n  {_CANARY_SECRET}:\n    engine: kv2\n    mount: secret\n    path: {kv_path}\n"
        )
    roles = (policies / "roles.yaml").read_text()
    anchor = "      - stripe/test\n    max_ttl: 1h\n"
    assert roles.count(anchor) == 1
    (policies / "roles.yaml").write_text(
        roles.replace(anchor, f"      - stripe/test\n      - {_CANARY_SECRET}\n    max_ttl: 1h\n")
    )
    return policies


async def test_json_logs_carry_request_ids_and_no_secrets(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    canary = f"canary-{secrets.token_hex(16)}"
    query_canary = f"qs-{secrets.token_hex(16)}"
    kv_path = f"log-canary/{uuid.uuid4().hex[:8]}"
    vault = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    vault.secrets.kv.v2.create_or_update_secret(
        kv_path, secret={"api_key": canary}, mount_point="secret"
    )
    policies = _policies_with_canary(tmp_path, kv_path)
    env = serve_env(
        broker_settings.with_overrides(policies_dir=policies),
        "log-test",
        BROKER_LOG_LEVEL="debug",  # the most talkative the broker gets must still be clean
    )
    alice = tokens["alice"]
    sent: dict[str, dict[str, Any]] = {}  # request id -> what we expect in its access line

    async def call(method: str, path: str, expect: int, route: str, **kw: Any) -> Any:
        request_id = f"log-{uuid.uuid4().hex[:12]}"
        headers = kw.pop("headers", {"Authorization": f"Bearer {alice}"})
        headers["X-Request-Id"] = request_id
        async with http.request(method, broker.url + path, headers=headers, **kw) as r:
            assert r.status == expect, (path, r.status, await r.text())
            assert r.headers["X-Request-Id"] == request_id
            sent[request_id] = {"status": expect, "path": route, "method": method}
            return await r.json()

    async with serving([]) as procs:
        broker = await start_serve(env, "log-test", tmp_path)
        procs.append(broker)
        grant = await call(
            "POST",
            "/v1/credentials",
            201,
            "/v1/credentials",
            json={"secret": _CANARY_SECRET, "reason": "log canary"},
        )
        assert grant["credential"]["data"]["api_key"] == canary  # the canary did go out
        await call("GET", f"/v1/grants?active=true&token={query_canary}", 200, "/v1/grants")
        await call("DELETE", f"/v1/grants/{grant['id']}?reason=done", 200, "/v1/grants/{grant_id}")
        await call(
            "POST", "/v1/credentials", 403, "/v1/credentials", json={"secret": "stripe/prod"}
        )
        await call(
            "GET",
            "/v1/me",
            401,
            "/v1/me",
            headers={"Authorization": f"Bearer {alice[:-4]}AAAA"},  # bad signature
        )
        await call("GET", f"/v1/nothing-here?secret={query_canary}", 404, "unmatched")
        assert await broker.stop() == 0, broker.tail()

    raw = broker.log.read_text()
    lines = [line for line in raw.splitlines() if line.strip()]
    assert lines, "the broker logged nothing"
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line is one JSON object
        assert isinstance(doc, dict), line
        assert {"ts", "level", "logger", "msg", "replica"} <= doc.keys(), line
        assert doc["replica"] == "log-test"
        docs.append(doc)
    access = [d for d in docs if d["logger"] == "broker.access"]
    assert {d["request_id"] for d in access} == set(sent), "one access line per request"
    assert len(access) == len(sent)
    for d in access:
        expected = sent[d["request_id"]]
        assert (d["method"], d["path"], d["status"]) == (
            expected["method"],
            expected["path"],
            expected["status"],
        ), d
        assert isinstance(d["duration_ms"], float | int) and d["duration_ms"] >= 0
    known = [d for d in access if d["status"] not in (401, 404)]  # no principal there
    assert all(d["subject"] == "alice" for d in known), known
    # Lines written while a request was handled carry its id; the rest carry none.
    in_request = [d for d in docs if "request_id" in d]
    assert {d["request_id"] for d in in_request} <= set(sent)
    serve_lines = [d["msg"] for d in docs if d["logger"] == "broker.serve"]
    assert serve_lines[0].startswith("listening on") and "shutting down" in serve_lines[1]
    for needle, what in [
        (canary, "the issued secret value"),
        (query_canary, "a query-string parameter"),
        (alice, "the caller's token"),
        (alice.split(".")[2], "the token's signature"),
        (broker_settings.vault_token or "-", "the broker's Vault token"),
        ("Bearer", "an Authorization header"),
    ]:
        assert needle not in raw, f"{what} leaked into the logs"
