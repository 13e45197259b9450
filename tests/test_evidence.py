"""The evidence package and the dry-run audit, against real OpenBao and Postgres (issue 4).

A period of the session broker's ledger (grants, a revocation, an approved elevation) is
exported through the CLI and through ``GET /v1/audit/evidence``; each package is opened
as an auditor would (manifest hashes, signature, summary, policies) and passes
``broker evidence check``. One flipped byte fails the check as an integrity error; a row a
superuser edited in a private database is a ``chain_break`` material weakness.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.ledger import CheckpointVerifier
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.commands import CommandRun, run_broker, subprocess_env
from tests.support.forgery import as_superuser
from tests.support.http import auth
from tests.support.ledger_db import fresh_ledger_db, populate, signer_for
from tests.support.paths import REPO

RECORD_KEYS = {
    "seq",
    "recorded_at",
    "event",
    "replica",
    "subject",
    "subject_kind",
    "secret",
    "role",
    "policy_version",
    "grant_id",
    "lease_id",
    "expires_at",
    "outcome",
    "request_id",
    "body",
    "dedupe_key",
    "prev_hash",
    "hash",
}


async def broker_cli(
    dsn: str, settings: Settings, *args: str, timeout: float = 120.0
) -> CommandRun:
    """``broker <args>`` on the ledger at ``dsn`` (the in-process broker keeps running)."""
    env = subprocess_env(
        BROKER_DATABASE_URL=dsn,
        BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
        BROKER_CHECKPOINT_KEY_NAME=settings.checkpoint_key_name,
        BROKER_LEDGER_ORIGIN=settings.ledger_origin,
        BROKER_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
    )
    return await run_broker(*args, env=env, timeout=timeout)


def _iso(t: datetime) -> str:
    return t.isoformat()


async def _post(http: aiohttp.ClientSession, url: str, token: str, body: Any) -> Any:
    async with http.post(url, json=body, headers=auth(token)) as r:
        out = await r.json()
        assert r.status in (200, 201), out
        return out


async def _activity(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> dict[str, Any]:
    """Two grants (one revoked) and an approved, redeemed elevation; returns a grant."""
    alice, dana = tokens["alice"], tokens["dana"]
    first = await _post(http, f"{broker.url}/v1/credentials", alice, {"secret": "stripe/test"})
    second = await _post(
        http,
        f"{broker.url}/v1/credentials",
        alice,
        {"secret": "stripe/test", "reason": "evidence test", "ticket": "AUD-1"},
    )
    async with http.delete(f"{broker.url}/v1/grants/{second['id']}", headers=auth(alice)) as r:
        assert r.status == 200, await r.text()
    el = await _post(
        http,
        f"{broker.url}/v1/elevations",
        alice,
        {"secret": "stripe/prod", "reason": "quarter-end refund run", "ticket": "INC-2"},
    )
    await _post(http, f"{broker.url}/v1/elevations/{el['id']}/approve", dana, {"comment": "ok"})
    await _post(http, f"{broker.url}/v1/elevations/{el['id']}/credentials", alice, {})
    return dict(first)


def _open_package(data: bytes, settings: Settings) -> dict[str, bytes]:
    """Every member, after checking the manifest's hashes and its signature."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist() if not i.is_dir()}
    manifest = json.loads(members["manifest.json"])
    assert set(manifest["files"]) == set(members) - {"manifest.json", "manifest.sig"}
    for name, meta in manifest["files"].items():
        assert hashlib.sha256(members[name]).hexdigest() == meta["sha256"], name
        assert meta["tsc"], name  # every file evidences at least one criterion
    verifier = CheckpointVerifier([signer_for(settings).verifier_key()])
    cp = verifier.verify(
        members["manifest.sig"].decode(), origin=f"{settings.ledger_origin}/evidence"
    )
    assert cp.head_hash == hashlib.sha256(members["manifest.json"]).digest()
    assert set(manifest["tsc"]) == {"CC6.1", "CC6.2", "CC6.3"}
    return members


def _rewrite(src: Path, dst: Path, name: str, change: Any) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, change(data) if info.filename == name else data)


async def test_export_cli_and_http_then_dry_run_audit(
    broker: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    period_from = datetime.now(UTC) - timedelta(seconds=1)
    grant = await _activity(broker, tokens, http)
    period_to = datetime.now(UTC) + timedelta(seconds=1)
    await asyncio.sleep(1.2)  # the period is over: nothing later belongs in it

    cli_zip = tmp_path / "cli.zip"
    dsn = broker_settings.database_url
    run = await broker_cli(
        dsn,
        broker_settings,
        "evidence",
        "export",
        "--from",
        _iso(period_from),
        "--to",
        _iso(period_to),
        "--out",
        str(cli_zip),
    )
    assert run.returncode == 0, run
    assert "rows" in run.stderr  # the progress bar
    summary = json.loads(run.stdout)
    # _activity writes exactly seven rows (two issued, one revoked, requested, approved,
    # activated, issued); background rows (heartbeats, auth failures) may add more.
    assert summary["verification_ok"] is True and summary["period_rows"] >= 7, summary
    assert summary["rows"] >= summary["period_rows"], summary

    query = {"from": _iso(period_from), "to": _iso(period_to)}
    url = f"{broker.url}/v1/audit/evidence"
    async with http.get(url, params=query, headers=auth(tokens["alice"])) as r:
        assert r.status == 403, await r.text()
    async with http.get(url, params=query, headers=auth(tokens["carol"])) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/zip"
        http_zip = await r.read()

    for data in (cli_zip.read_bytes(), http_zip):
        members = _open_package(data, broker_settings)
        records = [json.loads(line) for line in members["events.jsonl"].splitlines()]
        assert records and all(set(r) == RECORD_KEYS for r in records)
        seqs = [r["seq"] for r in records]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        signed = members["checkpoints.txt"].decode()
        assert f"\n{seqs[-1]}\n" in signed  # the segment ends at a signed head
        grants = list(csv.DictReader(io.StringIO(members["grants.csv"].decode())))
        by_id = {g["grant_id"]: g for g in grants}
        assert by_id[grant["id"]]["secret"] == "stripe/test"
        assert {g["ended_how"] for g in grants} >= {"revoked"}
        privileged = list(csv.DictReader(io.StringIO(members["privileged.csv"].decode())))
        assert any(p["secret"] == "stripe/prod" and "dana" in p["approvers"] for p in privileged)
        html = members["summary.html"].decode()
        assert "stripe/test" in html and "stripe/prod" in html and "<svg" in html
        policy_files = [n for n in members if n.startswith(f"policies/{grant['policy_version']}/")]
        assert policy_files, sorted(members)
        assert json.loads(members["verification.json"])["ok"] is True

    check = await broker_cli(dsn, broker_settings, "evidence", "check", str(cli_zip))
    assert check.returncode == 0, check
    assert "integrity: ok" in check.stdout

    # One flipped byte in events.jsonl, the zip rewritten consistently around it.
    def flip(data: bytes) -> bytes:
        i = data.index(b'"stripe/test"') + 2
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

    tampered = tmp_path / "tampered.zip"
    _rewrite(cli_zip, tampered, "events.jsonl", flip)
    bad = await broker_cli(dsn, broker_settings, "evidence", "check", "--json", str(tampered))
    assert bad.returncode == 1, bad
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["integrity"]["ok"] is False
    assert any("events.jsonl" in p for p in report["integrity"]["problems"]), report


async def test_check_from_db_finds_a_row_a_superuser_edited(
    stack: DevStack, broker_settings: Settings
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    async with fresh_ledger_db(stack, broker_settings, "evidence_tamper") as db:
        await populate(db, broker_settings, rows=6, checkpoint_at=[6])
        clean = await broker_cli(
            db.writer_dsn,
            broker_settings,
            "evidence",
            "check",
            "--json",
            "--from",
            _iso(start),
            "--to",
            _iso(datetime.now(UTC) + timedelta(minutes=1)),
        )
        assert not [
            f for f in json.loads(clean.stdout)["findings"] if f["kind"] == "chain_break"
        ], clean
        await as_superuser(db, "UPDATE ledger.events SET subject = 'mallory' WHERE seq = 3")
        run = await broker_cli(
            db.writer_dsn,
            broker_settings,
            "evidence",
            "check",
            "--json",
            "--from",
            _iso(start),
            "--to",
            _iso(datetime.now(UTC) + timedelta(minutes=1)),
        )
    assert run.returncode == 1, run
    report = json.loads(run.stdout)
    assert report["integrity"]["ok"] is True, report  # the package is what was exported
    breaks = [f for f in report["findings"] if f["kind"] == "chain_break"]
    assert breaks and all(f["severity"] == "material_weakness" for f in breaks), report
    assert 3 in {f["seq"] for f in breaks}, breaks


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "missing_from"),
        ("?from=2026-01-01", "missing_to"),
        ("?from=Jan&to=2026-01-01", "invalid_from"),
        ("?from=2026-02-01&to=2026-01-01", "invalid_period"),
    ],
)
async def test_evidence_period_is_validated(
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    query: str,
    code: str,
) -> None:
    async with http.get(
        f"{broker.url}/v1/audit/evidence{query}", headers=auth(tokens["carol"])
    ) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["error"]["code"] == code


async def test_export_says_once_that_it_waits_for_a_signed_checkpoint(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """No checkpoint covers the period's last row: the export waits, says so once (stderr
    is not a terminal here, as in a CI log), then gives up with exit 1."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    async with fresh_ledger_db(stack, broker_settings, "evidence_unsigned") as db:
        await populate(db, broker_settings, rows=3, checkpoint_at=[])
        run = await broker_cli(
            db.writer_dsn,
            broker_settings,
            "evidence",
            "export",
            "--from",
            _iso(start),
            "--to",
            _iso(datetime.now(UTC) + timedelta(minutes=1)),
            "--out",
            str(tmp_path / "unsigned.zip"),
            "--wait",
            "3.5",
        )
    assert run.returncode == 1, run
    lines = run.stderr.splitlines()
    assert lines.count("waiting for a signed checkpoint ...") == 1, run.stderr
    assert lines[-1].startswith("evidence export failed: no signed checkpoint covers"), lines
    assert not (tmp_path / "unsigned.zip").exists()


def test_export_help_explains_the_period_and_the_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from broker.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["evidence", "export", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    assert "--from DATE start of the period, inclusive: a date (YYYY-MM-DD" in text
    assert "--to DATE end of the period, exclusive: a date (YYYY-MM-DD" in text
    assert "--out FILE.zip the package to write, e.g. evidence.zip" in text
    # ... which stays out of `git status` when run from the repository root, as documented.
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert "evidence*.zip" in ignored
