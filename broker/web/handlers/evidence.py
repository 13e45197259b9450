"""``GET /v1/audit/evidence``: the signed evidence package for a period, as a zip download.

Built into a temp file (memory bounded whatever the period), then streamed; the file is
unlinked as soon as it is open, so it is gone whatever happens to the response.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import UTC
from pathlib import Path

from aiohttp import web

from broker.evidence.package import ExportOptions, NotYetSigned, export_package
from broker.ledger import CheckpointSigner, load_or_create_signing_key

from ..keys import CHECKPOINT_VERIFIER, LEDGER, SETTINGS
from ..models import EvidenceQuery
from ..route import query_of

__all__ = ["get_evidence"]

_CHUNK = 256 * 1024


async def get_evidence(request: web.Request) -> web.StreamResponse:
    query = query_of(request, EvidenceQuery)
    period_from, period_to = query.from_, query.to
    settings = request.app[SETTINGS]
    ledger = request.app[LEDGER]
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
                        verifier=request.app[CHECKPOINT_VERIFIER],
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
    try:
        size = os.fstat(handle.fileno()).st_size
        start, end = (t.astimezone(UTC) for t in (period_from, period_to))
        name = f"evidence-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.zip"
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Length": str(size),
            }
        )
        await resp.prepare(request)
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        handle.close()
