"""A runaway client in a process of its own: ``concurrency`` tasks asking in a tight loop.

Run as ``python -m tests.support.flood`` with a JSON spec on stdin (``url``, ``token``,
``secret``, ``seconds``, ``concurrency``). On stdout it prints ``{"flooding": <time>}`` as
it starts, then one JSON report: answers by ``"<status> <error code>"``, the grants it
was given (id and lease id), and when its first request left and its last answer came
(``time.time()``). A process of its own so that its CPU (parsing thousands of refusals a
second) is not the measuring client's: what a steady client sees next to it is the
broker's doing. Like a retry storm, it ignores ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

__all__ = ["flood"]


def _code(body: Any) -> str:
    try:
        return str(body["error"]["code"])
    except (KeyError, TypeError):
        return "not-json"


async def flood(spec: dict[str, Any]) -> dict[str, Any]:
    """Ask for ``spec["secret"]`` from ``spec["concurrency"]`` tasks for ``spec["seconds"]``."""
    answers: Counter[str] = Counter()
    grants: list[dict[str, str]] = []
    errors: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {spec['token']}"}
    body = {"secret": spec["secret"], "reason": "runaway client"}
    started = time.time()
    print(json.dumps({"flooding": started}), flush=True)
    deadline = time.monotonic() + float(spec["seconds"])
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=int(spec["concurrency"]))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def one() -> None:
            while time.monotonic() < deadline:
                try:
                    async with http.post(
                        f"{spec['url']}/v1/credentials", json=body, headers=headers
                    ) as r:
                        got = await r.json(content_type=None)
                        if r.status == 201:
                            grants.append({"id": got["id"], "lease_id": got["lease_id"]})
                            answers["201"] += 1
                        else:
                            answers[f"{r.status} {_code(got)}"] += 1
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    errors[type(e).__name__] += 1

        await asyncio.gather(*(one() for _ in range(int(spec["concurrency"]))))
    return {
        "answers": dict(answers),
        "errors": dict(errors),
        "grants": grants,
        "started": started,
        "ended": time.time(),
    }


def main() -> int:
    report = asyncio.run(flood(json.load(sys.stdin)))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
