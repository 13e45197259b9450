"""The dev CA issues certificates a real TLS client verifies (and refuses for other names)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from broker.tls.devca import DevCA


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=name
        )
        writer.write(b"hello")
        assert await reader.read(5) == b"hello"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_dev_ca_server_certificate_verifies_for_its_names_only(tmp_path: Path) -> None:
    ca = DevCA.load_or_create(tmp_path / "ca")
    issued = ca.issue("server", ["localhost", "127.0.0.1"])
    assert oct(issued.key_path.stat().st_mode & 0o777) == "0o600"
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(issued.cert_path, issued.key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    await _handshake(server_ctx, client_ctx, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await _handshake(server_ctx, client_ctx, "db.example.internal")
    other = DevCA.load_or_create(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(
            server_ctx, ssl.create_default_context(cafile=str(other.cert_path)), "localhost"
        )
    # Loading again reuses the same CA.
    assert DevCA.load_or_create(tmp_path / "ca").cert_path.read_bytes() == ca.cert_path.read_bytes()
