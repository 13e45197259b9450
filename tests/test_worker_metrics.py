"""Merging the workers' metrics (broker/worker_metrics.py): pure parts, real registries."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import Metrics
from broker.worker_metrics import WorkerMetrics, merge_expositions


def _samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == name
    }


def test_every_workers_series_is_labelled_with_its_worker(tmp_path: Path) -> None:
    workers = [Metrics(), Metrics()]
    workers[0].count_issuance("stripe/test", "issued")
    for _ in range(3):
        workers[1].count_issuance("stripe/test", "issued")
    workers[1].observe_http("/v1/credentials", "POST", 201, 0.02)
    shared = [WorkerMetrics(tmp_path, i, m) for i, m in enumerate(workers)]
    shared[1].publish()

    text = shared[0].render()  # worker 0 is scraped: its own series fresh, 1's from its file

    issued = _samples(text, "broker_issuances_total")
    assert issued == {
        (("outcome", "issued"), ("secret", "stripe/test"), ("worker", "0")): 1.0,
        (("outcome", "issued"), ("secret", "stripe/test"), ("worker", "1")): 3.0,
    }
    # Each family once, with every worker's samples (a histogram's buckets included).
    assert text.decode().count("# TYPE broker_issuances_total counter") == 1
    buckets = _samples(text, "broker_http_request_duration_seconds_count")
    assert list(buckets.values()) == [1.0] and ("worker", "1") in next(iter(buckets))
    # Worker 0 counts on and publishes (every second, as it runs); a scrape of worker 1
    # sees it.
    workers[0].count_issuance("stripe/test", "issued")
    shared[0].publish()
    later = _samples(shared[1].render(), "broker_issuances_total")
    assert sum(later.values()) == 5.0
    shared[1].remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.prom"]


def test_an_unreadable_exposition_is_left_out() -> None:
    good = Metrics()
    good.count_issuance("stripe/test", "issued")
    text = merge_expositions({"0": good.render().decode(), "1": "not { an exposition"})
    assert set(_samples(text, "broker_issuances_total")) == {
        (("outcome", "issued"), ("secret", "stripe/test"), ("worker", "0"))
    }


def test_a_scrape_never_shows_less_than_the_one_before(tmp_path: Path) -> None:
    a, b = Metrics(), Metrics()
    shared = [WorkerMetrics(tmp_path, i, m) for i, m in enumerate((a, b))]
    for w in shared:
        w.publish()
    b.count_issuance("stripe/test", "issued")  # after b's last publication
    first = _samples(shared[1].render(), "broker_issuances_total")  # a scrape lands on b
    second = _samples(shared[0].render(), "broker_issuances_total")  # the next one on a
    assert sum(first.values()) == sum(second.values()) == 1.0
