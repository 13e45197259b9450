"""The console's own state on the broker app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.auth import DevIssuer
from broker.tls.loopback import is_loopback

from .cookies import ConsoleCookies

__all__ = ["CONSOLE", "Console"]


@dataclass(frozen=True)
class Console:
    cookies: ConsoleCookies
    public_url: str | None
    # The dev sign-in (development only): the issuer that vouches for the demo identities.
    dev_issuer: DevIssuer | None

    @property
    def callback_url(self) -> str | None:
        """Where the identity provider sends people back to (from ``public_url``)."""
        return f"{self.public_url.rstrip('/')}/console/callback" if self.public_url else None

    def callback_for(self, request: web.Request) -> str | None:
        """``callback_url``; without ``public_url``, on a loopback host only (a laptop, a
        test), the address the browser used: the provider then needs a native client,
        which accepts any loopback port."""
        if self.callback_url is not None:
            return self.callback_url
        if is_loopback(request.url.host):
            return f"{request.url.scheme}://{request.url.raw_authority}/console/callback"
        return None


CONSOLE = web.AppKey("console", Console)
