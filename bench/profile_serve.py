"""Run ``broker serve`` under a profiler; write the result to ``$BENCH_PROFILE_OUT`` on exit.

Started by ``bench/issuance.py --profile PATH`` in place of ``.venv/bin/broker serve``
(same environment). SIGTERM stops the broker gracefully, then the result is written.

``BENCH_PROFILE_MODE``:

- ``sample`` (default): a CPU-time sampling profiler (``SIGPROF`` every 1 ms of process
  CPU). Cheap, so the rates stay close to an unprofiled run; time in C code (a signature
  check, a socket write) is charged to the Python line that called it. Writes collapsed
  stacks (``PATH``, flamegraph.pl / speedscope format) and a summary (``PATH.txt``).
  SIGUSR1 starts a counted window (the first one drops everything before it), SIGUSR2
  ends it: ``issuance.py`` brackets each measured broker phase with them.
- ``cprofile``: deterministic cProfile with the thread CPU clock; writes pstats to PATH.
  Its per-call overhead inflates code with many tiny calls (e.g. PyJWT's per-character
  base64 check): read shares with care.
- ``none``: no profiler (use with ``BENCH_PATCHES``).

``BENCH_PATCHES`` (comma list) applies *experiments* in this process only, to size a
proposed change before anyone writes it in ``broker/``; never use them for real figures:

- ``jwtcache``: remember ``Authorization`` header -> Principal for 60 s (upper bound of
  a verified-token cache; the real one must bound size and respect ``exp``/key rotation).
- ``kvcache``: remember KV v2 reads for 1 s (upper bound of a short KV read cache).
- ``nometrics``: make the per-request prometheus ``labels(...).observe/inc`` no-ops.
- ``ledgerconn``: the ledger writer keeps one pool connection for good, instead of
  acquire/release per batch (release runs a reset query: one round trip per batch less).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

_SKIP_FILES = ("/asyncio/", "uvloop", "<frozen")
_REPO = f"{Path(__file__).resolve().parent.parent}/"  # any checkout or worktree


def _label(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", _REPO, "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_name}"


class Sampler:
    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.stacks: Counter[tuple[str, ...]] = Counter()
        self.samples = 0
        self.cpu_start = time.process_time()
        self.cpu_counted = 0.0  # process CPU inside closed counting windows
        self.counting = True
        self.windows = 0  # SIGUSR1s received

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.counting:
            return
        self.samples += 1
        stack: list[str] = []
        while frame is not None:
            stack.append(_label(frame))
            frame = frame.f_back
        stack.reverse()
        self.stacks[tuple(stack)] += 1

    def _resume(self, signum: int, frame: FrameType | None) -> None:
        # bench/issuance.py sends SIGUSR1 when a measured broker phase starts (the first
        # one drops start-up and warm-up) and SIGUSR2 when it ends: the profile covers the
        # measured broker windows only, summed over its concurrencies.
        if self.windows == 0:
            self.stacks.clear()
            self.samples = 0
            self.cpu_counted = 0.0
        if not self.counting or self.windows == 0:
            self.cpu_start = time.process_time()
        self.windows += 1
        self.counting = True

    def _pause(self, signum: int, frame: FrameType | None) -> None:
        if self.counting:
            self.cpu_counted += time.process_time() - self.cpu_start
        self.counting = False

    def cpu_seconds(self) -> float:
        open_window = time.process_time() - self.cpu_start if self.counting else 0.0
        return self.cpu_counted + open_window

    def start(self) -> None:
        signal.signal(signal.SIGUSR1, self._resume)
        signal.signal(signal.SIGUSR2, self._pause)
        signal.signal(signal.SIGPROF, self._on_signal)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def write(self, out: Path, top: int = 45) -> None:
        with out.open("w") as f:
            for stack, n in self.stacks.most_common():
                f.write(";".join(stack) + f" {n}\n")
        own: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            own[stack[-1]] += n
            for name in set(stack):
                incl[name] += n
        total = max(1, self.samples)
        cpu = self.cpu_seconds()
        lines = [
            f"{self.samples} samples over {cpu:.1f} s process CPU "
            f"(~{1000 * cpu / total:.1f} ms CPU per sample; the kernel tick bounds the rate)\n"
        ]
        lines.append(f"\n-- top {top} by own samples (leaf frame) --\n")
        lines += [f"{100 * n / total:6.1f}%  {name}\n" for name, n in own.most_common(top)]
        lines.append(f"\n-- top {top} by inclusive samples (on the stack) --\n")
        lines += [
            f"{100 * n / total:6.1f}%  {name}\n"
            for name, n in incl.most_common(top * 2)
            if not any(s in name for s in _SKIP_FILES)
        ][:top]
        Path(str(out) + ".txt").write_text("".join(lines))


def _apply_patches(names: set[str]) -> None:
    from typing import Any

    if "jwtcache" in names:
        from broker.auth import Verifier

        real_verify = Verifier.verify
        seen: dict[str | None, tuple[float, Any]] = {}

        async def verify(self: Any, header: str | None) -> Any:
            hit = seen.get(header)
            now = time.monotonic()
            if hit is not None and hit[0] > now:
                return hit[1]
            principal = await real_verify(self, header)
            seen[header] = (now + 60.0, principal)
            return principal

        Verifier.verify = verify  # type: ignore[method-assign,assignment]
    if "kvcache" in names:
        from broker.vault import VaultClient

        real_read = VaultClient.read_kv2
        kv: dict[tuple[str, str], tuple[float, Any]] = {}

        async def read_kv2(self: Any, mount: str, path: str) -> Any:
            hit = kv.get((mount, path))
            now = time.monotonic()
            if hit is not None and hit[0] > now:
                return hit[1]
            value = await real_read(self, mount, path)
            kv[(mount, path)] = (now + 1.0, value)
            return value

        VaultClient.read_kv2 = read_kv2  # type: ignore[method-assign]
    if "nometrics" in names:

        class _Nop:
            def labels(self, *a: object, **k: object) -> _Nop:
                return self

            def observe(self, *a: object) -> None:
                return None

            def inc(self, *a: object) -> None:
                return None

        from broker import metrics

        real_init = metrics.Metrics.__init__

        def init(self: Any, *a: Any, **k: Any) -> None:
            real_init(self, *a, **k)
            self.http_latency = _Nop()
            self.issuances = _Nop()
            self.on_vault_call = lambda *a: None

        metrics.Metrics.__init__ = init  # type: ignore[method-assign]
    if "ledgerconn" in names:
        from broker.ledger import LedgerWriter

        class _HeldConnection:
            """Stands in for the pool inside the writer: always the same connection."""

            def __init__(self, pool: Any) -> None:
                self._pool = pool
                self._conn: Any = None

            def acquire(self) -> _HeldConnection:
                return self

            async def __aenter__(self) -> Any:
                if self._conn is None:
                    self._conn = await self._pool.acquire()
                return self._conn

            async def __aexit__(self, *exc: object) -> None:
                return None

            def __getattr__(self, name: str) -> Any:
                return getattr(self._pool, name)

        real_writer_init = LedgerWriter.__init__

        def writer_init(self: Any, pool: Any, *a: Any, **k: Any) -> None:
            real_writer_init(self, _HeldConnection(pool), *a, **k)

        LedgerWriter.__init__ = writer_init  # type: ignore[method-assign]
    if names:
        print(f"BENCH PATCHES ACTIVE: {sorted(names)}", file=sys.stderr)


def main() -> int:
    out = Path(os.environ.get("BENCH_PROFILE_OUT", "broker.prof"))
    mode = os.environ.get("BENCH_PROFILE_MODE", "sample")
    _apply_patches({p for p in os.environ.get("BENCH_PATCHES", "").split(",") if p})
    from broker.cli import main as broker_main

    if mode == "none":
        return broker_main(["serve"])

    if mode == "cprofile":
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        try:
            return broker_main(["serve"])
        finally:
            profiler.disable()
            profiler.dump_stats(out)
            print(f"profile written to {out}", file=sys.stderr)
    sampler = Sampler()
    sampler.start()
    try:
        return broker_main(["serve"])
    finally:
        sampler.stop()
        sampler.write(out)
        print(f"profile written to {out} and {out}.txt", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
