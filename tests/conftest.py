"""Shared fixtures: one real Postgres + OpenBao stack per test session.

Tests that use the ``stack`` fixture are marked ``stack`` automatically, so
``pytest -m "not stack"`` runs everything that needs no servers; those that use ``browser``
are marked ``browser`` (``-m "not browser"`` leaves Chromium out). Fixtures only: the helpers
are in ``tests/support/``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from broker.devenv import demo_tokens, prepare_broker
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.vaultapi import start_vault_api
from tests.support.brokers import SUITE_QUOTAS, RunningBroker, running_broker, start_broker
from tests.support.browser import Browser
from tests.support.oidc_provider import OIDCProvider
from tests.support.paths import REPO
from tests.support.policies import elevation_variant_policies
from tests.support.vault_proxy import VaultProxy, broker_behind_proxy


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
        fixtures = getattr(item, "fixturenames", ())
        if "stack" in fixtures:
            item.add_marker(pytest.mark.stack)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)


# --- the session broker, in-process, on a free loopback port ------------------------------


@pytest.fixture(scope="session")
async def broker_settings(stack: DevStack) -> Settings:
    """Settings for a broker on the session stack: ledger migrated, dev keys created.

    Checkpoints every second so tamper tests need not wait. The suite's demo identities
    are shared by hundreds of tests, so the quotas' defaults are lifted here; the quota
    tests (tests/test_quotas.py) run brokers of their own with real limits.
    """
    settings = await prepare_broker(stack, policies_dir=REPO / "policies")
    return settings.with_overrides(checkpoint_interval_seconds=1.0, **SUITE_QUOTAS)


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


@pytest.fixture(scope="module")
async def front_door(broker: RunningBroker) -> AsyncIterator[str]:
    """The Vault-compatible listener of the session broker, on a free port."""
    runner = await start_vault_api(broker.app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def broker_behind_vault_proxy(
    stack: DevStack, broker_settings: Settings
) -> AsyncIterator[tuple[RunningBroker, VaultProxy]]:
    """A broker of its own whose OpenBao is behind a ``VaultProxy`` (records, refuses)."""
    async with broker_behind_proxy(stack, broker_settings, "proxied") as pair:
        yield pair


@pytest.fixture(scope="module")
async def elevation_variants(broker_settings: Settings) -> AsyncIterator[RunningBroker]:
    """A broker whose policy adds the variant roles (``db/orders-admin-<variant>``).

    See ``elevation_variant_policies``: 2of2, 2f, short, quick. Its policies live in a
    ``mkdtemp`` directory for the reason given in ``stack_state_dir``.
    """
    tmp = Path(tempfile.mkdtemp(prefix="elev-policies-"))
    try:
        policies = elevation_variant_policies(tmp / "policies")
        async with running_broker(
            broker_settings,
            policies_dir=policies,
            replica_id="elev-variants",
            elevation_sweep_seconds=0.5,
        ) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the OpenID Provider and a browser, for the sign-in tests -----------------------------


@pytest.fixture
async def oidc_provider() -> AsyncIterator[OIDCProvider]:
    """A provider of the test's own (it starts in under a second), so ``set_groups`` and
    the sessions it keeps never leak into another test; in ``mkdtemp`` as ``stack_state_dir``
    says why."""
    tmp = Path(tempfile.mkdtemp(prefix="oidc-provider-"))
    try:
        async with OIDCProvider(tmp) as provider:
            yield provider
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium with a fresh profile (no cookies from another test)."""
    tmp = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    try:
        async with Browser(tmp) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def second_browser() -> AsyncIterator[Browser]:
    """Another person's browser: its own profile, cookies and sign-in."""
    tmp = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    try:
        async with Browser(tmp) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
