"""broker.ssh's pure parts against OpenSSH's own tools: keys, certificates, KRLs.

No broker and no server: keys and certificates are made by ``ssh-keygen`` in a temporary
directory, and what the parsers read is compared with what ``ssh-keygen -l``/``-L``
prints; KRLs are checked with ``ssh-keygen -Q`` (exit 0 "ok", 1 "REVOKED", 255 when the
KRL cannot be read) and compared byte for byte with the KRLs ``ssh-keygen -k`` writes.
"""

from __future__ import annotations

import base64
import random
import struct
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from broker.errors import BadRequest
from broker.ssh import (
    CertificateInfo,
    InvalidCertificate,
    build_krl,
    parse_certificate,
    parse_public_key,
)
from broker.ssh.keys import MAX_PUBLIC_KEY_CHARS
from tests.support.sshd import SSH_KEYGEN, generate_key, openssh_bin, sign_user_key

MARKER = "ZQXJ-marker-do-not-echo-7731"

# name -> (ssh-keygen -t, -b, OpenSSH type, bits)
KEY_KINDS = {
    "ed25519": ("ed25519", 0, "ssh-ed25519", 256),
    "ecdsa256": ("ecdsa", 256, "ecdsa-sha2-nistp256", 256),
    "ecdsa384": ("ecdsa", 384, "ecdsa-sha2-nistp384", 384),
    "ecdsa521": ("ecdsa", 521, "ecdsa-sha2-nistp521", 521),
    "rsa3072": ("rsa", 3072, "ssh-rsa", 3072),
}


@dataclass(frozen=True)
class Keys:
    dir: Path

    def pub(self, name: str) -> str:
        return (self.dir / f"{name}.pub").read_text()

    def path(self, name: str) -> Path:
        return self.dir / name

    def cert(self, ca: str, key: str, label: str, **kwargs: Any) -> Path:
        """A certificate of ``ca`` for key ``key``, signed on a copy ``<label>.pub`` of
        its public half, so each certificate has a file of its own."""
        copy = self.dir / "certs" / f"{label}.pub"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(self.pub(key))
        kwargs.setdefault("key_id", label)
        kwargs.setdefault("principals", ["p"])
        return sign_user_key(self.path(ca), copy, **kwargs)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """One key of each kind, RSA-2048 and DSA to refuse, FIDO public keys built by hand
    (no token needed: only their public half is used), and two CAs."""
    directory = tmp_path_factory.mktemp("ssh-keys")
    for name, (key_type, bits, _, _) in KEY_KINDS.items():
        generate_key(directory, name, key_type, bits)
    generate_key(directory, "rsa2048", "rsa", 2048)
    generate_key(directory, "dsa", "dsa", 1024)
    generate_key(directory, "ca")
    generate_key(directory, "ca_rsa", "rsa", 3072)
    generate_key(directory, "other_ca")
    ed_blob = _blob(directory / "ed25519.pub")
    ed_point = _strings(ed_blob)[1]
    _write_pub(directory / "sk_ed25519.pub", "sk-ssh-ed25519@openssh.com", ed_point, b"ssh:")
    curve, point = _strings(_blob(directory / "ecdsa256.pub"))[1:]
    _write_pub(
        directory / "sk_ecdsa.pub", "sk-ecdsa-sha2-nistp256@openssh.com", curve, point, b"ssh:"
    )
    return Keys(directory)


def _sshstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _strings(blob: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(blob):
        (length,) = struct.unpack_from(">I", blob, offset)
        out.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return out


def _blob(pub: Path) -> bytes:
    return base64.b64decode(pub.read_text().split()[1])


def _line(key_type: str, blob: bytes, comment: str = "") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}".strip()


def _write_pub(path: Path, key_type: str, *fields: bytes) -> None:
    blob = _sshstr(key_type.encode()) + b"".join(_sshstr(f) for f in fields)
    path.write_text(_line(key_type, blob, "fido-key") + "\n")


def _keygen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(openssh_bin(SSH_KEYGEN)), *map(str, args)],
        capture_output=True,
        text=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def _keygen_fingerprint(path: Path) -> tuple[int, str]:
    """``ssh-keygen -lf``: bits and SHA256 fingerprint."""
    run = _keygen("-l", "-f", path)
    assert run.returncode == 0, run.stderr
    bits, fp = run.stdout.split()[:2]
    return int(bits), fp


# --- public keys ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [*KEY_KINDS, "sk_ed25519", "sk_ecdsa"])
def test_accepts_keys_with_ssh_keygens_fingerprint(keys: Keys, name: str) -> None:
    text = keys.pub(name)
    key = parse_public_key(f"  {text}\n\n")
    bits, fp = _keygen_fingerprint(keys.path(f"{name}.pub"))
    assert key.fingerprint == fp
    assert key.bits == bits
    assert key.openssh == " ".join(text.split()[:2])  # the comment is dropped
    expected_type = KEY_KINDS[name][2] if name in KEY_KINDS else text.split()[0]
    assert key.algorithm == expected_type
    assert parse_public_key(key.openssh) == key


def test_rsa_minimum_is_the_callers(keys: Keys) -> None:
    assert parse_public_key(keys.pub("rsa2048"), min_rsa_bits=2048).bits == 2048
    with pytest.raises(BadRequest) as raised:
        parse_public_key(keys.pub("rsa3072"), min_rsa_bits=4096)
    assert raised.value.code == "key_too_small"
    assert "4096" in raised.value.message


def test_padded_rsa_integers_are_fingerprinted_as_openssh_re_encodes_them(keys: Keys) -> None:
    """An extra leading zero byte in an mpint: OpenSSH accepts it and fingerprints the
    re-encoded key, so must we (sshd's log would otherwise show another fingerprint)."""
    key_type, e, n = _strings(_blob(keys.path("rsa3072.pub")))
    padded = _line("ssh-rsa", _sshstr(key_type) + _sshstr(b"\0" + e) + _sshstr(n))
    key = parse_public_key(padded)
    assert key.fingerprint == _keygen_fingerprint(keys.path("rsa3072.pub"))[1]
    assert key.openssh == " ".join(keys.pub("rsa3072").split()[:2])


def _private_pem_pkcs8() -> str:
    private = ed25519.Ed25519PrivateKey.generate()
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _private_pem_rsa() -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()


def _private_ec_sec1() -> str:
    private = ec.generate_private_key(ec.SECP256R1())
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


_PUTTY = (
    "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: {marker}\n"
    "Public-Lines: 2\nAAAAC3NzaC1lZDI1NTE5AAAAIHdU8qdW7/lWwKHkdnpPDxRQDVi1AqOrlaR8yJlsWzVn\n"
    "Private-Lines: 1\nAAAAIBGkM1e1tYTzqT1sM5Gz6m4YJ5v3bx1tO5Q8xQh4e6uS\n"
    "Private-MAC: 2d3f0f3a\n"
)


@pytest.fixture(scope="module")
def refusals(keys: Keys) -> dict[str, tuple[str, str]]:
    """case -> (input text containing MARKER, expected code)."""
    ed = keys.pub("ed25519").split()
    ed_blob = _blob(keys.path("ed25519.pub"))
    ecdsa_blob = bytearray(_blob(keys.path("ecdsa256.pub")))
    ecdsa_blob[-5] ^= 0x01  # the point is no longer on the curve
    openssh_private = keys.path("ed25519").read_text()
    armourless = "".join(line for line in openssh_private.splitlines() if "-----" not in line)
    cert = keys.cert("ca", "ed25519", "refused")
    unknown = _sshstr(b"ssh-unknown@example.com") + _sshstr(b"x" * 32)
    return {
        "openssh private key": (f"{openssh_private}{MARKER}\n", "private_key_refused"),
        "openssh private key body without armour": (
            f"{armourless} {MARKER}",
            "private_key_refused",
        ),
        "pkcs8 pem": (_private_pem_pkcs8() + MARKER, "private_key_refused"),
        "encrypted rsa pem": (MARKER + "\n" + _private_pem_rsa(), "private_key_refused"),
        "ec pem": (_private_ec_sec1() + MARKER, "private_key_refused"),
        "putty": (_PUTTY.format(marker=MARKER), "private_key_refused"),
        "private key after a public key": (
            f"{keys.pub('ed25519')}{openssh_private}{MARKER}",
            "private_key_refused",
        ),
        "garbage": (f"hello {MARKER}", "invalid_public_key"),
        "only a marker": (MARKER, "invalid_public_key"),
        "empty": ("   \n", "invalid_public_key"),
        "two lines": (
            f"{keys.pub('ed25519').strip()} {MARKER}\n{keys.pub('ecdsa256')}",
            "invalid_public_key",
        ),
        "two keys on one line": (
            f"{ed[0]} {ed[1]} {MARKER} {keys.pub('ecdsa256')}",
            "invalid_public_key",
        ),
        "too long": (f"{ed[0]} {ed[1]} {MARKER}{'x' * MAX_PUBLIC_KEY_CHARS}", "invalid_public_key"),
        "type does not match blob": (f"ssh-rsa {ed[1]} {MARKER}", "invalid_public_key"),
        "truncated blob": (_line("ssh-ed25519", ed_blob[:-3], MARKER), "invalid_public_key"),
        "trailing bytes": (_line("ssh-ed25519", ed_blob + b"\0", MARKER), "invalid_public_key"),
        "not base64": (f"ssh-ed25519 {MARKER}== c", "invalid_public_key"),
        "point off the curve": (
            _line("ecdsa-sha2-nistp256", bytes(ecdsa_blob), MARKER),
            "invalid_public_key",
        ),
        "authorized_keys options": (
            f'from="10.0.0.1",no-pty {ed[0]} {ed[1]} {MARKER}',
            "invalid_public_key",
        ),
        "rfc4716": (
            f"---- BEGIN SSH2 PUBLIC KEY ----\nComment: {MARKER}\n{ed[1]}\n"
            "---- END SSH2 PUBLIC KEY ----\n",
            "invalid_public_key",
        ),
        "dsa": (f"{' '.join(keys.pub('dsa').split()[:2])} {MARKER}", "key_type_not_allowed"),
        "certificate": (
            f"{' '.join(cert.read_text().split()[:2])} {MARKER}",
            "key_type_not_allowed",
        ),
        "unknown type": (
            _line("ssh-unknown@example.com", unknown, MARKER),
            "key_type_not_allowed",
        ),
        "rsa 2048": (
            f"{' '.join(keys.pub('rsa2048').split()[:2])} {MARKER}",
            "key_too_small",
        ),
    }


_REFUSAL_CASES = [
    "openssh private key",
    "openssh private key body without armour",
    "pkcs8 pem",
    "encrypted rsa pem",
    "ec pem",
    "putty",
    "private key after a public key",
    "garbage",
    "only a marker",
    "empty",
    "two lines",
    "two keys on one line",
    "too long",
    "type does not match blob",
    "truncated blob",
    "trailing bytes",
    "not base64",
    "point off the curve",
    "authorized_keys options",
    "rfc4716",
    "dsa",
    "certificate",
    "unknown type",
    "rsa 2048",
]


@pytest.mark.parametrize("case", _REFUSAL_CASES)
def test_refuses_with_its_code_and_never_echoes_the_input(
    refusals: dict[str, tuple[str, str]], case: str
) -> None:
    text, code = refusals[case]
    assert MARKER in text or case == "empty"
    with pytest.raises(BadRequest) as raised:
        parse_public_key(text)
    error = raised.value
    assert (error.code, error.status) == (code, 400), error.message
    for shown in (str(error), error.message, repr(error), repr(error.args)):
        assert MARKER not in shown
        # No line of a pasted private key either (each is unique to that key).
        for line in text.splitlines():
            if len(line) >= 20 and code == "private_key_refused":
                assert line not in shown
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_refusal_cases_are_all_run(refusals: dict[str, tuple[str, str]]) -> None:
    assert sorted(_REFUSAL_CASES) == sorted(refusals)


def test_private_key_message_says_what_happened(keys: Keys) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_public_key(keys.path("ed25519").read_text())
    message = raised.value.message
    assert "PRIVATE key" in message
    assert "compromised" in message


def test_a_comment_mentioning_a_key_type_is_still_one_key(keys: Keys) -> None:
    ed = keys.pub("ed25519").split()
    key = parse_public_key(f"{ed[0]} {ed[1]} my ssh-rsa replacement, private laptop")
    assert key.openssh == f"{ed[0]} {ed[1]}"


# --- certificates ---------------------------------------------------------------------


def _keygen_cert_listing(cert: Path) -> dict[str, str | list[str]]:
    """``ssh-keygen -L`` (in UTC) as ``{field: value or [indented lines]}``."""
    run = _keygen("-L", "-f", cert)
    assert run.returncode == 0, run.stderr
    fields: dict[str, str | list[str]] = {}
    current = ""
    for line in run.stdout.splitlines()[1:]:
        if line.startswith(" " * 16):
            value = fields[current]
            assert isinstance(value, list)
            value.append(line.strip())
        else:
            current, _, rest = line.strip().partition(":")
            fields[current] = rest.strip() or []
    return fields


def test_parses_a_certificate_as_ssh_keygen_lists_it(keys: Keys) -> None:
    before = datetime.now(UTC)
    cert = keys.cert(
        "ca", "ed25519", "user", key_id="keyid", principals=["p1", "p2"], validity="+5m", serial=42
    )
    info = parse_certificate(cert.read_text())
    listing = _keygen_cert_listing(cert)

    assert info.serial == 42 == int(str(listing["Serial"]))
    assert info.key_id == "keyid"
    assert listing["Key ID"] == '"keyid"'
    assert info.principals == ("p1", "p2") == tuple(listing["Principals"])
    valid = str(listing["Valid"]).split()  # from <after> to <before>, local time = UTC
    assert info.valid_after == datetime.fromisoformat(valid[1]).replace(tzinfo=UTC)
    assert info.valid_before == datetime.fromisoformat(valid[3]).replace(tzinfo=UTC)
    assert info.valid_after <= before
    assert before + timedelta(minutes=4) < info.valid_before <= before + timedelta(minutes=6)
    assert info.valid_after.tzinfo is UTC
    assert info.key_fingerprint == str(listing["Public key"]).split()[1]
    assert info.key_fingerprint == parse_public_key(keys.pub("ed25519")).fingerprint
    assert info.ca_fingerprint == str(listing["Signing CA"]).split()[1]
    assert info.ca_fingerprint == _keygen_fingerprint(keys.path("ca.pub"))[1]
    assert info.extensions == tuple(listing["Extensions"])
    assert "permit-pty" in info.extensions
    assert info.critical_options == {}


def test_critical_options_and_extensions_are_read_back(keys: Keys) -> None:
    cert = keys.cert(
        "ca",
        "ed25519",
        "with-options",
        principals=["deploy"],
        options=["clear", "permit-pty", "source-address=10.0.0.0/8,192.0.2.1"],
    )
    info = parse_certificate(cert.read_text())
    assert info.extensions == ("permit-pty",)
    assert info.critical_options == {"source-address": "10.0.0.0/8,192.0.2.1"}


@pytest.mark.parametrize(
    ("name", "ca"),
    [
        ("ecdsa384", "ca"),
        ("ecdsa521", "ca_rsa"),
        ("rsa3072", "ca_rsa"),
        ("ecdsa256", "ca"),
        ("sk_ed25519", "ca"),
        ("sk_ecdsa", "ca_rsa"),
    ],
)
def test_certificates_of_every_key_type(keys: Keys, name: str, ca: str) -> None:
    cert = keys.cert(ca, name, f"{name}-by-{ca}", key_id=name)
    info = parse_certificate(cert.read_text())
    assert info.key_id == name
    assert info.key_fingerprint == parse_public_key(keys.pub(name)).fingerprint
    assert info.key_fingerprint == str(_keygen_cert_listing(cert)["Public key"]).split()[1]
    assert info.ca_fingerprint == _keygen_fingerprint(keys.path(f"{ca}.pub"))[1]


@pytest.mark.parametrize("algorithm", ["rsa-sha2-256", "rsa-sha2-512", "ssh-rsa"])
def test_rsa_ca_signatures_openssh_accepts(keys: Keys, algorithm: str) -> None:
    """ssh-rsa (SHA-1) signatures are refused by OpenSSH 8.8+ hosts, so they are refused
    here rather than handed out as certificates that cannot log in anywhere."""
    pub = keys.path(f"certs/sig-{algorithm}.pub")
    pub.parent.mkdir(exist_ok=True)
    pub.write_text(keys.pub("ed25519"))
    run = _keygen("-q", "-s", keys.path("ca_rsa"), "-t", algorithm, "-I", "x", "-n", "p", pub)
    assert run.returncode == 0, run.stderr
    text = pub.with_name(f"sig-{algorithm}-cert.pub").read_text()
    assert (
        f"(using {algorithm})"
        in _keygen("-L", "-f", pub.with_name(f"sig-{algorithm}-cert.pub")).stdout
    )
    if algorithm == "ssh-rsa":
        with pytest.raises(InvalidCertificate, match="SHA-1"):
            parse_certificate(text)
    else:
        assert parse_certificate(text).key_id == "x"


def test_forever_and_always_read_as_the_datetime_bounds(keys: Keys) -> None:
    cert = keys.cert("ca", "ed25519", "forever", validity="always:forever")
    info = parse_certificate(cert.read_text())
    assert info.valid_after == datetime(1970, 1, 1, tzinfo=UTC)
    assert info.valid_before == datetime.max.replace(tzinfo=UTC)


def test_refuses_what_is_not_a_user_certificate(keys: Keys) -> None:
    user_cert = keys.cert("ca", "ecdsa256", "to-tamper").read_text()
    kind, body = user_cert.split()[:2]
    blob = bytearray(base64.b64decode(body))
    blob[-10] ^= 0x01  # inside the signature
    host_pub = keys.path("certs/host.pub")
    host_pub.write_text(keys.pub("ecdsa256"))
    host = _keygen("-q", "-s", keys.path("ca"), "-I", "h", "-h", "-n", "host", host_pub)
    assert host.returncode == 0, host.stderr
    host_cert = keys.path("certs/host-cert.pub").read_text()
    refused = {
        "plain key": keys.pub("ed25519"),
        "garbage": "ssh-ed25519-cert-v01@openssh.com !!!",
        "host certificate": host_cert,
        "bad signature": f"{kind} {base64.b64encode(bytes(blob)).decode()}",
        "two lines": user_cert + user_cert,
        "empty": "",
        "dsa": _line("ssh-dss-cert-v01@openssh.com", _sshstr(b"ssh-dss-cert-v01@openssh.com")),
    }
    for case, text in refused.items():
        with pytest.raises(InvalidCertificate):
            parse_certificate(text)
            pytest.fail(f"accepted: {case}")
    assert parse_certificate(user_cert).key_id == "to-tamper"  # the untampered original


def test_certificate_info_is_frozen(keys: Keys) -> None:
    cert = keys.cert("ca", "ed25519", "frozen")
    info = parse_certificate(cert.read_text())
    assert isinstance(info, CertificateInfo)
    with pytest.raises(AttributeError):
        info.serial = 1  # type: ignore[misc]


# --- key revocation lists -------------------------------------------------------------

NOW = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)


def _query(krl: Path, cert: Path) -> tuple[int, str]:
    """``ssh-keygen -Q``: (exit code, "ok"/"REVOKED"/error)."""
    run = _keygen("-Q", "-f", krl, cert)
    if run.returncode in (0, 1) and run.stdout:
        return run.returncode, run.stdout.rsplit(":", 1)[1].strip()
    return run.returncode, run.stderr.strip()


@pytest.fixture(scope="module")
def certs(keys: Keys) -> dict[str, Path]:
    """Certificates of ``ca`` (serials 42, 43, 44), and serial 42 of another CA."""
    made = {}
    for name, key, key_id, serial, ca in [
        ("alice", "ed25519", "alice-grant", 42, "ca"),
        ("bob", "ecdsa256", "bob-grant", 43, "ca"),
        ("carol", "rsa3072", "carol-grant", 44, "ca"),
        ("other", "ecdsa384", "alice-grant", 42, "other_ca"),
        ("rsa_ca", "ecdsa521", "dave-grant", 42, "ca_rsa"),
    ]:
        made[name] = keys.cert(ca, key, f"krl-{name}", key_id=key_id, serial=serial)
    return made


def test_krl_revokes_by_serial_and_key_id_of_its_ca(
    keys: Keys, certs: dict[str, Path], tmp_path: Path
) -> None:
    krl = tmp_path / "krl"
    krl.write_bytes(
        build_krl(
            keys.pub("ca"),
            serials=[42],
            key_ids=["bob-grant"],
            version=7,
            generated_at=NOW,
            comment="broker",
        )
    )
    assert _query(krl, certs["alice"]) == (1, "REVOKED")  # serial 42
    assert _query(krl, certs["bob"]) == (1, "REVOKED")  # key id
    assert _query(krl, certs["carol"]) == (0, "ok")
    # Serial 42 and key id "alice-grant" of another CA are not this KRL's business.
    assert _query(krl, certs["other"]) == (0, "ok")

    listing = _keygen("-Q", "-l", "-f", krl)
    assert listing.returncode == 0, listing.stderr
    assert "# KRL version 7" in listing.stdout
    assert "# Generated at 20260504T030201" in listing.stdout
    assert "# Comment: broker" in listing.stdout
    ca_fp = _keygen_fingerprint(keys.path("ca.pub"))[1]
    assert f"# CA key ssh-ed25519 {ca_fp}\nserial: 42\nid: bob-grant\n" in listing.stdout


def test_krl_of_an_rsa_ca(keys: Keys, certs: dict[str, Path], tmp_path: Path) -> None:
    krl = tmp_path / "krl"
    krl.write_bytes(build_krl(keys.pub("ca_rsa"), serials=[42], version=1, generated_at=NOW))
    assert _query(krl, certs["rsa_ca"]) == (1, "REVOKED")
    assert _query(krl, certs["alice"]) == (0, "ok")


def test_empty_krl_revokes_nothing_and_equals_ssh_keygens(
    keys: Keys, certs: dict[str, Path], tmp_path: Path
) -> None:
    ours = tmp_path / "ours"
    ours.write_bytes(build_krl(keys.pub("ca"), serials=[], version=0, generated_at=NOW))
    for cert in certs.values():
        assert _query(ours, cert) == (0, "ok")
    reference = tmp_path / "reference"
    run = _keygen("-k", "-f", reference)
    assert run.returncode == 0, run.stderr
    assert _same_but_date(ours.read_bytes(), reference.read_bytes())


def test_krl_is_byte_for_byte_what_ssh_keygen_writes(keys: Keys, tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.write_text("serial: 42\nid: bob-grant\nid: carol grant with spaces\n")
    reference = tmp_path / "reference"
    run = _keygen("-k", "-z", "3", "-s", keys.path("ca.pub"), "-f", reference, spec)
    assert run.returncode == 0, run.stderr
    ours = build_krl(
        keys.pub("ca"),
        serials=[42],
        key_ids=["carol grant with spaces", "bob-grant"],
        version=3,
        generated_at=NOW,
    )
    assert _same_but_date(ours, reference.read_bytes())


def _same_but_date(ours: bytes, reference: bytes) -> bool:
    date = slice(20, 28)  # magic 8, format 4, version 8, then the generated date
    assert ours[:8] == b"SSHKRL\n\0"
    return (
        ours[: date.start] + ours[date.stop :] == reference[: date.start] + reference[date.stop :]
    )


def test_krl_is_deterministic(keys: Keys) -> None:
    serials = [5, 42, 7, 2**64 - 1, 42, 1]
    ids = ["b", "a", "b", "ü"]
    first = build_krl(keys.pub("ca"), serials=serials, key_ids=ids, version=1, generated_at=NOW)
    random.shuffle(serials)
    random.shuffle(ids)
    again = build_krl(
        keys.pub("ca"), serials=iter(serials), key_ids=iter(ids), version=1, generated_at=NOW
    )
    assert first == again


def test_serial_zero_would_break_every_host_so_it_is_refused(
    keys: Keys, certs: dict[str, Path], tmp_path: Path
) -> None:
    """OpenSSH cannot load a KRL revoking serial 0, and sshd then refuses every key."""
    good = build_krl(keys.pub("ca"), serials=[42], version=1, generated_at=NOW)
    patched = good.replace(struct.pack(">Q", 42), struct.pack(">Q", 0))
    assert patched != good
    krl = tmp_path / "krl"
    krl.write_bytes(patched)
    code, message = _query(krl, certs["carol"])
    assert code == 255 and "Invalid KRL" in message
    with pytest.raises(ValueError, match="serial 0"):
        build_krl(keys.pub("ca"), serials=[0], version=1, generated_at=NOW)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"serials": [-1]}, "outside"),
        ({"serials": [2**64]}, "outside"),
        ({"serials": [True]}, "integer"),
        ({"serials": ["42"]}, "integer"),
        ({"key_ids": [""]}, "empty key id"),
        ({"key_ids": ["a\0b"]}, "NUL"),
        ({"key_ids": ["\ud800"]}, "UTF-8"),
        ({"comment": "a\0"}, "NUL"),
        ({"version": -1}, "version"),
        ({"version": 2**64}, "version"),
        ({"generated_at": datetime(2026, 1, 1)}, "timezone"),
        ({"generated_at": datetime(1969, 1, 1, tzinfo=UTC)}, "generated_at"),
    ],
)
def test_krl_refuses_what_openssh_would_reject(
    keys: Keys, arguments: dict[str, object], message: str
) -> None:
    kwargs: dict[str, object] = {"serials": [1], "version": 1, "generated_at": NOW}
    kwargs.update(arguments)
    with pytest.raises(ValueError, match=message):
        build_krl(keys.pub("ca"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("ca", ["garbage", "empty", "dsa", "certificate", "private"])
def test_krl_needs_a_usable_ca_key(keys: Keys, certs: dict[str, Path], ca: str) -> None:
    text = {
        "garbage": "not a key",
        "empty": "",
        "dsa": keys.pub("dsa"),
        "certificate": certs["alice"].read_text(),
        "private": keys.path("ca").read_text(),
    }[ca]
    with pytest.raises(ValueError, match="CA public key"):
        build_krl(text, serials=[1], version=1, generated_at=NOW)
