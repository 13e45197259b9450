"""Chain hashing and signed checkpoints: pure functions, no I/O.

The C2SP signed-note rules are recomputed here from the spec (https://c2sp.org/signed-note)
and checked against the reference vector of golang.org/x/mod/sumdb/note, so a checkpoint
the broker signs is one any Go-ecosystem verifier or witness accepts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.ledger import Checkpoint, CheckpointError, CheckpointSigner, CheckpointVerifier
from broker.ledger.chain import GENESIS, canonical_row, chain_hash
from broker.ledger.checkpoint import parse_verifier_key

ORIGIN = "jit-broker/ledger"

_BASE: dict[str, Any] = {
    "seq": 7,
    "recorded_at": datetime(2025, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
    "event": "grant.issued",
    "replica": "r1",
    "subject": "alice",
    "subject_kind": "human",
    "secret": "db/orders-ro",
    "role": "engineering",
    "policy_version": "a" * 64,
    "grant_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "lease_id": "database/creds/orders-ro/abc",
    "expires_at": datetime(2025, 2, 3, 4, 20, 6, 789012, tzinfo=UTC),
    "outcome": "issued",
    "request_id": "req-1",
    "body": {"engine": "database", "ttl": 900, "nested": {"b": [1, 2], "a": None}},
    "dedupe_key": None,
}

# A different value for every field: each must change the canonical bytes.
_CHANGED: dict[str, Any] = {
    "seq": 8,
    "recorded_at": _BASE["recorded_at"] + timedelta(microseconds=1),
    "event": "grant.revoked",
    "replica": "r2",
    "subject": "bob",
    "subject_kind": "service",
    "secret": "stripe/test",
    "role": "orders-dba",
    "policy_version": "b" * 64,
    "grant_id": uuid.UUID("12345678-1234-5678-1234-567812345679"),
    "lease_id": "database/creds/orders-ro/abd",
    "expires_at": _BASE["expires_at"] + timedelta(microseconds=1),
    "outcome": "denied",
    "request_id": "req-2",
    "body": {"engine": "database", "ttl": 901, "nested": {"b": [1, 2], "a": None}},
    "dedupe_key": "grant:x:end",
}


def _row(**changes: Any) -> bytes:
    return canonical_row(**{**_BASE, **changes})


# --- canonical rows and the chain ----------------------------------------------------------


def test_canonical_row_is_deterministic() -> None:
    assert _row() == _row()
    # Key order of the body does not matter; the bytes are sorted-key compact JSON.
    reordered = dict(reversed(list(_BASE["body"].items())))
    assert _row(body=reordered) == _row()
    doc = json.loads(_row())
    assert set(doc) == set(_BASE)
    assert b" " not in _row().replace(b"ticket ", b"")


def test_every_field_is_covered() -> None:
    assert set(_CHANGED) == set(_BASE), "the test must change every field canonical_row takes"
    base_hash = chain_hash(GENESIS, _row())
    for name, value in _CHANGED.items():
        changed = _row(**{name: value})
        assert changed != _row(), name
        assert chain_hash(GENESIS, changed) != base_hash, name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("subject", None),
        ("subject", ""),
        ("grant_id", None),
        ("expires_at", None),
        ("dedupe_key", ""),
        ("body", {}),
        ("body", {"engine": "database", "ttl": "900", "nested": {"b": [1, 2], "a": None}}),
        ("body", {"engine": "database", "ttl": 900, "nested": {"b": [2, 1], "a": None}}),
    ],
)
def test_none_empty_and_type_changes_change_the_hash(name: str, value: Any) -> None:
    assert _row(**{name: value}) != _row()


def test_chain_hash_links_rows() -> None:
    rows = [_row(seq=i, request_id=f"req-{i}") for i in range(1, 6)]
    hashes = []
    prev = GENESIS
    for row in rows:
        prev = chain_hash(prev, row)
        hashes.append(prev)
    assert len(set(hashes)) == len(hashes)
    assert all(len(h) == 32 for h in hashes)
    # The same row under a different predecessor hashes differently: linkage is in the hash.
    assert chain_hash(hashes[0], rows[2]) != hashes[2]
    assert chain_hash(GENESIS, rows[0]) == hashes[0]
    # Reordering two rows changes every hash from there on.
    swapped = [rows[0], rows[2], rows[1], rows[3], rows[4]]
    prev = GENESIS
    for i, row in enumerate(swapped):
        prev = chain_hash(prev, row)
        if i >= 1:
            assert prev != hashes[i]
    # Domain separation: not a bare SHA-256 of predecessor || row.
    assert chain_hash(GENESIS, rows[0]) != hashlib.sha256(GENESIS + rows[0]).digest()


def test_genesis_is_32_zero_bytes() -> None:
    assert bytes(32) == GENESIS


def test_timestamps_are_utc_microseconds() -> None:
    ts = datetime(2025, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
    doc = json.loads(_row(recorded_at=ts))
    assert doc["recorded_at"] == "2025-02-03T04:05:06.789012Z"
    # The same instant in another zone is the same bytes (Postgres returns UTC-ish values).
    plus2 = ts.astimezone(timezone(timedelta(hours=2)))
    assert _row(recorded_at=plus2) == _row(recorded_at=ts)
    # Round trip: the spelling parses back to the exact instant, microseconds kept.
    back = datetime.strptime(doc["recorded_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert back == ts
    # Whole seconds still carry six fractional digits (fixed width, reproducible).
    whole = json.loads(_row(recorded_at=ts.replace(microsecond=0)))["recorded_at"]
    assert whole == "2025-02-03T04:05:06.000000Z"
    assert json.loads(_row(expires_at=None))["expires_at"] is None


def test_unicode_is_kept_verbatim() -> None:
    row = _row(body={"reason": "caf\u00e9 \u2014 \U0001f512"})
    assert "caf\u00e9 \u2014 \U0001f512".encode() in row


# --- checkpoints: the signed-note form ------------------------------------------------------


def _signer(name: str = "jit-broker", seed: bytes | None = None) -> CheckpointSigner:
    key = Ed25519PrivateKey.from_private_bytes(seed) if seed else Ed25519PrivateKey.generate()
    return CheckpointSigner(name, key)


def _cp(size: int = 42) -> Checkpoint:
    return Checkpoint(ORIGIN, size, hashlib.sha256(b"head").digest())


def test_sign_verify_round_trip() -> None:
    signer = _signer()
    cp = _cp()
    note = signer.sign(cp)
    got = CheckpointVerifier([signer.verifier_key()]).verify(note, origin=ORIGIN)
    assert got == cp
    body, sig = note.split("\n\n")
    assert body + "\n" == cp.body()
    assert body.split("\n") == [ORIGIN, "42", base64.b64encode(cp.head_hash).decode()]
    assert sig.startswith("\u2014 jit-broker ") and sig.endswith("\n")


def test_verify_rejects_the_wrong_key() -> None:
    note = _signer().sign(_cp())
    with pytest.raises(CheckpointError):
        CheckpointVerifier([_signer().verifier_key()]).verify(note, origin=ORIGIN)


def test_verify_rejects_a_signature_from_another_key_with_the_same_name() -> None:
    trusted, impostor = _signer("jit-broker"), _signer("jit-broker")
    note = impostor.sign(_cp())
    with pytest.raises(CheckpointError):
        CheckpointVerifier([trusted.verifier_key()]).verify(note, origin=ORIGIN)
    # Even if the impostor copies the trusted key hash into its signature line.
    line = note.split("\n\n")[1].removeprefix("\u2014 jit-broker ").strip()
    raw = base64.b64decode(line)
    forged_hash = bytes.fromhex(trusted.key_id.split("+")[1])
    forged = note.replace(line, base64.b64encode(forged_hash + raw[4:]).decode())
    with pytest.raises(CheckpointError):
        CheckpointVerifier([trusted.verifier_key()]).verify(forged, origin=ORIGIN)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body: body.replace("\n42\n", "\n43\n"),  # size
        lambda body: body.replace("\n42\n", "\n042\n"),  # size, non-canonical spelling
        lambda body: body.replace(ORIGIN, ORIGIN + "x"),  # origin (also a wrong origin)
        lambda body: body.replace(
            base64.b64encode(hashlib.sha256(b"head").digest()).decode(),
            base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
        ),  # head hash
        lambda body: body[:-1] + "\nextension line\n",  # an added line
    ],
    ids=["size", "size-leading-zero", "origin", "hash", "extra-line"],
)
def test_verify_rejects_altered_body(tamper: Any) -> None:
    signer = _signer()
    note = signer.sign(_cp())
    body, sig = note.split("\n\n")
    altered = tamper(body + "\n")[:-1] + "\n\n" + sig
    assert altered != note
    with pytest.raises(CheckpointError):
        CheckpointVerifier([signer.verifier_key()]).verify(altered, origin=ORIGIN)


def test_verify_rejects_a_foreign_origin_even_if_signed() -> None:
    signer = _signer()
    note = signer.sign(Checkpoint("other/log", 42, hashlib.sha256(b"head").digest()))
    with pytest.raises(CheckpointError, match="origin"):
        CheckpointVerifier([signer.verifier_key()]).verify(note, origin=ORIGIN)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace("\n\n", "\n"),  # no blank line: no signature block
        lambda n: n.split("\n\n")[0] + "\n\n",  # no signature line at all
        lambda n: n.replace("\u2014 ", "- "),  # ASCII dash instead of the em dash
        lambda n: n.replace("\u2014 jit-broker ", "\u2014 jit-broker !!!"),  # bad base64
        lambda n: n.split("\n", 1)[1],  # missing origin line
        lambda n: n.replace("\n42\n", "\n-42\n"),
        lambda n: n.replace("\n42\n", "\nforty-two\n"),
        lambda n: n.replace("\n42\n", "\n0\n"),
        lambda n: "",
        lambda n: "\n\n",
    ],
    ids=[
        "no-blank-line",
        "no-signature",
        "ascii-dash",
        "bad-base64",
        "no-origin",
        "negative-size",
        "text-size",
        "zero-size",
        "empty",
        "blank",
    ],
)
def test_verify_rejects_malformed_notes(mangle: Any) -> None:
    signer = _signer()
    note = mangle(signer.sign(_cp()))
    with pytest.raises(CheckpointError):
        CheckpointVerifier([signer.verifier_key()]).verify(note, origin=ORIGIN)


def test_verify_rejects_a_short_head_hash() -> None:
    signer = _signer()
    note = signer.sign(Checkpoint(ORIGIN, 3, b"\x01" * 16))
    with pytest.raises(CheckpointError):
        CheckpointVerifier([signer.verifier_key()]).verify(note, origin=ORIGIN)


def test_key_rotation_accepts_either_key() -> None:
    old, new = _signer("jit-broker"), _signer("jit-broker")
    verifier = CheckpointVerifier([old.verifier_key(), new.verifier_key()])
    assert verifier.verify(old.sign(_cp(10)), origin=ORIGIN).size == 10
    assert verifier.verify(new.sign(_cp(20)), origin=ORIGIN).size == 20
    # A note cosigned by an untrusted key plus a trusted one verifies (extra lines ignored).
    other = _signer("witness.example")
    cosigned = new.sign(_cp(30)) + other.sign(_cp(30)).split("\n\n")[1]
    assert verifier.verify(cosigned, origin=ORIGIN).size == 30
    # Once the old key is retired, its notes are refused.
    with pytest.raises(CheckpointError):
        CheckpointVerifier([new.verifier_key()]).verify(old.sign(_cp(10)), origin=ORIGIN)


def test_verifier_requires_a_key_and_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        CheckpointVerifier([])
    good = _signer().verifier_key()
    name, key_hash, blob = good.split("+", 2)
    for bad in (
        f"{name}+{'0' * 8}+{blob}",  # hash does not match
        f"other+{key_hash}+{blob}",  # name does not match the hash
        f"{name}+{key_hash}+AA==",  # not a 0x01 || 32-byte key
        f"{name}+{key_hash}",
        "garbage",
    ):
        with pytest.raises(CheckpointError):
            parse_verifier_key(bad)


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\tname"])
def test_signer_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        _signer(name)


# --- C2SP signed-note compatibility ---------------------------------------------------------

# golang.org/x/mod/sumdb/note, note_test.go / package doc: the reference key and note.
_GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
_GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
_GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
_GO_SIG = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)


def _spec_key_hash(name: str, public_raw: bytes) -> bytes:
    # signed-note: key ID = SHA-256(key name || 0x0A || signature type || public key)[:4],
    # signature type 0x01 for Ed25519.
    return hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + public_raw).digest()[:4]


def _go_seed() -> bytes:
    raw = base64.b64decode(_GO_SKEY.split("+", 4)[4])
    assert raw[0] == 1 and len(raw) == 33
    return raw[1:]


def test_key_hash_matches_the_spec() -> None:
    signer = _signer("example.com/log")
    public = base64.b64decode(signer.verifier_key().split("+", 2)[2])
    assert public[0] == 1 and len(public) == 33
    expected = _spec_key_hash("example.com/log", public[1:])
    assert signer.key_id == f"example.com/log+{expected.hex()}"
    # The signature line carries the same 4-byte key hash, then the 64-byte signature.
    sig_line = signer.sign(_cp()).split("\n\n")[1].strip()
    raw = base64.b64decode(sig_line.split(" ")[2])
    assert raw[:4] == expected and len(raw) == 68


def test_go_reference_vector() -> None:
    signer = _signer("PeterNeumann", _go_seed())
    # Our verifier-key string is byte-for-byte the Go one.
    assert signer.verifier_key() == _GO_VKEY
    assert signer.key_id == "PeterNeumann+c74f20a3"
    public = base64.b64decode(_GO_VKEY.split("+", 2)[2])[1:]
    assert _spec_key_hash("PeterNeumann", public).hex() == "c74f20a3"
    assert parse_verifier_key(_GO_VKEY).key_hash.hex() == "c74f20a3"
    # Ed25519 is deterministic: the same key over the same text gives Go's signature.
    private = Ed25519PrivateKey.from_private_bytes(_go_seed())
    raw = base64.b64decode(_GO_SIG)
    assert raw[:4].hex() == "c74f20a3"
    assert private.sign(_GO_TEXT.encode()) == raw[4:]


def test_note_layout_matches_the_spec() -> None:
    signer = _signer("PeterNeumann", _go_seed())
    cp = _cp(7)
    note = signer.sign(cp)
    body = cp.body()
    # text (ending in newline) + blank line + "— name base64(keyhash||sig)\n"
    private = Ed25519PrivateKey.from_private_bytes(_go_seed())
    blob = base64.b64encode(bytes.fromhex("c74f20a3") + private.sign(body.encode())).decode()
    assert note == f"{body}\n\u2014 PeterNeumann {blob}\n"
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert _GO_VKEY.endswith(base64.b64encode(b"\x01" + public).decode())
