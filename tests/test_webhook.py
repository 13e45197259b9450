"""Webhook delivery against real aiohttp servers on 127.0.0.1 (no mocks, no network)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pytest
from aiohttp import web

from broker.notify import Notification, WebhookNotifier
from broker.notify.webhook import _backoff_delay

# Slack-style secret path and query: neither may ever reach a log line.
SECRET_PATH = "/services/T0SECRET/B0SECRET/XoxbSecretToken"
SECRET_QUERY = "token=QuerySecret123"


class _Timing(TypedDict):
    backoff_base: float
    backoff_max: float
    timeout: float


FAST: _Timing = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2.0}


@dataclass
class Hook:
    """A webhook endpoint: answers from ``script`` (then 200), records every JSON body."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    delay: float = 0.0
    hang: asyncio.Event | None = None  # handlers wait for this before answering
    retry_after: str | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)  # monotonic arrival times

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts.append(time.monotonic())
        if self.hang is not None:
            await self.hang.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.script.pop(0) if self.script else 200
        if 200 <= status < 300:
            self.received.append(await request.json())
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.Response(status=status, text="ok", headers=headers)


@pytest.fixture
async def make_hook() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    hooks: list[Hook] = []

    async def make(**kwargs: Any) -> Hook:
        hook = Hook(**kwargs)
        app = web.Application()
        app.router.add_post(SECRET_PATH, hook.handle)
        runner = web.AppRunner(app, access_log=None)  # the access log would print the path
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        hook.url = f"http://127.0.0.1:{port}{SECRET_PATH}?{SECRET_QUERY}"
        runners.append(runner)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        if hook.hang is not None:
            hook.hang.set()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on a port that is bound but never listened on: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{SECRET_PATH}?{SECRET_QUERY}"
    finally:
        sock.close()


class Results:
    """Records ``on_result`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, kind: str, outcome: str) -> None:
        self.calls.append((kind, outcome))

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.calls if o == outcome)


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def note(i: int = 0, kind: str = "elevation.requested") -> Notification:
    return Notification(
        kind=kind,
        text=f"alice requested orders-ro ({i})",
        fields={"elevation_id": f"el-{i}", "secret": "orders-ro", "ticket": None, "n": i},
    )


# --- delivery -----------------------------------------------------------------------------


async def test_delivers_json_shape(make_hook: Callable[..., Any]) -> None:
    hook = await make_hook()
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, **FAST)
    await notifier.start()
    notifier.notify(note(7, "elevation.approved"))
    await until(lambda: len(hook.received) == 1)
    await notifier.close()
    assert hook.received == [
        {
            "text": "alice requested orders-ro (7)",
            "kind": "elevation.approved",
            "fields": {"elevation_id": "el-7", "secret": "orders-ro", "ticket": None, "n": 7},
        }
    ]
    assert results.calls == [("elevation.approved", "delivered")]


async def test_delivers_to_every_url(make_hook: Callable[..., Any]) -> None:
    a, b = await make_hook(), await make_hook()
    results = Results()
    notifier = WebhookNotifier([a.url, b.url], on_result=results, **FAST)
    await notifier.start()
    for i in range(3):
        notifier.notify(note(i))
    await notifier.close()
    assert sorted(r["fields"]["n"] for r in a.received) == [0, 1, 2]
    assert sorted(r["fields"]["n"] for r in b.received) == [0, 1, 2]
    assert results.count("delivered") == 6


async def test_retries_after_two_500s_then_delivers(make_hook: Callable[..., Any]) -> None:
    hook = await make_hook(script=[500, 503])
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, **FAST)
    await notifier.start()
    notifier.notify(note())
    await until(lambda: len(hook.received) == 1)
    await notifier.close()
    assert len(hook.attempts) == 3
    assert [o for _, o in results.calls] == ["retry", "retry", "delivered"]


async def test_429_is_retried_honouring_retry_after_up_to_backoff_max(
    make_hook: Callable[..., Any],
) -> None:
    hook = await make_hook(script=[429], retry_after="5")
    results = Results()
    notifier = WebhookNotifier(
        [hook.url], on_result=results, backoff_base=0.001, backoff_max=0.3, timeout=2.0
    )
    await notifier.start()
    notifier.notify(note())
    await until(lambda: len(hook.received) == 1)
    await notifier.close()
    assert [o for _, o in results.calls] == ["retry", "delivered"]
    gap = hook.attempts[1] - hook.attempts[0]
    assert 0.25 <= gap < 2.0  # Retry-After (5 s) was honoured but capped at backoff_max


async def test_400_is_not_retried(make_hook: Callable[..., Any]) -> None:
    hook = await make_hook(script=[400])
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, **FAST)
    await notifier.start()
    notifier.notify(note())
    await until(lambda: bool(results.calls))
    await asyncio.sleep(0.1)  # room for a wrong retry to show up
    await notifier.close()
    assert len(hook.attempts) == 1
    assert results.calls == [("elevation.requested", "failed")]


async def test_connection_refused_is_retried_then_failed(refused_url: str) -> None:
    results = Results()
    notifier = WebhookNotifier([refused_url], on_result=results, max_attempts=3, **FAST)
    await notifier.start()
    notifier.notify(note())
    await until(lambda: any(o == "failed" for _, o in results.calls))
    await notifier.close()
    assert [o for _, o in results.calls] == ["retry", "retry", "failed"]


async def test_dead_endpoint_does_not_delay_a_healthy_one(
    make_hook: Callable[..., Any], refused_url: str
) -> None:
    # A hanging endpoint holds every request slot it gets until its timeout; with one
    # shared cap it would starve the healthy URL.
    hanging = await make_hook(hang=asyncio.Event())
    healthy = await make_hook()
    results = Results()
    # A minute-long timeout: a design that made the healthy URL wait behind the hanging
    # one could not deliver within the 20 s we wait, however loaded the machine is.
    notifier = WebhookNotifier(
        [hanging.url, refused_url, healthy.url],
        on_result=results,
        timeout=60.0,
        backoff_base=30.0,
        backoff_max=60.0,
    )
    await notifier.start()
    for i in range(30):  # well above the per-URL in-flight cap
        notifier.notify(note(i))
    await until(lambda: len(healthy.received) == 30, timeout=20.0)
    assert hanging.received == []
    await notifier.close(drain_seconds=0)
    # Every (notification, URL) pair ended exactly once: 30 delivered, 60 dropped at close.
    assert results.count("delivered") == 30
    assert results.count("dropped") == 60
    assert results.count("failed") == 0


async def test_full_queue_drops_oldest_and_reports_it(make_hook: Callable[..., Any]) -> None:
    hook = await make_hook()
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, max_queue=5, **FAST)
    for i in range(8):  # before start(): everything waits in the queue
        notifier.notify(note(i, kind=f"k{i}"))
    assert results.calls == [("k0", "dropped"), ("k1", "dropped"), ("k2", "dropped")]
    await notifier.start()
    await notifier.close()
    assert sorted(r["fields"]["n"] for r in hook.received) == [3, 4, 5, 6, 7]
    assert results.count("delivered") == 5


async def test_notify_returns_immediately_with_a_slow_endpoint(
    make_hook: Callable[..., Any],
) -> None:
    # The endpoint does not answer until the test ends: if notify() waited for delivery
    # (or for a queue slot behind it), the 1000 calls could not finish.
    hook = await make_hook(hang=asyncio.Event())
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, max_queue=1000, **FAST)
    await notifier.start()
    notifier.notify(note(-1))
    await until(lambda: len(hook.attempts) == 1)  # a request is in flight and slow
    for i in range(1000):
        notifier.notify(note(i))
    assert hook.received == [] and results.count("delivered") == 0
    await notifier.close(drain_seconds=0)
    assert results.count("dropped") == 1001  # nothing delivered yet, nothing lost silently


async def test_close_drains_the_queue(make_hook: Callable[..., Any]) -> None:
    hook = await make_hook(delay=0.02)
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, **FAST)
    await notifier.start()
    for i in range(40):
        notifier.notify(note(i))
    await notifier.close(drain_seconds=3.0)
    assert len(hook.received) == 40
    assert results.count("delivered") == 40
    await notifier.close()  # idempotent
    notifier.notify(note(99))  # after close: no error, reported lost
    assert results.calls[-1] == ("elevation.requested", "dropped")
    with pytest.raises(RuntimeError):
        await notifier.start()


async def test_close_stops_after_drain_seconds(make_hook: Callable[..., Any]) -> None:
    hook = await make_hook(hang=asyncio.Event())
    results = Results()
    notifier = WebhookNotifier([hook.url], on_result=results, timeout=10.0)
    await notifier.start()
    for i in range(3):
        notifier.notify(note(i))
    await until(lambda: len(hook.attempts) == 3)
    started = time.monotonic()
    await notifier.close(drain_seconds=0.2)
    assert 0.15 < time.monotonic() - started < 1.0
    assert results.calls == [("elevation.requested", "dropped")] * 3


async def test_no_urls_is_a_no_op() -> None:
    results = Results()
    notifier = WebhookNotifier([], on_result=results)
    await notifier.start()
    notifier.notify(note())
    await notifier.close()
    assert results.calls == []


async def test_a_failing_on_result_callback_does_not_stop_delivery(
    make_hook: Callable[..., Any],
) -> None:
    hook = await make_hook(script=[500])

    def broken(kind: str, outcome: str) -> None:
        raise RuntimeError("metrics bug")

    notifier = WebhookNotifier([hook.url], on_result=broken, **FAST)
    await notifier.start()
    notifier.notify(note())
    await until(lambda: len(hook.received) == 1)
    await notifier.close()


# --- secrets in URLs ----------------------------------------------------------------------


async def test_logs_show_only_scheme_and_host(
    make_hook: Callable[..., Any], refused_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rejecting = await make_hook(script=[400])
    with_userinfo = rejecting.url.replace("http://", "http://hookuser:UserInfoSecret@")
    results = Results()
    notifier = WebhookNotifier(
        [with_userinfo, refused_url], on_result=results, max_attempts=2, **FAST
    )
    await notifier.start()
    notifier.notify(note())
    await until(lambda: results.count("failed") == 2)
    await notifier.close()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("http://127.0.0.1:" in w and "HTTP 400" in w for w in warnings)
    assert all("http://127.0.0.1:" in w for w in warnings)
    for secret in ("T0SECRET", "XoxbSecretToken", "QuerySecret123", "UserInfoSecret"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://hooks.example/services/SECRET", "http or https"),
        ("https:///services/SECRET", "no host"),
        ("hooks.example/services/SECRET", "http or https"),
        ("https://hooks.example:SECRET/x", "malformed"),
        ("https://[SECRET/x", "malformed"),
    ],
)
def test_invalid_url_is_named_by_position_not_content(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        WebhookNotifier(["https://ok.example/services/x", url])
    message = str(info.value)
    assert "#1" in message and problem in message
    assert "SECRET" not in message
    # No chained parser error (whose message may quote the URL) travels with it.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_a_single_string_is_not_a_list_of_urls() -> None:
    with pytest.raises(TypeError):
        WebhookNotifier("https://hooks.example/services/x")


# --- backoff (pure) -----------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    assert _backoff_delay(1, 0.5, 30.0, 0.0, 0.0) == 0.25
    assert _backoff_delay(1, 0.5, 30.0, 0.0, 0.999999) == pytest.approx(0.5)
    assert _backoff_delay(3, 0.5, 30.0, 0.0, 0.999999) == pytest.approx(2.0)
    assert _backoff_delay(200, 0.5, 30.0, 0.0, 0.999999) == pytest.approx(30.0)
    assert _backoff_delay(1, 0.5, 30.0, 10.0, 0.0) == 10.0  # Retry-After wins
    assert _backoff_delay(1, 0.5, 30.0, 3600.0, 0.0) == 30.0  # ...up to the cap
    for attempt in range(1, 12):
        for jitter in (0.0, 0.3, 0.7, 0.999):
            delay = _backoff_delay(attempt, 0.5, 30.0, 0.0, jitter)
            full = min(30.0, 0.5 * 2 ** (attempt - 1))
            assert full / 2 <= delay <= full
