"""Shared fixtures: one real Postgres + OpenBao stack per test session.

Tests that use the ``stack`` fixture are marked ``stack`` automatically, so
``pytest -m "not stack"`` runs everything that needs no servers.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from broker.app import create_app
from broker.devenv import demo_tokens, prepare_broker
from broker.settings import Settings
from broker.stack.devstack import DevStack


@pytest.fixture(scope="session")
def stack_state_dir() -> Iterator[Path]:
    """A private directory for server state, removed at session end.

    Not ``tmp_path_factory``: a concurrent pytest session resets ``/tmp/pytest-of-<user>``
    to 0700 (which locks out the postgres system user we run as under root) and prunes
    all but its three newest numbered dirs, deleting a live data directory.
    """
    path = Path(tempfile.mkdtemp(prefix="jitbroker-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(stack_state_dir: Path) -> Iterator[DevStack]:
    """A started, provisioned ``DevStack``; both servers are stopped at session end."""
    dev_stack = DevStack(stack_state_dir / "stack")
    dev_stack.start()  # stops whatever it started if it fails halfway
    try:
        yield dev_stack
    finally:
        dev_stack.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


# --- the broker, in-process, on a free loopback port -------------------------------------

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunningBroker:
    """A broker app serving on ``url``; ``app`` gives tests the typed keys (ledger, vault)."""

    url: str
    app: web.Application
    settings: Settings
    runner: web.AppRunner


async def start_broker(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> RunningBroker:
    """Start ``create_app(settings)`` on 127.0.0.1:0 and return it (caller stops it)."""
    app = create_app(settings.with_overrides(port=0), clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningBroker(f"http://127.0.0.1:{port}", app, settings, runner)


@pytest.fixture(scope="session")
async def broker_settings(stack: DevStack) -> Settings:
    """Settings for a broker on the session stack: ledger migrated, dev keys created.

    Checkpoints every second so tamper tests need not wait.
    """
    settings = await prepare_broker(stack, policies_dir=REPO / "policies")
    return settings.with_overrides(checkpoint_interval_seconds=1.0)


@pytest.fixture(scope="session")
async def broker(broker_settings: Settings) -> AsyncIterator[RunningBroker]:
    running = await start_broker(broker_settings)
    try:
        yield running
    finally:
        await running.runner.cleanup()


@pytest.fixture(scope="session")
def tokens(broker_settings: Settings) -> dict[str, str]:
    """Dev JWTs for the demo identities (alice, bob, dana, carol, erin, svc-orders)."""
    assert broker_settings.dev_issuer_key_path is not None
    return demo_tokens(broker_settings.dev_issuer_key_path)


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Regenerate docs/reliability.md when this session ran reliability tests."""
    from tests.reliability.report import recorded_this_session, write_report

    if recorded_this_session():
        write_report()
