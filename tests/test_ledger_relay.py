"""One ledger writer per host (``broker serve --workers``): the relay from workers 1..N-1
to worker 0's writer, over a real socket pair, into a real ledger database.

``tests/test_serve_workers.py`` runs the whole thing as processes; these tests look at the
relay's own promises: a relayed row is committed before its append returns and names the
worker that asked for it, and an append that cannot reach the writer fails closed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import asyncpg
import pytest

from broker.errors import LedgerUnavailable
from broker.ledger.relay import RelayServer, RelayWriter
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.ledger_db import fresh_ledger_db, running_ledger, sample_event


async def test_relayed_rows_commit_in_worker_zero_and_name_their_worker(
    stack: DevStack, broker_settings: Settings
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "relay") as db:
        async with running_ledger(db.writer_dsn, broker_settings, replica="host-w0") as ledger:
            serve_end, relay_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            server = RelayServer(ledger.writer, [serve_end])  # type: ignore[arg-type]
            await server.start()
            relay = RelayWriter(relay_end, replica="host-w1", max_queue=100, commit_timeout=5)
            await relay.start()
            relayed = await asyncio.gather(*(relay.append(sample_event(i)) for i in range(50)))
            local = await asyncio.gather(*(ledger.append(sample_event(i)) for i in range(50)))
            await relay.stop()
            await server.stop(5)
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT seq, replica FROM ledger.events ORDER BY seq")
        finally:
            await conn.close()
    by_seq = {r["seq"]: r["replica"] for r in rows}
    assert sorted(by_seq) == list(range(1, len(rows) + 1))  # one gapless chain
    assert all(a.seq is not None and by_seq[a.seq] == "host-w1" for a in relayed)
    assert all(a.seq is not None and by_seq[a.seq] == "host-w0" for a in local)


async def test_worker_zero_checks_a_relayed_row_as_its_own(
    stack: DevStack, broker_settings: Settings
) -> None:
    """A frame that does not decode to a valid NewEvent (here: a float in the body, which
    NewEvent refuses) is not written; worker 0 drops that connection."""
    async with fresh_ledger_db(stack, broker_settings, "relay_bad") as db:
        async with running_ledger(db.writer_dsn, broker_settings, replica="host-w0") as ledger:
            serve_end, raw = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            server = RelayServer(ledger.writer, [serve_end])  # type: ignore[arg-type]
            await server.start()
            bad = json.dumps([1, {"event": "broker.started", "outcome": "ok", "body": {"x": 1.5}}])
            raw.sendall(struct.pack(">I", len(bad)) + bad.encode())
            raw.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=raw)
            assert await reader.read() == b""  # closed, nothing answered
            writer.close()
            await server.stop(5)
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ledger.events") == 0
        finally:
            await conn.close()


async def test_a_relay_without_its_writer_fails_closed() -> None:
    """Worker 0 gone (its end closed): appends waiting and new ones raise
    LedgerUnavailable, as a local writer that cannot commit does."""
    serve_end, relay_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = RelayWriter(relay_end, replica="host-w1", max_queue=10, commit_timeout=0.5)
    await relay.start()
    waiting = asyncio.create_task(relay.append(sample_event(1)))
    await asyncio.sleep(0.05)
    request = serve_end.recv(65536)  # worker 0 read the row's frame, then died
    (size,) = struct.unpack(">I", request[:4])
    assert size == len(request) - 4 and b'"host-w1"' in request
    serve_end.close()
    with pytest.raises(LedgerUnavailable):
        await waiting
    with pytest.raises(LedgerUnavailable):
        await relay.append(sample_event(2))
    await relay.stop()


async def test_a_writer_that_never_answers_times_out_closed() -> None:
    serve_end, relay_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = RelayWriter(relay_end, replica="host-w1", max_queue=10, commit_timeout=0.1)
    await relay.start()
    try:
        with pytest.raises(LedgerUnavailable, match="did not answer"):
            await relay.append(sample_event(1))
        assert relay.queue_depth == 0
    finally:
        await relay.stop()
        serve_end.close()
