"""Prometheus metrics, one registry per app (tests run several apps in one process).

Label values are bounded: secrets are catalog names or ``"other"``, routes are route
templates, never raw paths, subjects never appear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.issuances = Counter(
            "broker_issuances_total",
            "Credential requests by catalog secret and outcome.",
            ["secret", "outcome"],
            registry=r,
        )
        self.http_latency = Histogram(
            "broker_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.vault_latency = Histogram(
            "broker_vault_request_duration_seconds",
            "Vault/OpenBao call latency by endpoint and success.",
            ["endpoint", "ok"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_commit_latency = Histogram(
            "broker_ledger_commit_duration_seconds",
            "Time to commit one ledger batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_batch_rows = Histogram(
            "broker_ledger_batch_rows",
            "Rows per committed ledger batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.ledger_rows = Counter(
            "broker_ledger_rows_total", "Ledger rows committed by this replica.", registry=r
        )
        self.ledger_head = Gauge(
            "broker_ledger_head_seq", "Newest ledger sequence number seen.", registry=r
        )
        # Read at scrape time from the writer (see app.py): how full the append queue is.
        self.ledger_queue_depth = Gauge(
            "broker_ledger_queue_depth",
            "Events waiting for the ledger writer (requests block past ledger_max_queue).",
            registry=r,
        )
        self.ledger_queue_capacity = Gauge(
            "broker_ledger_queue_capacity",
            "The writer queue's bound (ledger_max_queue).",
            registry=r,
        )
        self.ledger_checkpoint_seq = Gauge(
            "broker_ledger_checkpoint_seq", "Size of the newest signed checkpoint.", registry=r
        )
        self.ledger_partitions_until = Gauge(
            "broker_ledger_partitions_until_timestamp_seconds",
            "End of the newest monthly ledger partition (rows after it would be refused).",
            registry=r,
        )
        self.ledger_synchronous_standbys = Gauge(
            "broker_ledger_synchronous_standbys",
            "Synchronous standbys streaming from the ledger's PostgreSQL (-1: the writer role"
            " may not see them; grant it pg_read_all_stats), and whether this replica requires"
            " one.",
            ["required"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "broker_dependency_up",
            "1 if the dependency answered its last health check.",
            ["dependency"],
            registry=r,
        )
        self.signins = Counter(
            "broker_signins_total",
            "Sign-ins through an identity provider, by provider, flow and outcome"
            " (ok, or the refusal's reason).",
            ["provider", "flow", "outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "broker_auth_failures_total",
            "Rejected bearer tokens by reason.",
            ["reason"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "broker_policy_reloads_total",
            "Policy reload attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        self.policy_info = Gauge(
            "broker_policy_version_info",
            "The active policy version (value 1).",
            ["version"],
            registry=r,
        )
        self.ledger_tamper_detected = Counter(
            "broker_ledger_tamper_detected_total",
            "Checkpoint refusals: the chain no longer matches what this broker signed.",
            registry=r,
        )
        self.elevations_pending = Gauge(
            "broker_elevations_pending", "Elevation requests awaiting a decision.", registry=r
        )
        self.elevation_decision_seconds = Histogram(
            "broker_elevation_decision_seconds",
            "Time from an elevation request to its approval (quorum met).",
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.break_glass = Counter(
            "broker_break_glass_total", "Break-glass elevations taken.", registry=r
        )
        self.break_glass_unreviewed = Gauge(
            "broker_break_glass_unreviewed",
            "Break-glass uses still waiting for a second person's review.",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "broker_webhook_deliveries_total",
            "Webhook notification outcomes.",
            ["kind", "outcome"],
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "broker_tls_certificate_expiry_timestamp_seconds",
            "Not-after of the certificate the listeners serve (Unix seconds; absent without TLS).",
            registry=r,
        )
        self.tls_reloads = Counter(
            "broker_tls_certificate_reloads_total",
            "Serving certificate reloads after its files changed, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.tls_disabled = Gauge(
            "broker_tls_disabled",
            "1 when the listeners serve plaintext on a non-loopback host (tls_disable).",
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._issuance_children: dict[tuple[str, str], Any] = {}
        self.revocations = Counter(
            "broker_revocations_total", "Grants ended, by kind.", ["kind"], registry=r
        )
        self.heartbeats = Counter(
            "broker_heartbeats_total",
            "Continuity heartbeats this replica tried to append, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.offboarded_refusals = Counter(
            "broker_offboarded_refusals_total",
            "Requests refused because the subject was offboarded (valid token or not).",
            registry=r,
        )
        self.offboarded_subjects = Gauge(
            "broker_offboarded_subjects",
            "Subjects this replica currently refuses (offboarded, not reinstated).",
            registry=r,
        )
        self.ledger_verifications = Counter(
            "broker_ledger_verifications_total",
            "Ledger chain verifications (/v1/audit/verify) by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "broker_quota_refusals_total",
            "Requests refused by a quota, by limit (rate_limited, live_grants,"
            " elevation_requests, backend_busy) and principal kind (human, service).",
            ["limit", "principal_kind"],
            registry=r,
        )
        self.quota_principals_at_limit = Gauge(
            "broker_quota_principals_at_limit",
            "Principals refused by each limit in the last refusal window (an alert fires"
            " when one stays pinned).",
            ["limit"],
            registry=r,
        )
        self.bulkhead_in_use = Gauge(
            "broker_bulkhead_in_use",
            "Vault calls in flight per engine (kv2, database, pki, ssh).",
            ["engine"],
            registry=r,
        )
        self.bulkhead_waiting = Gauge(
            "broker_bulkhead_waiting",
            "Vault calls waiting for a slot per engine.",
            ["engine"],
            registry=r,
        )
        self.bulkhead_shed = Counter(
            "broker_bulkhead_shed_total",
            "Vault calls refused at once (503 backend_busy) because an engine's slots and"
            " queue were full.",
            ["engine"],
            registry=r,
        )
        # Series alert rules read exist from start-up at 0, so increase() sees the first event.
        for limit in ("rate_limited", "live_grants", "elevation_requests", "backend_busy"):
            self.quota_principals_at_limit.labels(limit)
        for outcome in ("ok", "failed"):
            self.ledger_verifications.labels(outcome)
        for outcome in ("ok", "error"):
            self.heartbeats.labels(outcome)
            self.tls_reloads.labels(outcome)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        # .labels() hashes and locks on every call; the child per label set is stable.
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_latency.labels(route, method, str(status))
        child.observe(seconds)

    def count_issuance(self, secret: str, outcome: str) -> None:
        key = (secret, outcome)
        child = self._issuance_children.get(key)
        if child is None:
            child = self._issuance_children[key] = self.issuances.labels(secret, outcome)
        child.inc()

    def on_ledger_commit(self, rows: int, seconds: float, head: int) -> None:
        self.ledger_commit_latency.observe(seconds)
        self.ledger_batch_rows.observe(rows)
        self.ledger_rows.inc(rows)
        self.ledger_head.set(head)

    def watch_ledger_contention(self, read: Callable[[], tuple[int, int]]) -> None:
        """Export the writer's running totals ``read()`` = (locked batches, conflicts) as
        ``broker_ledger_locked_batches_total`` and ``broker_ledger_conflicts_total``, read
        at scrape time. Call once per Metrics."""
        self.registry.register(_LedgerContention(read))

    def on_vault_call(self, endpoint: str, seconds: float, ok: bool) -> None:
        self.vault_latency.labels(endpoint, "true" if ok else "false").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LedgerContention:
    """Scrape-time counters of the ledger writer's contention with other replicas."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        locked, conflicts = self._read()
        yield CounterMetricFamily(
            "broker_ledger_locked_batches",
            "Ledger batches committed on the locked path (advisory lock, head read).",
            value=locked,
        )
        yield CounterMetricFamily(
            "broker_ledger_conflicts",
            "Ledger batch statements refused because another replica had moved the head"
            " (each redone under the lock).",
            value=conflicts,
        )
