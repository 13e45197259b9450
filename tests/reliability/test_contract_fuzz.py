"""Contract fuzzing: schemathesis drives every operation of the live ``/v1/openapi.json``.

Every operation is fuzzed with positive (schema-valid) and negative (schema-violating)
data, as each demo identity (alice, bob, carol the auditor, erin the admin, svc-orders),
with a forged token (right shape, a key the broker does not trust), with schemathesis' own
garbage ``Authorization``, and with no token at all. Operations with an id in their path
are also driven against real objects (a pending elevation, an active grant, an open review)
so the fuzzer reaches the state checks, not only "not found".

Checks, per response: no 5xx; the status code is documented for the operation; the body
matches the documented schema and content type; no bearer token used by the suite is
echoed back. After the run, from the broker's own ledger: no ``grant.issued`` (nor
``grant.intent``) row for any request that got a 4xx, and a ``grant.issued`` row for every
credential that did reach a client.

Schemathesis is synchronous (requests); the broker runs on the session's event loop, so
the fuzz loop runs in a worker thread while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.structures import CaseInsensitiveDict
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from broker.auth import DevIssuer
from broker.devenv import DEMO_IDENTITIES
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.routes import ROUTES
from tests.support.brokers import isolated_broker
from tests.support.heavy import scaled
from tests.support.http import auth, issue, offboard
from tests.support.ledger import count_events
from tests.support.reliability_report import Row, record
from tests.support.tokens import fresh_subject, mint

_DEMO = ("alice", "bob", "carol", "erin", "svc-orders")
_ATTACKERS = frozenset({"offboarded", "forged", "generated", "none"})
_UNVERIFIED = _ATTACKERS - {"offboarded"}
_CHECKS = [
    negative_data_rejection,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
]
# Operations that hand a credential to the caller on success.
_MINTING = {"POST /v1/credentials", "POST /v1/elevations/{elevation_id}/credentials"}
_DEMO_SUBJECTS = frozenset(subject for subject, _ in DEMO_IDENTITIES.values())

# Examples per (operation, mode, identity): 29 operations x 2 modes x 9 identities.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or scaled(8, 60)


def _forged_token() -> str:
    """A well-formed EdDSA JWT for alice from the dev issuer's name, signed by another key."""
    return DevIssuer(Ed25519PrivateKey.generate()).mint("alice", ["engineering"])


@dataclass
class FuzzLog:
    """What the fuzz loop sent and saw (appended from the worker thread only)."""

    requests: int = 0
    negative: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # request id -> (operation, status) for the ledger checks afterwards
    sent: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    five_xx: int = 0
    token_echoes: int = 0
    as_attacker: int = 0  # sent with a forged, garbage, missing or offboarded token
    no_negative: set[str] = field(default_factory=set)


def _fuzz(
    base_url: str,
    schema_doc: dict[str, Any],
    identities: dict[str, str | None],
    fixed_paths: dict[str, dict[str, str]],
    log: FuzzLog,
) -> None:
    """Run every operation x mode x identity; runs in a worker thread."""
    schema = schemathesis.openapi.from_dict(schema_doc)
    session = requests.Session()
    secrets = [t for t in identities.values() if t]
    seen_failures: set[str] = set()

    def send(label: str, who: str, negative: bool, case: schemathesis.Case[Any]) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        token = identities[who]
        if who == "generated" and case.headers and "Authorization" in case.headers:
            headers["Authorization"] = case.headers["Authorization"]
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if (
            label == "POST /v1/offboarding"
            and isinstance(case.body, dict)
            and str(case.body.get("subject")) in _DEMO_SUBJECTS
        ):
            # Keep the demo identities usable for the rest of the run.
            case.body["subject"] = f"fuzz-{uuid.uuid4().hex[:8]}"
        request_id = f"fz-{uuid.uuid4().hex}"
        headers["X-Request-Id"] = request_id
        case.headers = CaseInsensitiveDict(headers)
        try:
            response = case.call(base_url=base_url, session=session, timeout=60)
        except requests.RequestException as e:
            log.failures.append(f"{label}: no answer: {type(e).__name__}: {e}"[:400])
            return
        log.requests += 1
        log.negative += int(negative)
        log.statuses[response.status_code] += 1
        log.by_operation[label] += 1
        log.sent[request_id] = (label, response.status_code, who)
        log.as_attacker += int(who in _ATTACKERS)
        if response.status_code >= 500:
            log.five_xx += 1
        body = response.content
        if any(s.encode() in body for s in secrets):
            log.token_echoes += 1
            log.failures.append(f"{label}: a bearer token was echoed in the response body")
        try:
            case.validate_response(response, checks=_CHECKS)
        except (FailureGroup, Failure) as e:
            failures = e.exceptions if isinstance(e, FailureGroup) else (e,)
            for failure in failures:
                key = f"{label} -> {response.status_code}: {failure.title}"
                if key in seen_failures:
                    continue
                seen_failures.add(key)
                log.failures.append(
                    f"{key}: {failure.message.strip()[:400]}\n    as {who},"
                    f" {'negative' if negative else 'positive'}, path={case.path_parameters!r:.120}"
                    f" query={case.query!r:.200} body={case.body!r:.200}"
                    f"\n    answer: {response.text[:300]}"
                )

    ops = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
    for op in ops:
        label = f"{op.method.upper()} {op.path}"
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            fixed = fixed_paths.get(op.path)
            if fixed is not None:
                strategy = st.one_of(
                    strategy, op.as_strategy(generation_mode=mode, path_parameters=fixed)
                )
            negative = mode is schemathesis.GenerationMode.NEGATIVE
            for who in identities:
                run = _hypothesis_run(strategy, functools.partial(send, label, who, negative))
                try:
                    run()
                except Unsatisfiable:
                    # Nothing in the operation can be made schema-invalid (no parameters,
                    # no body): the identities above still cover it positively.
                    log.no_negative.add(label)
                    break


def _hypothesis_run(
    strategy: st.SearchStrategy[schemathesis.Case[Any]],
    body: Callable[[schemathesis.Case[Any]], None],
) -> Callable[[], None]:
    @hyp_settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        body(case)

    return run


async def _offboarded_token(
    http: aiohttp.ClientSession, url: str, tokens: dict[str, str], settings: Settings
) -> str:
    """A valid token of an engineer whom erin has offboarded (refused everywhere, 403)."""
    subject = fresh_subject("fuzz-leaver")
    await offboard(http, url, tokens["erin"], subject, "contract fuzzing: a leaver's token")
    return mint(settings, subject, ["engineering"])


async def _seed_objects(
    http: aiohttp.ClientSession, url: str, tokens: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Real ids for the path parameters: a pending elevation, a grant, a review, a subject."""
    async with http.post(
        f"{url}/v1/elevations",
        json={"secret": "stripe/prod", "reason": "contract fuzzing seed", "ticket": "INC-1"},
        headers=auth(tokens["alice"]),
    ) as r:
        assert r.status == 201, await r.text()
        elevation_id = (await r.json())["id"]
    grant = await issue(http, url, tokens["alice"], "stripe/test", reason="contract fuzzing seed")
    grant_id = grant["id"]
    async with http.post(
        f"{url}/v1/reviews",
        json={"period": "2026-Q1", "reviewer_group": "sre-leads"},
        headers=auth(tokens["erin"]),
    ) as r:
        assert r.status == 201, await r.text()
        review_id = (await r.json())["id"]
    return {
        "/v1/elevations/{elevation_id}": {"elevation_id": elevation_id},
        **{
            f"/v1/elevations/{{elevation_id}}/{verb}": {"elevation_id": elevation_id}
            for verb in ("approve", "deny", "cancel", "review", "credentials")
        },
        "/v1/grants/{grant_id}": {"grant_id": grant_id},
        "/v1/reviews/{review_id}": {"review_id": review_id},
        "/v1/reviews/{review_id}/decisions": {"review_id": review_id},
        "/v1/reviews/{review_id}/complete": {"review_id": review_id},
        "/v1/offboarding/{subject}/reinstate": {"subject": "fuzz-never-offboarded"},
    }


# The heavy variant (~28k requests) runs far past the suite's default 300 s per test.
@pytest.mark.timeout(scaled(300, 3600))
async def test_every_operation_survives_contract_fuzzing(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    async with isolated_broker(stack, broker_settings, prefix="fuzz") as target:
        async with http.get(f"{target.url}/v1/openapi.json") as r:
            assert r.status == 200
            schema_doc = await r.json()
        fixed_paths = await _seed_objects(http, target.url, tokens)
        identities: dict[str, str | None] = {name: tokens[name] for name in _DEMO}
        identities |= {
            "offboarded": await _offboarded_token(http, target.url, tokens, broker_settings),
            "forged": _forged_token(),
            "generated": None,
            "none": None,
        }

        log = FuzzLog()
        started = time.monotonic()
        await asyncio.to_thread(_fuzz, target.url, schema_doc, identities, fixed_paths, log)
        elapsed = time.monotonic() - started

        # A public operation never reads the token: its refusals come from nobody known.
        public = {
            f"{method.upper()} {path}"
            for path, item in schema_doc["paths"].items()
            for method, op in item.items()
            if isinstance(op, dict) and op.get("x-access", {}).get("kind") == "public"
        }
        found = await _ledger_checks(target.db.superuser_dsn, log, public)

    documented_ops = sum(
        1 for item in schema_doc["paths"].values() for m in item if m in {"get", "post", "delete"}
    )
    bad = sum(n for status, n in log.statuses.items() if 400 <= status < 500)
    record(
        Row(
            area="fuzzing",
            kind="schemathesis contract fuzz, every operation x 9 identities",
            requests=log.requests,
            bad_inputs=log.negative,
            attacks=log.as_attacker,
            leaked=found.unledgered_credentials,
            five_xx_on_bad_input=log.five_xx,
            chain="n/a",
            notes=(
                f"{len(log.by_operation)}/{documented_ops} operations,"
                f" {EXAMPLES} examples per op x mode x identity; {bad} answered 4xx,"
                f" {found.minted_on_4xx} minted on a 4xx, {len(log.failures)} contract failures;"
                f" {found.refusals_checked - len(found.refusals_not_ledgered_once)}"
                f"/{found.refusals_checked} refusals of a known subject ledgered once;"
                f" {elapsed:.0f}s; statuses {dict(sorted(log.statuses.items()))}"
            ),
        )
    )
    assert len(log.by_operation) == documented_ops, sorted(log.by_operation)
    assert log.requests >= documented_ops * 2 * len(identities) * EXAMPLES // 2, log.requests
    assert log.failures == [], "\n".join(log.failures[:40])
    assert log.five_xx == 0
    assert log.token_echoes == 0
    assert found.minted_on_4xx == 0
    assert found.unledgered_credentials == 0
    assert found.refusals_not_ledgered_once == []
    assert found.unauthenticated_with_rows == 0
    assert found.refusals_checked > 500, found.refusals_checked


@dataclass(frozen=True)
class LedgerFindings:
    minted_on_4xx: int  # grant.intent/issued rows of requests that got a 4xx
    unledgered_credentials: int  # 201 credentials without their grant.issued row
    refusals_checked: int  # 4xx (not 401) answers to a verified token
    refusals_not_ledgered_once: list[str]  # ... without exactly one row
    unauthenticated_with_rows: int  # 401 answers that got a row of their own


async def _ledger_checks(dsn: str, log: FuzzLog, public: set[str]) -> LedgerFindings:
    """What the ledger says about every request the fuzzer sent."""
    refused = [rid for rid, (_, status, _) in log.sent.items() if 400 <= status < 500]
    handed_out = [
        rid for rid, (label, status, _) in log.sent.items() if label in _MINTING and status == 201
    ]
    # A verified token (the offboarded subject's too) makes a known subject: every
    # refusal is evidence, recorded exactly once (request.rejected or a denial row).
    known_refusals = {
        rid: label
        for rid, (label, status, who) in log.sent.items()
        if 400 <= status < 500 and status != 401 and who not in _UNVERIFIED and label not in public
    }
    unauthenticated = [rid for rid, (_, status, _) in log.sent.items() if status == 401]
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        minted_on_4xx: int = await conn.fetchval(
            "SELECT count(*) FROM ledger.events WHERE event IN ('grant.issued', 'grant.intent')"
            " AND request_id = ANY($1::text[])",
            refused,
        )
        ledgered: int = await conn.fetchval(
            "SELECT count(DISTINCT request_id) FROM ledger.events WHERE event = 'grant.issued'"
            " AND request_id = ANY($1::text[])",
            handed_out,
        )
        rows_per_refusal = {
            r["request_id"]: r["n"]
            for r in await conn.fetch(
                "SELECT request_id, count(*) AS n FROM ledger.events"
                " WHERE request_id = ANY($1::text[]) GROUP BY request_id",
                list(known_refusals),
            )
        }
        unauthenticated_rows: int = await conn.fetchval(
            "SELECT count(*) FROM ledger.events WHERE request_id = ANY($1::text[])",
            unauthenticated,
        )
    finally:
        await conn.close()
    not_once = sorted(
        {f"{label} ({rows_per_refusal.get(rid, 0)} rows)" for rid, label in known_refusals.items()
         if rows_per_refusal.get(rid, 0) != 1}
    )  # fmt: skip
    return LedgerFindings(
        minted_on_4xx=minted_on_4xx,
        unledgered_credentials=len(handed_out) - ledgered,
        refusals_checked=len(known_refusals),
        refusals_not_ledgered_once=not_once,
        unauthenticated_with_rows=unauthenticated_rows,
    )


# --- raw inputs schemathesis cannot express -----------------------------------------------

_RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("NaN ttl", b'{"secret": "stripe/test", "ttl": NaN}', "application/json"),
    ("Infinity ttl", b'{"secret": "stripe/test", "ttl": Infinity}', "application/json"),
    ("-Infinity in comment", b'{"comment": -Infinity}', "application/json"),
    ("float overflow", b'{"secret": "stripe/test", "ttl": 1e400}', "application/json"),
    ("huge integer", b'{"secret": "stripe/test", "ttl": ' + b"9" * 5000 + b"}", "application/json"),
    ("duplicate keys", b'{"secret": "stripe/test", "secret": "stripe/prod"}', "application/json"),
    ("invalid UTF-8", b'{"secret": "\xff\xfe"}', "application/json"),
    ("lone surrogate escape", b'{"secret": "\\ud800", "reason": "\\udfff"}', "application/json"),
    ("NUL escape", b'{"secret": "stripe/test\\u0000", "comment": "\\u0000"}', "application/json"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"),
    ("array body", b'[{"secret": "stripe/test"}]', "application/json"),
    ("string body", b'"stripe/test"', "application/json"),
    ("null body", b"null", "application/json"),
    ("empty body", b"", "application/json"),
    ("form body", b"secret=stripe%2Ftest", "application/x-www-form-urlencoded"),
    ("text body", b"secret: stripe/test", "text/plain"),
    ("over the body limit", b'{"reason": "' + b"x" * (Settings().max_body_bytes + 10) + b'"}',
     "application/json"),
]  # fmt: skip


async def test_raw_bodies_and_methods_never_5xx(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    """Every POST route x malformed bodies, and unrouted methods: a JSON 4xx, never a 5xx."""
    async with isolated_broker(stack, broker_settings, prefix="rawfuzz") as target:
        fixed = await _seed_objects(http, target.url, tokens)
        posts = []
        optional_body = set()  # an empty body is a valid request there (no comment)
        for route in ROUTES:
            if route.method != "POST":
                continue
            path = route.path
            for name, value in fixed.get(route.path, {}).items():
                path = path.replace(f"{{{name}}}", value)
            posts.append(path)
            if route.body is None or not route.body_required:
                optional_body.add(path)
        answers: list[tuple[str, str, int, str | None]] = []
        minted_before = await count_events(target.db.superuser_dsn, _MINTED_SQL)
        for who in ("alice", "erin"):
            for path in posts:
                for label, body, content_type in _RAW_BODIES:
                    headers = {**auth(tokens[who]), "Content-Type": content_type}
                    async with http.post(f"{target.url}{path}", data=body, headers=headers) as r:
                        answers.append((label, path, r.status, await _error_code(r)))
        for method in ("PUT", "PATCH", "TRACE", "FOO"):
            for path in ("/v1/credentials", "/v1/me", "/v1/elevations"):
                async with http.request(method, f"{target.url}{path}",
                                        headers=auth(tokens["alice"])) as r:  # fmt: skip
                    answers.append((method, path, r.status, await _error_code(r)))
        minted = await count_events(target.db.superuser_dsn, _MINTED_SQL) - minted_before
    five_xx = [a for a in answers if a[2] >= 500]
    # aiohttp's HTTP parser refuses a method token it does not know (plain-text 400, the
    # connection closed) before any broker code runs; see the report for the limitation.
    parser_level = [a for a in answers if a[0] == "FOO" and a[2] == 400 and a[3] is None]
    not_json = [a for a in answers if a[2] >= 400 and a[3] is None and a not in parser_level]
    accepted = [
        a for a in answers if a[2] < 400 and not (a[0] == "empty body" and a[1] in optional_body)
    ]
    record(
        Row(
            area="fuzzing",
            kind="raw bodies (NaN, nesting, bad UTF-8, over limit...) and unrouted methods",
            requests=len(answers),
            bad_inputs=len(answers),
            leaked=minted,
            five_xx_on_bad_input=len(five_xx),
            notes=(
                f"{len(posts)} POST routes x {len(_RAW_BODIES)} bodies x 2 callers + 12 methods;"
                f" statuses {dict(sorted(Counter(a[2] for a in answers).items()))};"
                f" {len(not_json)} not in the JSON error shape, plus {len(parser_level)}"
                f" plain-text 400s from aiohttp's parser (unknown method); {minted} minted"
            ),
        )
    )
    assert five_xx == [], five_xx[:20]
    assert accepted == [], accepted[:20]
    assert not_json == [], not_json[:20]
    assert len(parser_level) == 3
    assert minted == 0


_MINTED_SQL = "e.event IN ('grant.issued', 'grant.intent')"


async def _error_code(r: aiohttp.ClientResponse) -> str | None:
    """The error code of a documented-shape error body, else None."""
    if r.content_type != "application/json":
        return None
    try:
        body = await r.json()
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or set(err) != {"code", "message"}:
        return None
    return str(err["code"])
