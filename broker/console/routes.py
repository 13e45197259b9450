"""The console's routes: declared like the API's (``web.route.Route``), installed into the
same table, with the same access rules. ``front="console"``: cookie session, CSRF-checked
forms, HTML answers."""

from __future__ import annotations

import functools

from broker.web.access import authenticated, public
from broker.web.models import CredentialRequest
from broker.web.route import Route

from .forms import CallbackQuery, DevSignIn, NextQuery
from .handlers import home, signin, static

__all__ = ["CONSOLE_ROUTES"]


# A console page: HTML, cookie session, CSRF-checked forms.
_page = functools.partial(Route, media="text/html", front="console")


CONSOLE_ROUTES: list[Route] = [
    _page("GET", "/console/static/{name}", static.static_file, public, "consoleStatic", "CSS/JS"),
    _page(
        "GET",
        "/console/login",
        signin.login_page,
        public,
        "consoleLogin",
        "Sign-in page",
        query=NextQuery,
    ),
    _page(
        "GET",
        "/console/login/{provider}",
        signin.start_sign_in,
        public,
        "consoleStartSignIn",
        "Go to the identity provider",
        query=NextQuery,
    ),
    _page(
        "GET",
        "/console/callback",
        signin.callback,
        public,
        "consoleCallback",
        "Back from the identity provider",
        query=CallbackQuery,
    ),
    _page(
        "POST",
        "/console/login/dev",
        signin.dev_sign_in,
        public,
        "consoleDevSignIn",
        "Development: sign in as a demo identity",
        body=DevSignIn,
    ),
    _page(
        "POST",
        "/console/logout",
        signin.sign_out,
        authenticated,
        "consoleSignOut",
        "Sign out",
    ),
    _page("GET", "/console/", home.home, authenticated, "consoleHome", "What I can request"),
    _page(
        "POST",
        "/console/credentials",
        home.issue_credential,
        authenticated,
        "consoleIssueCredential",
        "Get a credential (shown once)",
        body=CredentialRequest,
    ),
    _page(
        "POST",
        "/console/grants/{grant_id}/revoke",
        home.revoke_grant,
        authenticated,
        "consoleRevokeGrant",
        "Revoke one of my grants",
    ),
]
