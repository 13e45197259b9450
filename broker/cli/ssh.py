"""``broker ssh``: a shell on a host with a just-in-time SSH certificate, like ``tsh ssh``.

  broker ssh [--secret S] [--principal NAME ...] [--ttl D] [--reason T] [--ticket T]
             [-p PORT] [-o OPTION ...] [--ssh PATH]
             [--request-root --reason T [--ticket T] [--wait D] | --elevation ID [--wait D]]
             [user@]host [-- command ...]

In order:

1. The ssh program: ``--ssh``, else ``ssh`` on ``PATH``, else ``/usr/bin/ssh``. Without
   one nothing is asked of the broker (no grant is ledgered for a login that cannot run).
2. A new Ed25519 key pair, in this process's memory.
3. Its certificate: ``POST /v1/credentials`` with the public key and ``--principal``
   (none given: all the role allows). With ``--request-root``, an elevation for the
   principal ``root`` is requested first (``POST /v1/elevations``), its ID and the
   approver's command printed, and polled until approved; ``--elevation ID`` starts at
   the polling. The approved elevation is redeemed with the public key
   (``POST /v1/elevations/{id}/credentials``). Waiting ends after ``--wait`` (default
   ten minutes), or when the request is denied, cancelled or expires: exit 1 with why.
   Waiting that ends (or Ctrl-C) leaves the request open, with the command to resume.
4. The answer is checked: one OpenSSH *user* certificate, correctly signed, certifying
   this key. Anything else is refused (exit 1), nothing written.
5. A private directory (``mkdtemp``: 0700) with the private key (OpenSSH format) and the
   certificate, both 0600. ssh runs as ``ssh -i KEY -o CertificateFile=CERT -o
   IdentitiesOnly=yes -o IdentityAgent=none [-p PORT] [-o OPTION ...] [-l LOGIN] --
   [user@]host [command ...]``: ours first, since ssh keeps the first value it gets of
   each option; ``--`` so that nothing after it is read as an ssh option.
6. The directory is removed when ssh ends, however it ends: an error, Ctrl-C, SIGTERM or
   SIGHUP (passed on to ssh while it runs, and waited for).

The login: ``user@`` of the destination, or ``-o User=...``; else, when the certificate
names a single principal, that one (``-l``): ``--request-root`` logs in as root. With
several principals and no user given, ssh's own default applies.

Invariants: the private key exists in this process's memory and in that one file, for as
long as ssh runs; it is never sent to the broker, never logged, never printed. stdout is
ssh's alone: what this command says goes to stderr. A SIGKILL leaves the directory behind;
its certificate is dead at the end of its TTL all the same.

Exit codes: until ssh starts, those of every client command (``broker.cli._connection``:
1 refused, denied or not approved in time, 2 usage, 3 broker unreachable); then ssh's
(255 an ssh error, else the remote command's), 128+N when ssh ended by signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from broker.cli._connection import ID_HELP, ClientUsage, add_client_command, resolve_id
from broker.cli._output import cell, print_json, short, when
from broker.cli.client import BrokerClient, BrokerHTTPError
from broker.cli.elevations import pending_summary

__all__ = ["DEFAULT_SECRET", "DEFAULT_WAIT_SECONDS", "register"]

DEFAULT_SECRET = "ssh/prod-hosts"  # noqa: S105 - a catalog entry's name, not a password
# How long --request-root and --elevation wait for an approver before giving up.
DEFAULT_WAIT_SECONDS = 600
_POLL_SECONDS = 2.0  # between looks at a pending elevation
_SYSTEM_SSH = "/usr/bin/ssh"
_ROOT = "root"
_FOREVER = datetime.max.replace(tzinfo=UTC)  # how broker.ssh reads OpenSSH's "forever"
# ssh expands %, ~ and ${...} in key file names and splits -o values on blanks: the
# directory's path is used only when it needs none of that.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/+,:@-]+")
_USER_OPTION = re.compile(r"\s*user\s*[=\s]", re.IGNORECASE)
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_KEY_FILE = "id_ed25519"
_CERT_FILE = "id_ed25519-cert.pub"


class _Stopped(Exception):
    """The command ends before ssh runs, for the reason given (exit 1)."""


@dataclass(frozen=True)
class _Certificate:
    """The signed certificate, as read from the certificate itself."""

    line: str  # the OpenSSH certificate line, as the -cert.pub file holds it
    key_id: str
    serial: int
    principals: tuple[str, ...]
    valid_before: datetime | None  # None: OpenSSH's "forever"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ssh_program(given: str | None) -> str:
    """The ssh to run: ``--ssh``, else ``ssh`` on PATH, else ``/usr/bin/ssh``."""
    if given is not None:
        found = shutil.which(given)
        if found is None:
            raise ClientUsage(f"--ssh {given}: no executable program there")
        return found
    found = shutil.which("ssh") or shutil.which(_SYSTEM_SSH)
    if found is None:
        raise ClientUsage("no ssh program: install OpenSSH's client or pass --ssh PATH")
    return found


def _check_arguments(args: argparse.Namespace) -> None:
    if args.request_root:
        if not args.reason:
            raise ClientUsage("--request-root needs --reason (the approver reads it)")
        if args.principal and args.principal != [_ROOT]:
            raise ClientUsage("--request-root is for the principal root only: drop --principal")
    if args.destination.startswith("-"):
        raise ClientUsage(f"{args.destination!r} is not a host: options go before the host")
    # Checked before a certificate is asked for: mkdtemp adds only [a-z0-9_-] to it.
    temp = tempfile.gettempdir()
    if not _PLAIN_PATH.fullmatch(temp):
        raise ClientUsage(
            f"the temporary directory {temp!r} has characters ssh would expand:"
            " set TMPDIR to a plain path"
        )


# --- the certificate ---------------------------------------------------------------------


def _signed(client: BrokerClient, args: argparse.Namespace, public_key: str) -> dict[str, Any]:
    """The grant carrying the certificate for ``public_key`` (step 3 of the docstring)."""
    if args.elevation is not None:
        eid = resolve_id(args.elevation, "elevation", client.list_elevations)
        el = _approved(client, eid, args)
        principals = args.principal or _strings(el.get("principals")) or None
        return client.redeem_elevation(
            eid, ttl=args.ttl, public_key=public_key, principals=principals
        )
    if args.request_root:
        el = client.request_elevation(
            args.secret, reason=args.reason, ticket=args.ticket, principals=[_ROOT]
        )
        if args.json:
            _print_json_stderr(el)
        if el.get("status") != "approved":
            _say(pending_summary(el))
        el = _approved(client, str(el["id"]), args)
        return client.redeem_elevation(
            str(el["id"]), ttl=args.ttl, public_key=public_key, principals=[_ROOT]
        )
    try:
        return client.issue_credentials(
            args.secret,
            ttl=args.ttl,
            reason=args.reason,
            ticket=args.ticket,
            public_key=public_key,
            principals=args.principal or None,
        )
    except BrokerHTTPError as e:
        if e.code != "elevation_required":
            raise
        if args.principal in ([], [_ROOT]):
            ask = f"broker ssh --request-root --reason TEXT {cell(args.destination)}"
        else:
            principals = " ".join(f"--principal {cell(p)}" for p in args.principal)
            ask = (
                f"broker elevations request {cell(args.secret)} {principals} --reason TEXT,"
                f" then once approved: broker ssh --elevation ID {cell(args.destination)}"
            )
        raise _Stopped(f"{e}\nask for it with: {ask}") from None


def _approved(client: BrokerClient, eid: str, args: argparse.Namespace) -> dict[str, Any]:
    """The elevation once approved, looked at every ``_POLL_SECONDS``. Raises ``_Stopped``
    when it was decided otherwise or is still pending after ``args.wait`` seconds."""
    from broker.durations import format_duration

    resume = f"broker ssh --elevation {short(eid)} {cell(args.destination)}"
    deadline = time.monotonic() + args.wait
    waiting = False
    try:
        while True:
            el = client.get_elevation(eid)
            status = el.get("status")
            if status == "approved":
                if waiting:
                    _say(f"elevation {short(eid)} approved{_approvers(el)}")
                return el
            if status != "pending":
                raise _Stopped(_not_approved(el))
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Stopped(
                    f"elevation {short(eid)} is still pending after {format_duration(args.wait)};"
                    f" once it is approved: {resume}"
                )
            if not waiting:
                _say(
                    f"waiting up to {format_duration(args.wait)} for the approval"
                    f" (Ctrl-C stops waiting; the request stays open: {resume})"
                )
                waiting = True
            time.sleep(min(_POLL_SECONDS, left))
    except KeyboardInterrupt:
        _say(f"stopped waiting; the request stays open: {resume}")
        raise


def _approvers(el: dict[str, Any]) -> str:
    names = [cell(v.get("approver")) for v in el.get("approvals") or [] if isinstance(v, dict)]
    return f" by {', '.join(names)}" if names else ""


def _not_approved(el: dict[str, Any]) -> str:
    """Why an elevation that is neither pending nor approved will not be."""
    text = f"elevation {short(el.get('id'))} is {cell(el.get('status'))}"
    closed = el.get("closed")
    if isinstance(closed, dict):
        if closed.get("by"):
            text += f" (by {cell(closed.get('by'))} at {when(closed.get('at'))})"
        note = closed.get("comment") or closed.get("why")
        if note:
            text += f": {cell(note)}"
    return text


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _certificate_of(grant: dict[str, Any], public_key: str) -> _Certificate:
    """The grant's certificate, checked (``broker.ssh.parse_certificate``): one OpenSSH
    user certificate, correctly signed, certifying ``public_key``. Raises ``_Stopped``
    otherwise."""
    from broker.ssh import InvalidCertificate, parse_certificate, parse_public_key

    credential = grant.get("credential")
    line = credential.get("signed_key") if isinstance(credential, dict) else None
    if not isinstance(line, str) or not line.strip():
        raise _Stopped(
            f"the broker's answer carries no SSH certificate (is {cell(grant.get('secret'))}"
            " an ssh secret?)"
        )
    try:
        info = parse_certificate(line)
    except InvalidCertificate as e:
        raise _Stopped(f"the broker's certificate is unusable: {e}") from None
    if info.key_fingerprint != parse_public_key(public_key).fingerprint:
        raise _Stopped("the broker's certificate is for another key")
    return _Certificate(
        line=line.strip(),
        key_id=info.key_id,
        serial=info.serial,
        principals=info.principals,
        valid_before=None if info.valid_before == _FOREVER else info.valid_before,
    )


# --- running ssh --------------------------------------------------------------------------


def _login(args: argparse.Namespace, cert: _Certificate) -> str | None:
    """The ``-l`` to add: the certificate's single principal, when no user was given."""
    if "@" in args.destination:
        user = args.destination.removeprefix("ssh://").rsplit("@", 1)[0]
        if user not in cert.principals:
            _say(
                f"note: the certificate does not name {cell(user)}: the host lets it in"
                f" only if its AuthorizedPrincipalsFile maps one of"
                f" {', '.join(cell(p) for p in cert.principals)} to {cell(user)}"
            )
        return None
    if any(_USER_OPTION.match(o) for o in args.option) or len(cert.principals) != 1:
        return None
    return cert.principals[0]


def _ssh_argv(
    ssh: str,
    key: Path,
    cert: Path,
    args: argparse.Namespace,
    login: str | None,
    command: list[str],
) -> list[str]:
    argv = [
        ssh,
        "-i",
        str(key),
        "-o",
        f"CertificateFile={cert}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
    ]
    if args.port is not None:
        argv += ["-p", str(args.port)]
    for option in args.option:
        argv += ["-o", option]
    if login is not None:
        argv += ["-l", login]
    return [*argv, "--", args.destination, *command]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(data)


@contextlib.contextmanager
def _key_files(private_key: bytes, cert: _Certificate) -> Iterator[tuple[Path, Path]]:
    """A private directory with the key and certificate files, removed on the way out."""
    directory = Path(tempfile.mkdtemp(prefix="broker-ssh-"))
    try:
        key, cert_file = directory / _KEY_FILE, directory / _CERT_FILE
        _write_private(key, private_key)
        _write_private(cert_file, (cert.line + "\n").encode())
        yield key, cert_file
    finally:
        try:
            shutil.rmtree(directory)
        except OSError as e:
            _say(f"warning: could not remove {directory} (it holds the private key): {e}")


@dataclass
class _Forwarder:
    """A handler for the signals that would end this process while ssh runs: passed on to
    ssh, or kept until it started, so the key files outlive it and are then removed."""

    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = field(default_factory=list)

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is None:
            self.pending.append(signum)
        else:
            self.child.send_signal(signum)


@contextlib.contextmanager
def _signals_forwarded() -> Iterator[_Forwarder]:
    forwarder = _Forwarder()
    previous = {s: signal.signal(s, forwarder) for s in _FORWARDED_SIGNALS}
    try:
        yield forwarder
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(argv: list[str], forwarder: _Forwarder) -> int:
    """ssh's exit code (128+N when signal N ended it); a signal that came while the files
    were written ends the command before ssh starts."""
    if forwarder.pending:
        return 128 + forwarder.pending[0]
    try:
        forwarder.child = subprocess.Popen(argv)
    except OSError as e:
        raise ClientUsage(f"cannot run {argv[0]}: {e.strerror or e}") from None
    for signum in forwarder.pending:
        forwarder.child.send_signal(signum)
    code = forwarder.child.wait()
    return code if code >= 0 else 128 - code


# --- the command --------------------------------------------------------------------------


def _ssh(client: BrokerClient, args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    # REMAINDER keeps a leading "--" on some Python versions and drops it on others.
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    ssh = _ssh_program(args.ssh)
    _check_arguments(args)
    key = Ed25519PrivateKey.generate()
    public_key = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    try:
        grant = _signed(client, args, public_key)
        cert = _certificate_of(grant, public_key)
    except _Stopped as e:
        _say(f"error: {e}")
        return 1
    if args.json:
        _print_json_stderr(grant)
    else:
        expires = when(cert.valid_before.isoformat()) if cert.valid_before else "never"
        principals = ", ".join(cell(p) for p in cert.principals) or "-"
        _say(
            f"grant {cell(grant.get('id'))}: principals {principals};"
            f" certificate {cert.serial} expires {expires} (key id {cell(cert.key_id)})"
        )
    login = _login(args, cert)
    private_key = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    with _signals_forwarded() as forwarder, _key_files(private_key, cert) as (key_file, cert_file):
        return _run(_ssh_argv(ssh, key_file, cert_file, args, login, command), forwarder)


def _print_json_stderr(data: Any) -> None:
    """``--json``: the broker's answer, on stderr (stdout is ssh's)."""
    with contextlib.redirect_stdout(sys.stderr):
        print_json(data)


def _wait_seconds(text: str) -> int:
    from broker.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def register(sub: Any) -> None:
    """Add ``ssh`` to the top-level subparsers."""
    p = add_client_command(sub, "ssh", _ssh, "log in to a host with a just-in-time SSH certificate")
    p.add_argument(
        "--secret", default=DEFAULT_SECRET, help=f"the ssh secret (default {DEFAULT_SECRET})"
    )
    p.add_argument(
        "--principal",
        action="append",
        default=[],
        metavar="NAME",
        help="a principal to ask for; repeat for more (default: all the role allows)",
    )
    p.add_argument("--ttl", help="certificate lifetime, e.g. 15m (default: the role's)")
    p.add_argument("--reason", help="why (ledgered; required with --request-root)")
    p.add_argument("--ticket", help="e.g. INC-123")
    p.add_argument("-p", dest="port", type=_port, metavar="PORT", help="the host's ssh port")
    p.add_argument(
        "-o",
        dest="option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an ssh option (ssh -o); repeat for more",
    )
    p.add_argument("--ssh", metavar="PATH", help="the ssh program (default: ssh on PATH)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--request-root",
        action="store_true",
        help="request an elevation for the principal root, wait for its approval, log in",
    )
    how.add_argument("--elevation", metavar="ID", help=f"an approved elevation's {ID_HELP}")
    p.add_argument(
        "--wait",
        type=_wait_seconds,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the approval, e.g. 300 or 5m (default {DEFAULT_WAIT_SECONDS})",
    )
    p.add_argument("destination", metavar="[user@]host")
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- command",
        help="the command to run on the host (default: a login shell)",
    )
