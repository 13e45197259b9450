"""``broker login``, ``broker logout`` and ``broker whoami``: people sign in with their
company's identity provider, through the broker (docs/sign-in.md).

  broker login [--provider NAME] [--device] [--no-browser] [--port N] [--json]
  broker logout [--json]
  broker whoami [--json]

**Browser** (the default): listen on ``127.0.0.1:<port>`` (``--port``, default 0: a free
one), ask the broker for an authorization URL (``POST /v1/auth/login``) with
``redirect_uri=http://127.0.0.1:<port>/callback`` and a random ``client_nonce`` kept in
this process, print the URL on stderr and open it (``webbrowser``; ``--no-browser`` only
prints it). The provider sends the browser back to the listener with ``code`` and
``state``: a redirect with any other ``state`` is refused (and the wait goes on), one
with ``error`` ends the login. The listener hands ``state``, ``code`` and the nonce to
the broker (``POST /v1/auth/callback``) and answers the browser with a short page that
says how it went, so the tab never says "signed in" for a login the broker refused.

**Device** (``--device``, for a machine without a browser): ``POST /v1/auth/device``,
print the user code and the URL to enter it at, and poll ``/v1/auth/device/token`` every
``interval`` seconds (5 more after each ``slow_down``) until the person approved, declined
or the code expired.

The session goes to the cache (``broker.cli._sessions``) for the broker's URL, which every
client command then uses (``broker.cli._connection``). What is printed names the subject,
groups, provider and expiry: never the token, on no stream and in no mode (``--json``
prints the broker's answer without it).

``broker logout`` ends the cached session at the broker (``POST /v1/auth/logout``: the
provider's refresh token is revoked too) and removes it from the cache, also when the
broker says it had already ended; it prints the provider's end-session URL when there is
one, to sign out there as well. ``broker whoami`` prints ``GET /v1/me``.
"""

from __future__ import annotations

import argparse
import html
import http.server
import os
import secrets
import sys
import threading
import time
import webbrowser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from broker.cli._connection import ClientUsage, add_client_command
from broker.cli._output import cell, print_json, when
from broker.cli._sessions import SessionCache
from broker.cli.client import BrokerClient, BrokerHTTPError, BrokerUnreachable, ClientError

__all__ = ["register"]

_CALLBACK_PATH = "/callback"
_SLOW_DOWN_SECONDS = 5  # RFC 8628 3.5
_POLL_WAIT = 0.5  # how often the main thread looks up from waiting (Ctrl-C)


def _public(answer: dict[str, Any]) -> dict[str, Any]:
    """A sign-in answer as it may be shown: without the token."""
    return {k: v for k, v in answer.items() if k != "token"}


def _say(text: str) -> None:
    """Progress and instructions: stderr, so stdout carries only the result."""
    print(text, file=sys.stderr, flush=True)


def _choose_provider(client: BrokerClient, given: str | None, flow: str) -> str:
    if given:
        return given
    providers = client.sign_in_providers()
    if not providers:
        raise ClientUsage(f"the broker at {client.url} has no identity provider to sign in with")
    offering = [p for p in providers if flow in (p.get("flows") or [])]
    if not offering:
        names = ", ".join(cell(p.get("name")) for p in providers)
        raise ClientUsage(f"no identity provider of the broker offers the {flow} flow ({names})")
    chosen = offering[0]
    name = str(chosen.get("name"))
    if len(providers) > 1:
        others = ", ".join(cell(p.get("name")) for p in providers if p is not chosen)
        _say(f"signing in with {cell(name)}; also offered: {others} (choose with --provider)")
    return name


# --- the browser flow -------------------------------------------------------------------


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em}}</style>
</head><body><h1 id="{marker}">{title}</h1><p>{text}</p></body></html>
"""


class _Redirect:
    """What came back to the listener: the broker's answer, or why the login failed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.answer: dict[str, Any] | None = None
        self.error: ClientError | str | None = None
        # The handler thread whose page tells the outcome: only its connection's close ends
        # the wait (another request's close, say a refused one still closing, must not).
        self.outcome_thread: int | None = None


class _Listener(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, finish: Any, got: _Redirect) -> None:
        super().__init__(("127.0.0.1", port), _CallbackHandler)
        self.finish = finish  # (query) -> (status, marker, title, text)
        self.got = got

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        # Only once the outcome's page is sent and its connection closed (this runs in the
        # handler's thread): the main thread exits soon after, and a process that exits
        # mid-page may cut it off before the browser has read it.
        if self.got.outcome_thread == threading.get_ident():
            self.got.done.set()


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _Listener
    timeout = 30  # an idle connection (a browser's preconnect) does not hold a thread

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != _CALLBACK_PATH:
            self._page(404, "not-found", "Not found", "This is the broker login listener.")
            return
        got = self.server.got
        try:
            page = self.server.finish(dict(parse_qsl(url.query)))
        except Exception as e:  # a bug here must end the wait, not hang it
            got.error = got.error or f"the login listener failed: {e!r}"
            got.outcome_thread = got.outcome_thread or threading.get_ident()
            page = (500, "signin-failed", "Sign-in failed", "See the terminal.")
        self._page(*page)  # the listener ends the wait once this connection is closed

    def _page(self, status: int, marker: str, title: str, text: str) -> None:
        body = _PAGE.format(title=html.escape(title), marker=marker, text=html.escape(text))
        raw = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(raw)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request line carries the code: never logged


def _browser_login(client: BrokerClient, args: argparse.Namespace, provider: str) -> int:
    nonce = secrets.token_urlsafe(32)
    got = _Redirect()
    started: dict[str, Any] = {}

    def finish(query: dict[str, str]) -> tuple[int, str, str, str]:
        state = started.get("state")
        given = query.get("state", "").encode()
        if not state or not secrets.compare_digest(given, str(state).encode()):
            _say("warning: refused a redirect that is not this sign-in's (state differs)")
            return (
                400,
                "signin-refused",
                "Sign-in refused",
                "This is not the sign-in the broker CLI is waiting for. Start it again from"
                " the terminal.",
            )
        with got.lock:
            if got.answer is not None or got.error is not None:
                return 409, "signin-used", "Already done", "This sign-in has finished already."
            got.outcome_thread = threading.get_ident()
            return _finish(client, query, state, nonce, got)

    if not 0 <= args.port <= 65535:
        raise ClientUsage(f"--port must be 0..65535, got {args.port}")
    try:
        listener = _Listener(args.port, finish, got)
    except OSError as e:
        raise ClientUsage(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}") from None
    port = listener.server_address[1]
    redirect_uri = f"http://127.0.0.1:{port}{_CALLBACK_PATH}"
    thread = threading.Thread(target=listener.serve_forever, args=(0.2,), daemon=True)
    thread.start()
    try:
        started.update(client.start_login(provider, redirect_uri=redirect_uri, client_nonce=nonce))
        auth_url = str(started["auth_url"])
        _say(f"Sign in with {cell(provider)} in your browser:\n  {auth_url}")
        if not args.no_browser and not _open_browser(auth_url):
            _say("could not open a browser: open the URL above yourself")
        _say(f"waiting for the browser to come back to {redirect_uri} ...")
        deadline = time.monotonic() + float(started.get("expires_in") or 600)
        while not got.done.wait(_POLL_WAIT):
            if time.monotonic() > deadline:
                print(
                    "error: timed out: the browser did not come back before the sign-in"
                    " expired; run `broker login` again",
                    file=sys.stderr,
                )
                return 1
    finally:
        listener.shutdown()
        listener.server_close()
    if got.error is not None:
        if isinstance(got.error, ClientError):
            raise got.error
        print(f"error: {got.error}", file=sys.stderr)
        return 1
    assert got.answer is not None
    return _signed_in(client, args, got.answer)


def _finish(
    client: BrokerClient, query: dict[str, str], state: str, nonce: str, got: _Redirect
) -> tuple[int, str, str, str]:
    """The redirect of this sign-in: hand it to the broker; the page for the browser."""
    if "error" in query:
        said = query["error"] + (
            f": {query['error_description']}" if query.get("error_description") else ""
        )
        got.error = f"the identity provider refused the sign-in: {cell(said, 300)}"
        return 400, "signin-failed", "Sign-in failed", f"{got.error}. See the terminal."
    code = query.get("code")
    if not code:
        got.error = "the identity provider sent the browser back without a code"
        return 400, "signin-failed", "Sign-in failed", f"{got.error}. See the terminal."
    try:
        got.answer = client.finish_login(state=state, code=code, client_nonce=nonce)
    except BrokerHTTPError as e:
        got.error = e
        text = f"The broker refused the sign-in: {e.code}: {e.message}. See the terminal."
        return 400, "signin-failed", "Sign-in failed", text
    except BrokerUnreachable as e:
        got.error = e
        return 502, "signin-failed", "Sign-in failed", f"{e}. See the terminal."
    subject = cell(got.answer.get("subject"))
    return (
        200,
        "signed-in",
        "Signed in",
        f"Signed in to the broker as {subject}. You can close this tab and go back to"
        " the terminal.",
    )


def _open_browser(url: str) -> bool:
    try:
        return webbrowser.open(url, new=1)
    except webbrowser.Error:
        return False


# --- the device flow --------------------------------------------------------------------


def _device_login(client: BrokerClient, args: argparse.Namespace, provider: str) -> int:
    started = client.start_device(provider)
    handle = str(started["handle"])
    interval = max(1, int(started.get("interval") or 5))
    expires_in = int(started.get("expires_in") or 600)
    lines = [
        f"To sign in with {cell(provider)}, open {cell(started.get('verification_uri'))}",
        f"and enter the code: {cell(started.get('user_code'))}",
    ]
    if started.get("verification_uri_complete"):
        lines.append(f"or open: {cell(started['verification_uri_complete'])}")
    lines.append(f"waiting for the sign-in (the code expires in {expires_in // 60} min) ...")
    _say("\n".join(lines))
    deadline = time.monotonic() + expires_in
    while True:
        time.sleep(interval)
        try:
            answer = client.poll_device(handle)
        except BrokerHTTPError as e:
            if e.code == "authorization_pending" and time.monotonic() < deadline:
                continue
            if e.code == "slow_down" and time.monotonic() < deadline:
                interval += _SLOW_DOWN_SECONDS
                continue
            if e.code in ("authorization_pending", "slow_down", "expired_token"):
                print(
                    "error: expired_token: the code expired before the sign-in was approved;"
                    " run `broker login --device` again",
                    file=sys.stderr,
                )
                return 1
            if e.code == "access_denied":
                print("error: access_denied: the sign-in was declined", file=sys.stderr)
                return 1
            raise
        return _signed_in(client, args, answer)


# --- the commands -------------------------------------------------------------------------


def _signed_in(client: BrokerClient, args: argparse.Namespace, answer: dict[str, Any]) -> int:
    if not isinstance(answer.get("token"), str):
        raise BrokerHTTPError(200, "bad_response", "the broker's sign-in answer has no token")
    SessionCache().store_login(client.url, answer)
    if args.json:
        print_json(_public(answer))
    else:
        groups = ", ".join(cell(g) for g in answer.get("groups") or []) or "(none)"
        print(
            f"signed in to {client.url} as {cell(answer.get('subject'))}"
            f" (provider {cell(answer.get('provider'))})\n"
            f"groups:  {groups}\n"
            f"session: expires {when(answer.get('expires_at'))},"
            f" renewable until {when(answer.get('max_expires_at'))}"
        )
    if os.environ.get("BROKER_TOKEN"):
        _say("note: BROKER_TOKEN is set: commands use it, not this session, until you unset it")
    return 0


def _login(client: BrokerClient, args: argparse.Namespace) -> int:
    flow = "device" if args.device else "browser"
    provider = _choose_provider(client, args.provider, flow)
    if args.device:
        return _device_login(client, args, provider)
    return _browser_login(client, args, provider)


def _logout(client: BrokerClient, args: argparse.Namespace) -> int:
    cache = SessionCache()
    entry = cache.get(client.url)
    if entry is None:
        print(f"not signed in to {client.url}")
        return 0
    token = str(entry["token"])
    try:
        out = client.with_token(token).logout()
    except BrokerHTTPError as e:
        if e.status != 401:
            raise  # kept: try again (or sign in again, which replaces it)
        cache.drop(client.url, token=token)
        print(
            f"the session of {cell(entry.get('subject'))} had already ended at the broker"
            f" ({e.code}); removed it from {cache.path}"
        )
        return 0
    cache.drop(client.url, token=token)
    if args.json:
        print_json(out)
        return 0
    print(f"signed out of {client.url} ({cell(entry.get('subject'))})")
    if out.get("end_session_url"):
        print(f"to sign out at the identity provider too, open:\n  {cell(out['end_session_url'])}")
    return 0


def _whoami(client: BrokerClient, args: argparse.Namespace) -> int:
    me = client.me()
    if args.json:
        print_json(me)
        return 0
    lines = [
        f"subject:  {cell(me.get('subject'))}",
        f"kind:     {cell(me.get('kind'))}",
        f"issuer:   {cell(me.get('issuer'))}",
        f"groups:   {', '.join(cell(g) for g in me.get('groups') or []) or '(none)'}",
        f"roles:    {', '.join(cell(r) for r in me.get('roles') or []) or '(none)'}",
    ]
    session = me.get("session")
    if isinstance(session, dict):
        lines.append(
            f"session:  {cell(session.get('provider'))}, expires"
            f" {when(session.get('expires_at'))}, renewable until"
            f" {when(session.get('max_expires_at'))}"
        )
    else:
        lines.append("session:  - (a bearer token, not a `broker login` session)")
    lines.extend(_limit_lines(me.get("limits")))
    print("\n".join(lines))
    return 0


def _limit_lines(limits: object) -> list[str]:
    """The caller's quotas and their use, one per line (``GET /v1/me``'s ``limits``)."""
    if not isinstance(limits, dict):
        return []
    out: list[str] = []
    for rate in limits.get("issuance_rate") or []:
        out.append(
            f"issuance {cell(rate.get('rate'))}, burst {cell(rate.get('burst'))}"
            f" ({cell(rate.get('scope'))}; {cell(rate.get('available'))} left on this replica)"
        )
    for live in limits.get("live_grants") or []:
        out.append(
            f"live grants of {cell(live.get('secret'))}: {cell(live.get('live'))}"
            f" of {cell(live.get('limit'))}"
        )
    elevations = limits.get("elevation_requests")
    if isinstance(elevations, dict):
        out.append(
            f"elevation requests this hour: {cell(elevations.get('used'))}"
            f" of {cell(elevations.get('per_hour'))}"
        )
    return [("limits:   " if i == 0 else "          ") + line for i, line in enumerate(out)]


def register(sub: Any) -> None:
    """Add ``login``, ``logout`` and ``whoami`` to the top-level subparsers."""
    p = add_client_command(
        sub, "login", _login, "sign in with your identity provider", anonymous=True
    )
    p.add_argument("--provider", help="the provider's name (default: the broker's first)")
    p.add_argument("--device", action="store_true", help="device code: sign in on another device")
    p.add_argument("--no-browser", action="store_true", help="print the URL, do not open it")
    p.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="N",
        help="loopback port to listen on (default 0: a free one; set it for providers"
        " that match the redirect's port exactly)",
    )
    add_client_command(sub, "logout", _logout, "end your `broker login` session", anonymous=True)
    add_client_command(sub, "whoami", _whoami, "who the broker thinks you are")
