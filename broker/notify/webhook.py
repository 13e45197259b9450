"""Non-blocking, retried webhook delivery of elevation notifications (Slack-compatible).

Invariants:

- ``notify()`` never blocks and never raises: it appends to one bounded queue per URL and
  returns. A full queue loses its *oldest* entry, never the caller's time.
- Every (notification, URL) pair ends in exactly one of ``delivered``, ``failed`` or
  ``dropped``, reported through ``on_result(kind, outcome)``; each retry is reported as
  ``retry`` on the way. Metrics can therefore count losses exactly.
- Each URL has its own queue and its own cap on requests in flight, so a dead or slow
  endpoint only ever delays itself, never a healthy one.
- Webhook URLs embed credentials (Slack's path *is* the secret): they never appear in logs
  or error messages, only their scheme, host and port. Notification text and fields are
  never logged either, only the notification kind.
- Redirects are not followed: the payload goes to the configured host or nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

__all__ = ["Notification", "WebhookNotifier"]

_log = logging.getLogger(__name__)

# Slack shows ~4000 characters of `text`; longer values only cost queue memory and bandwidth.
_MAX_TEXT_CHARS = 4000
_MAX_FIELD_CHARS = 1000

_RETRYABLE_STATUS = 429  # plus every 5xx; any other non-2xx is final


@dataclass(frozen=True)
class Notification:
    """One event to announce.

    ``kind`` names the event (``elevation.requested``, ``elevation.approved``, ...);
    ``text`` is one human line (Slack's ``text``); ``fields`` is structured detail
    (``elevation_id``, ``secret``, ``requester``, ``approver``, ``reason``, ...).
    """

    kind: str
    text: str
    fields: Mapping[str, str | int | None]


@dataclass
class _Lane:
    """The queue and in-flight deliveries of one URL."""

    url: str
    origin: str  # scheme://host[:port], the only part of the URL that may be logged
    pending: deque[Notification] = field(default_factory=deque)
    active: set[asyncio.Task[None]] = field(default_factory=set)
    overflowing: bool = False


class WebhookNotifier:
    """POSTs each notification as JSON to every configured URL, in the background.

    The body is ``{"text": ..., "kind": ..., "fields": {...}}``; Slack incoming webhooks
    read ``text`` and ignore the other keys. A 2xx answer means ``delivered``. 429, 5xx,
    connection errors and timeouts are retried up to ``max_attempts`` times per URL with
    exponential backoff and jitter (``backoff_base * 2**(attempt-1)``, at most
    ``backoff_max``; a 429's ``Retry-After`` is honoured up to ``backoff_max``), then
    reported ``failed`` and logged at warning. Any other answer is ``failed`` at once.

    Each URL holds at most ``max_queue`` waiting notifications and has at most
    ``max_in_flight_per_url`` requests (with their retries) in flight. Order is
    best-effort. ``notify()`` must be called from the event loop's thread (or before
    ``start()``). With no URLs every method is a no-op.

    The session from ``session_factory`` (default: a plain ``aiohttp.ClientSession``) is
    created by ``start()`` and closed by ``close()``; ``timeout`` applies to each request.

    Raises ``ValueError`` at construction for a URL that is not http(s) with a host (the
    message names the URL's index, never the URL) or for an out-of-range limit, and
    ``TypeError`` if ``urls`` is a single string.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 5.0,
        max_queue: int = 1000,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_in_flight_per_url: int = 8,
        on_result: Callable[[str, str], None] | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        if isinstance(urls, str):
            raise TypeError("urls must be a sequence of URLs, not a single string")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must not be negative")
        if max_in_flight_per_url < 1:
            raise ValueError("max_in_flight_per_url must be at least 1")
        self._lanes: list[_Lane] = []
        for i, url in enumerate(urls):
            origin = _origin(url, i)  # first: it rejects non-strings
            self._lanes.append(_Lane(url.strip(), origin))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_queue = max_queue
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_in_flight = max_in_flight_per_url
        self._on_result = on_result
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # something was queued or a delivery ended
        self._progress = asyncio.Event()  # a delivery ended (close() waits on it)
        self._closing = False
        self._closed = False

    def notify(self, n: Notification) -> None:
        """Queue ``n`` for every URL and return at once. Never raises.

        A URL whose queue is full drops its oldest notification (reported ``dropped``).
        After ``close()`` has finished, ``n`` is reported ``dropped`` for every URL.
        """
        try:
            for lane in self._lanes:
                if self._closed:
                    self._report(n.kind, "dropped")
                    continue
                if len(lane.pending) >= self._max_queue:
                    oldest = lane.pending.popleft()
                    self._report(oldest.kind, "dropped")
                    if not lane.overflowing:
                        # Once per overflow episode: a flood must not become a log flood.
                        lane.overflowing = True
                        _log.warning(
                            "webhook queue for %s is full (%d); dropping oldest notifications",
                            lane.origin,
                            self._max_queue,
                        )
                lane.pending.append(n)
            if self._lanes:
                self._wake.set()
        except Exception:  # the caller is approving an elevation; it must not fail for this
            _log.exception("webhook notify failed")

    async def start(self) -> None:
        """Open the HTTP session and start the sender task. Idempotent; no-op without URLs.

        Raises ``RuntimeError`` after ``close()``.
        """
        if self._closing:
            raise RuntimeError("webhook notifier is closed")
        if not self._lanes or self._sender is not None:
            return
        factory = self._session_factory or (lambda: aiohttp.ClientSession(timeout=self._timeout))
        self._session = factory()
        self._sender = asyncio.create_task(self._send_forever(), name="webhook-sender")
        self._wake.set()

    async def close(self, *, drain_seconds: float = 2.0) -> None:
        """Deliver what is queued for up to ``drain_seconds``, then stop. Idempotent.

        Whatever is still queued or in flight when the time is up (or everything queued, if
        the notifier was never started) is reported ``dropped``. The session is closed.
        """
        if self._closing:
            return
        self._closing = True
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(drain_seconds, 0.0)):
                    while self._busy():
                        self._progress.clear()
                        await self._progress.wait()
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        self._closed = True
        in_flight = [task for lane in self._lanes for task in lane.active]
        # Each cancelled delivery reports itself "dropped"; one already done reported already.
        dropped = sum(task.cancel() for task in in_flight)
        await asyncio.gather(*in_flight, return_exceptions=True)
        for lane in self._lanes:
            while lane.pending:
                self._report(lane.pending.popleft().kind, "dropped")
                dropped += 1
        if dropped:
            _log.warning("webhook notifier closed with %d deliveries dropped", dropped)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- internals ---------------------------------------------------------------------

    def _busy(self) -> bool:
        return any(lane.pending or lane.active for lane in self._lanes)

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for lane in self._lanes:
                while lane.pending and len(lane.active) < self._max_in_flight:
                    task = asyncio.create_task(self._deliver(lane, lane.pending.popleft()))
                    lane.active.add(task)
                    task.add_done_callback(functools.partial(self._ended, lane))
                if not lane.pending:
                    lane.overflowing = False

    def _ended(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        lane.active.discard(task)
        self._wake.set()
        self._progress.set()

    async def _deliver(self, lane: _Lane, n: Notification) -> None:
        """Deliver ``n`` to one URL with retries; report exactly one final outcome."""
        try:
            outcome = await self._attempts(lane, n)
        except asyncio.CancelledError:
            self._report(n.kind, "dropped")
            raise
        except Exception as e:
            # Only the type: a library's message may quote the URL.
            _log.warning("webhook to %s failed unexpectedly: %s", lane.origin, type(e).__name__)
            outcome = "failed"
        self._report(n.kind, outcome)

    async def _attempts(self, lane: _Lane, n: Notification) -> str:
        body = _payload(n)
        attempt = 0
        while True:
            attempt += 1
            retry_after, reason = await self._post(lane.url, body)
            if reason is None:
                return "delivered"
            if retry_after is None or attempt >= self._max_attempts:
                _log.warning(
                    "webhook %s to %s failed after %d attempt(s): %s",
                    n.kind,
                    lane.origin,
                    attempt,
                    reason,
                )
                return "failed"
            self._report(n.kind, "retry")
            delay = _backoff_delay(
                attempt,
                self._backoff_base,
                self._backoff_max,
                retry_after,
                random.random(),  # noqa: S311 jitter, not crypto
            )
            _log.debug(
                "webhook %s to %s: %s; retry %d in %.2fs",
                n.kind,
                lane.origin,
                reason,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)

    async def _post(self, url: str, body: bytes) -> tuple[float | None, str | None]:
        """One POST. Returns ``(retry_after, reason)``.

        ``reason`` is None on success; otherwise a loggable cause (no URL), and
        ``retry_after`` is None when the failure is final, else the server's requested
        delay in seconds (0.0 when it named none).
        """
        if self._session is None:  # close() raced a delivery; cancelled right after
            return None, "notifier closed"
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                header = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            return 0.0, type(e).__name__
        if 200 <= status < 300:
            return None, None
        if status == _RETRYABLE_STATUS or status >= 500:
            return _parse_retry_after(header), f"HTTP {status}"
        return None, f"HTTP {status}"

    def _report(self, kind: str, outcome: str) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(kind, outcome)
        except Exception:  # a metrics bug must not stop deliveries
            _log.exception("webhook on_result callback failed")


def _origin(url: object, index: int) -> str:
    """``scheme://host[:port]`` of a valid webhook URL; ValueError naming only ``index``."""
    if not isinstance(url, str):
        raise ValueError(f"webhook URL #{index} is not a string")
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        # `from None`: the parser's message may quote part of the URL.
        raise ValueError(f"webhook URL #{index} is malformed") from None
    if scheme not in ("http", "https"):
        raise ValueError(f"webhook URL #{index} must use http or https")
    if not host:
        raise ValueError(f"webhook URL #{index} has no host")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _payload(n: Notification) -> bytes:
    fields = {
        str(k): v[:_MAX_FIELD_CHARS] if isinstance(v, str) else v for k, v in n.fields.items()
    }
    doc = {"text": n.text[:_MAX_TEXT_CHARS], "kind": n.kind, "fields": fields}
    # default=str: a stray non-JSON value is sent as text rather than losing the message.
    return json.dumps(doc, default=str).encode()


def _parse_retry_after(header: str | None) -> float:
    """Seconds from a ``Retry-After: <seconds>`` header; 0.0 if absent or not a number."""
    if header is None:
        return 0.0
    try:
        seconds = float(header.strip())
    except ValueError:
        return 0.0  # an HTTP-date: rare for webhooks; fall back to our own backoff
    return seconds if seconds > 0 else 0.0


def _backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float, jitter: float
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    ``min(cap, base * 2**(attempt-1))`` scaled by a jitter factor in [0.5, 1.0) (``jitter``
    in [0, 1)), then raised to the server's ``retry_after`` if larger; never above ``cap``.
    """
    exponential = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return min(cap, max(exponential * (0.5 + jitter / 2), retry_after))
