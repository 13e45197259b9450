"""``/metrics`` under ``broker serve --workers N``: every worker's series, whichever is asked.

The kernel hands each connection to one worker, so successive scrapes of a pod land on
different workers; if each answered with its own counters only, they would jump between
scrapes, which Prometheus reads as resets. Instead each worker keeps its exposition in
``<directory>/<index>.prom`` (a private directory the supervisor makes, and removes when
it exits), rewritten every ``interval`` seconds and when it is scraped, and answers a
scrape with every worker's file, each sample labelled ``worker="<index>"``. Counters are
then per worker and never go backwards (``sum without (worker)`` adds them up); most
gauges read the same on every worker (the ledger head, pending elevations). The other
workers' series are at most ``interval`` old. A worker removes its file when it stops.
With one process (``workers = 1``) none of this runs and no ``worker`` label is added.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import Metrics

__all__ = ["WorkerMetrics", "merge_expositions"]

_log = logging.getLogger(__name__)

PUBLISH_SECONDS = 1.0  # how stale another worker's series may be in a scrape


class WorkerMetrics:
    """Worker ``index``'s part: publish its own series, render everyone's."""

    def __init__(
        self, directory: Path, index: int, metrics: Metrics, *, interval: float = PUBLISH_SECONDS
    ) -> None:
        self._directory = directory
        self._index = index
        self._metrics = metrics
        self.interval = interval  # the app publishes this often (broker/app.py)

    @property
    def path(self) -> Path:
        return self._directory / f"{self._index}.prom"

    def publish(self, exposition: bytes | None = None) -> None:
        """Replace this worker's file with ``exposition`` (default: its series now),
        atomically: readers never see half of one."""
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(self._metrics.render() if exposition is None else exposition)
        os.replace(partial, self.path)

    def remove(self) -> None:
        """Remove this worker's file (it is stopping)."""
        with contextlib.suppress(OSError):
            self.path.unlink()

    def render(self) -> bytes:
        """Every worker's series, each labelled with its worker: this one's now (published
        first, so a later scrape of another worker never shows less), the others' as they
        last published."""
        own = self._metrics.render()
        try:
            self.publish(own)
        except OSError as e:  # the directory is gone: still answer
            _log.warning("cannot publish this worker's metrics: %s", e)
        texts: dict[str, str] = {}
        for file in sorted(self._directory.glob("*.prom")):
            with contextlib.suppress(OSError):  # a worker stopping removes its file
                texts[file.stem] = file.read_text()
        texts[str(self._index)] = own.decode()
        return merge_expositions(texts)


def merge_expositions(texts: Mapping[str, str]) -> bytes:
    """One exposition of ``texts`` (worker -> its text format), every sample labelled
    ``worker``; families of the same name are joined. A text that does not parse is left
    out (and logged), not the scrape failed."""
    families: dict[str, Metric] = {}
    for worker, text in texts.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as e:
            _log.warning("worker %s published unreadable metrics: %s", worker, e)
            continue
        for family in parsed:
            joined = families.get(family.name)
            if joined is None:
                joined = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = joined
            joined.samples += [
                s._replace(labels={**s.labels, "worker": worker}) for s in family.samples
            ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)


class _Families:
    """A collector of families already built (the merged ones)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
