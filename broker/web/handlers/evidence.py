"""``GET /v1/audit/evidence``: the signed evidence package for a period, as a zip download.

Built into a temp file (memory bounded whatever the period), then streamed; the file is
unlinked as soon as it is open, so it is gone whatever happens to the response.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from broker.evidence.package import ExportOptions, NotYetSigned, export_package
from broker.ledger import CheckpointSigner, load_or_create_signing_key

from ..keys import CHECKPOINT_VERIFIER, LEDGER, SETTINGS
from ..models import EvidenceQuery
from ..route import query_of

__all__ = ["Package", "build_package", "get_evidence", "stream_package"]

_CHUNK = 256 * 1024


async def get_evidence(request: web.Request) -> web.StreamResponse:
    query = query_of(request, EvidenceQuery)
    package = await build_package(request.app, query.from_, query.to)
    return await stream_package(request, package)


@dataclass(frozen=True)
class Package:
    """A built package: an open handle on an already unlinked file, and its name."""

    handle: BinaryIO
    name: str
    size: int


async def build_package(
    app: web.Application, period_from: datetime, period_to: datetime
) -> Package:
    """Export the package of rows recorded in [from, to) (the API's and the console's)."""
    settings = app[SETTINGS]
    ledger = app[LEDGER]
    key = await asyncio.to_thread(
        load_or_create_signing_key, settings.checkpoint_key_path, create=False
    )
    signer = CheckpointSigner(settings.checkpoint_key_name, key)
    options = ExportOptions(
        heartbeat_seconds=settings.heartbeat_seconds,
        offboarding_sla_seconds=settings.offboarding_sla_seconds,
    )
    with tempfile.TemporaryDirectory(prefix="evidence-") as tmp:
        out = Path(tmp) / "evidence.zip"
        async with ledger.pool.acquire() as conn:
            for attempt in (1, 2):
                try:
                    await export_package(
                        conn,
                        out,
                        period_from=period_from,
                        period_to=period_to,
                        signer=signer,
                        origin=ledger.origin,
                        verifier=app[CHECKPOINT_VERIFIER],
                        options=options,
                    )
                    break
                except NotYetSigned:
                    if attempt == 2:
                        raise
                    # The period ends in the unsigned tail: sign the head now, as the
                    # checkpointer would shortly (refused if the chain was rewritten).
                    await ledger.checkpoint(signer)
        handle = out.open("rb")
    # The temp dir (and file name) is gone; the open handle keeps the bytes until closed.
    start, end = (t.astimezone(UTC) for t in (period_from, period_to))
    name = f"evidence-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.zip"
    return Package(handle, name, os.fstat(handle.fileno()).st_size)


async def stream_package(
    request: web.Request,
    package: Package,
    *,
    decorate: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Send ``package`` as the zip download (closing its handle whatever happens);
    ``decorate`` adds a front end's own headers before it starts."""
    try:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{package.name}"',
                "Content-Length": str(package.size),
            }
        )
        if decorate is not None:
            decorate(resp)
        await resp.prepare(request)
        while chunk := await asyncio.to_thread(package.handle.read, _CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        package.handle.close()
