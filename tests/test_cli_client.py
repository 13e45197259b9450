"""The client CLI (``broker elevations|credentials|grants``) as a real subprocess.

It talks HTTP to the in-process broker of the session (real OpenBao + Postgres). The CLI
runs through ``asyncio.create_subprocess_exec`` so the event loop serving the broker keeps
running while the command waits for it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.commands import cli


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


async def test_elevation_story(
    broker: RunningBroker, tokens: dict[str, str], stack: DevStack, tmp_path: Path
) -> None:
    alice = {"cwd": tmp_path, "url": broker.url, "token": tokens["alice"]}
    bob = {"cwd": tmp_path, "url": broker.url, "token": tokens["bob"]}

    # alice asks for the live Stripe key, citing an incident.
    r = await cli(
        "elevations",
        "request",
        "stripe/prod",
        "--reason",
        "refund run for failed payouts",
        "--ticket",
        "INC-4711",
        "--json",
        **alice,
    )
    assert r.returncode == 0, r
    el = r.json()
    eid = el["id"]
    assert el["status"] == "pending" and el["ticket"] == "INC-4711"

    # She cannot approve her own request.
    r = await cli("elevations", "approve", eid, **alice)
    assert r.returncode == 1, r
    assert r.stderr.startswith("error: self_approval: "), r
    assert r.stdout == ""

    # bob sees it among the pending requests, as a table and as JSON.
    r = await cli("elevations", "list", "--status", "pending", **bob)
    assert r.returncode == 0, r
    header, *rows = r.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "SECRET"]
    row = next(line for line in rows if line.startswith(eid[:8]))
    assert "pending" in row and "stripe/prod" in row and "alice" in row and "0/1" in row
    r = await cli("elevations", "list", "--status", "pending", "--json", **bob)
    assert r.returncode == 0, r
    assert eid in [e["id"] for e in r.json()["elevations"]]

    # bob approves by the short ID the table shows.
    r = await cli("elevations", "approve", eid[:8], "--comment", "ok for INC-4711", **bob)
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"approved elevation {eid[:8]}: now approved, approvals 1/1"), r

    r = await cli("elevations", "show", eid, **alice)
    assert r.returncode == 0, r
    assert "status:     approved" in r.stdout and "bob at" in r.stdout
    assert "ok for INC-4711" in r.stdout

    # alice fetches the key under the elevation: the grant JSON, on stdout only.
    r = await cli("elevations", "credentials", eid, "--ttl", "5m", **alice)
    assert r.returncode == 0, r
    grant = r.json()
    expected = dict(stack.demo.secret_values["stripe/prod"])
    assert grant["credential"]["data"] == expected
    assert grant["secret"] == "stripe/prod" and grant["subject"] == "alice"
    assert expected["api_key"] not in r.stderr

    # ... and sees the grant in her list.
    r = await cli("grants", "list", "--active", **alice)
    assert r.returncode == 0, r
    row = next(line for line in r.stdout.splitlines() if line.startswith(grant["id"][:8]))
    assert "active" in row and "stripe/prod" in row
    assert expected["api_key"] not in r.stdout
    r = await cli("grants", "list", "--json", **alice)
    assert grant["id"] in [g["id"] for g in r.json()["grants"]]

    r = await cli("elevations", "show", eid, "--json", **alice)
    assert r.json()["grants"] == [grant["id"]]


async def test_deny_with_dev_json_identities(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path
) -> None:
    """``--as NAME`` takes the token, and the URL, from ``.broker/dev.json`` like ``broker dev``."""
    dev = tmp_path / ".broker"
    dev.mkdir()
    (dev / "dev.json").write_text(json.dumps({"url": broker.url, "tokens": tokens}))

    r = await cli(
        "elevations",
        "request",
        "db/orders-admin",
        "--reason",
        "fix order 1042 by hand",
        "--duration",
        "30m",
        "--as",
        "alice",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r
    assert " pending: needs 1 from sre-leads;" in r.stdout, r
    short = r.stdout.split()[1][:8]

    r = await cli("elevations", "deny", short, "--as", "dana", cwd=tmp_path)
    assert r.returncode == 2 and "--comment" in r.stderr  # argparse: a denial needs a comment

    r = await cli(
        "elevations", "deny", short, "--comment", "use the runbook", "--as", "dana", cwd=tmp_path
    )
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"denied elevation {short}: now denied"), r

    r = await cli("elevations", "credentials", short, "--as", "alice", cwd=tmp_path)
    assert r.returncode == 1, r
    assert r.stderr.startswith("error: elevation_not_active: "), r
    assert r.stdout == ""

    r = await cli("elevations", "list", "--as", "nobody", cwd=tmp_path)
    assert r.returncode == 2 and "no token for 'nobody'" in r.stderr, r


async def test_break_glass_listed_until_reviewed(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path
) -> None:
    alice = {"cwd": tmp_path, "url": broker.url, "token": tokens["alice"]}
    erin = {"cwd": tmp_path, "url": broker.url, "token": tokens["erin"]}
    r = await cli(
        "elevations",
        "request",
        "db/orders-admin",
        "--reason",
        "orders table locked, outage",
        "--break-glass",
        "--json",
        **alice,
    )
    assert r.returncode == 0, r
    eid = r.json()["id"]
    assert r.json()["status"] == "approved" and r.json()["break_glass"] is True

    r = await cli("elevations", "list", "--unreviewed-break-glass", **erin)
    assert r.returncode == 0, r
    assert any(
        line.startswith(eid[:8]) and "break-glass, unreviewed" in line
        for line in r.stdout.splitlines()
    ), r.stdout

    r = await cli("elevations", "review", eid, "--comment", "checked the outage log", **erin)
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"reviewed elevation {eid[:8]}:"), r

    r = await cli("elevations", "list", "--unreviewed-break-glass", "--json", **erin)
    assert eid not in [e["id"] for e in r.json()["elevations"]]

    r = await cli("elevations", "cancel", eid, **alice)
    assert r.returncode == 0 and "now cancelled" in r.stdout, r


async def test_plain_credentials_and_revoke(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path
) -> None:
    alice = {"cwd": tmp_path, "url": broker.url, "token": tokens["alice"]}
    r = await cli(
        "credentials", "get", "stripe/test", "--ttl", "5m", "--reason", "cli test", **alice
    )
    assert r.returncode == 0, r
    grant = r.json()
    assert grant["credential"]["data"]["api_key"].startswith("sk_test_")

    r = await cli("grants", "revoke", grant["id"][:8], "--reason", "done", **alice)
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"revoked grant {grant['id'][:8]} (stripe/test)"), r
    r = await cli("grants", "revoke", grant["id"], **alice)
    assert r.returncode == 1 and r.stderr.startswith("error: grant_not_active: "), r

    r = await cli("credentials", "get", "stripe/prod", "--reason", "refund run", **alice)
    assert r.returncode == 1 and r.stderr.startswith("error: elevation_required: "), r


async def test_connection_errors(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path, closed_port: int
) -> None:
    r = await cli("elevations", "list", cwd=tmp_path, url=broker.url)
    assert r.returncode == 2 and "no token" in r.stderr, r
    r = await cli("elevations", "list", cwd=tmp_path, token=tokens["bob"])
    assert r.returncode == 2 and "no broker URL" in r.stderr, r

    r = await cli(
        "elevations",
        "list",
        "--url",
        f"http://127.0.0.1:{closed_port}",
        "--token",
        tokens["bob"],
        cwd=tmp_path,
    )
    assert r.returncode == 3, r
    assert "cannot reach broker" in r.stderr and "Traceback" not in r.stderr, r

    r = await cli("elevations", "list", cwd=tmp_path, url=broker.url, token="not-a-jwt")
    assert r.returncode == 1 and r.stderr.startswith("error: "), r
    assert "Traceback" not in r.stderr

    missing = "00000000-0000-4000-8000-000000000000"
    r = await cli("elevations", "show", missing, cwd=tmp_path, url=broker.url, token=tokens["bob"])
    assert r.returncode == 1 and r.stderr.startswith("error: elevation_not_found: "), r


async def test_audit_gaps_and_annotate_gap(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path
) -> None:
    """``broker audit gaps`` (audit) and ``annotate-gap`` (admin) through the client."""
    carol = {"cwd": tmp_path, "url": broker.url, "token": tokens["carol"]}
    erin = {"cwd": tmp_path, "url": broker.url, "token": tokens["erin"]}
    start, end = "2026-01-05T10:00:00+00:00", "2026-01-05T10:20:00+00:00"

    r = await cli(
        "audit", "annotate-gap", "--from", start, "--to", end, "--note", "failover, INC-42", **erin
    )
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"annotated {start} .. {end} (ledger row "), r
    r = await cli("audit", "annotate-gap", "--from", start, "--to", end, "--note", "mine", **carol)
    assert r.returncode == 1 and r.stderr.startswith("error: forbidden: "), r

    r = await cli("audit", "gaps", "--from", start, "--to", end, "--json", **carol)
    assert r.returncode == 0, r
    assert r.json()["from"] == start and r.json()["to"] == end and "gaps" in r.json(), r
    r = await cli("audit", "gaps", "--from", start, "--to", end, **carol)
    assert r.returncode == 0, r
    assert r.stdout.strip() == f"no gaps between {start} and {end}", r


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["elevations", "show", "abc"], "elevation"),
        (["elevations", "approve", "ab"], "elevation"),
        (["grants", "revoke", "a"], "grant"),
        (["reviews", "show", "abc"], "review"),
        (["reviews", "complete", "a1"], "review"),
    ],
)
async def test_a_too_short_id_prefix_says_how_long_it_must_be(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path, argv: list[str], kind: str
) -> None:
    r = await cli(*argv, cwd=tmp_path, url=broker.url, token=tokens["erin"])
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == (
        f"error: ID prefix {argv[-1]!r} is too short: use at least 4 characters of the {kind} ID\n"
    )


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["elevations", "show", "zzzz"], "elevation"),
        (["grants", "revoke", "zzzz"], "grant"),
        (["reviews", "show", "zzzz"], "review"),
    ],
)
async def test_a_long_enough_prefix_of_nothing_is_not_found(
    broker: RunningBroker, tokens: dict[str, str], tmp_path: Path, argv: list[str], kind: str
) -> None:
    # 'zzzz' is long enough to be looked up, and no (hex) ID can start with it.
    r = await cli(*argv, cwd=tmp_path, url=broker.url, token=tokens["erin"])
    assert (r.returncode, r.stdout) == (1, ""), r
    assert r.stderr == f"error: {kind}_not_found: no {kind} visible to you starts with 'zzzz'\n"
