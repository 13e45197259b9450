"""Alerts and dashboard stay true to the broker: every metric they query is on /metrics.

Metric names are taken from the PromQL itself (parsed with ``promql-parser``), not by
regex, and looked up in a live broker's ``/metrics`` parsed with prometheus_client's own
text parser. The alert file's shape (expr, for, severity, summary, runbook anchor in
docs/operations.md) is checked too, and the chart's copy must be identical.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import RunningBroker
from tests.support.http import auth, issue

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
CHART_ALERTS = REPO / "helm" / "jit-broker" / "files" / "alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "jit-broker.json"
RUNBOOK = REPO / "docs" / "operations.md"

# Series Prometheus itself writes per scrape target; not on the broker's /metrics.
SCRAPE_SERIES = {"up"}
# Which sample suffixes each exposition type has (prometheus_client strips them from the
# family name: a counter family "x" is exposed as x_total and x_created).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": (),
}
SEVERITIES = {"critical", "warning", "info"}
# Grafana's template variables, replaced by what they stand for so the PromQL parses.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "${job}": ".*", "$job": ".*"}


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            for target in panel.get("targets", ()):
                yield target["expr"]
            yield from walk(panel.get("panels", []))

    exprs = list(walk(doc["panels"]))
    exprs += [a["expr"] for a in doc.get("annotations", {}).get("list", []) if "expr" in a]
    for var in doc["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict) and query.get("query", "").startswith("label_values("):
            # label_values(metric, label) is Grafana's, not PromQL: check the metric part.
            exprs.append(query["query"][len("label_values(") :].split(",")[0])
    return exprs


def _grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def _selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) of every vector selector in ``expr``."""
    found: list[tuple[str, list[tuple[str, str, str]]]] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            matchers = [(m.name, str(m.op), m.value) for m in node.matchers.matchers]
            found.append((node.name, matchers))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _all_selectors() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    out = [
        (f"alert {rule['alert']}", name, matchers)
        for rule in _alert_rules()
        for name, matchers in _selectors(rule["expr"])
    ]
    out += [
        (f"dashboard {expr[:60]}", name, matchers)
        for expr in _dashboard_exprs()
        for name, matchers in _selectors(_grafana_to_promql(expr))
    ]
    return out


def _github_anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub renders them (lowercase, punctuation dropped, - for space)."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


# --- static checks: no broker needed -------------------------------------------------------


def test_alert_rules_have_the_required_fields() -> None:
    rules = _alert_rules()
    assert len(rules) >= 10
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    anchors = _github_anchors(RUNBOOK.read_text())
    for rule in rules:
        where = rule["alert"]
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), where
        assert re.fullmatch(r"\d+[smhd]", str(rule.get("for", ""))), (where, rule.get("for"))
        assert rule.get("labels", {}).get("severity") in SEVERITIES, where
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), where
        url = annotations.get("runbook_url", "")
        match = re.fullmatch(r"docs/operations\.md#([a-z0-9-]+)", url)
        assert match, (where, url)
        assert match.group(1) in anchors, f"{where}: no heading for #{match.group(1)}"


def test_alerts_cover_what_operations_must_hear_about() -> None:
    exprs = " ".join(r["expr"] for r in _alert_rules())
    for needle in (
        'dependency="ledger"',
        'dependency="vault"',
        "broker_heartbeats_total",
        "broker_ledger_tamper_detected_total",
        "broker_ledger_verifications_total",
        "broker_elevations_pending",
        'status=~"5.."',
        "broker_ledger_queue_depth",
    ):
        assert needle in exprs, needle


def test_every_expression_parses_as_promql() -> None:
    for rule in _alert_rules():
        promql_parser.parse(rule["expr"])
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        promql_parser.parse(_grafana_to_promql(expr))


def test_a_bad_expression_does_not_parse() -> None:
    """The negative control for the parse test above."""
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(broker_issuances_total[5m])")


def test_chart_embeds_the_same_alert_rules() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        "helm/jit-broker/files/alerts.yaml differs: cp deploy/prometheus/alerts.yaml there"
    )


def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "jit-broker" and doc["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in (
        "issuance rate by outcome",
        "latency quantiles",
        "ledger commit latency",
        "batch size",
        "vault call latency",
        "vault call errors",
        "elevations pending",
        "elevation decision latency",
        "break-glass",
        "auth failures",
        "policy version",
        "replicas up",
    ):
        assert topic in titles, topic
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_label_values_in_matchers_are_words_the_broker_writes() -> None:
    """A typo in a label value (outcome="invalids") would make an alert silently never fire."""
    source = "\n".join(p.read_text() for p in (REPO / "broker").rglob("*.py"))
    for where, name, matchers in _all_selectors():
        for label, op, value in matchers:
            if label in ("job", "__name__") or name in SCRAPE_SERIES:
                continue
            words = value.split("|") if "=~" in op or "Re" in op else [value]
            for word in words:
                if re.fullmatch(r"[a-z_]+", word):
                    assert f'"{word}"' in source, f"{where}: {label}={word!r} never written"


# --- against a live broker --------------------------------------------------------------------


async def _metrics_families(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> dict[str, tuple[str, set[str], set[str]]]:
    """family name -> (type, sample names, label names), after traffic that labels series."""
    async with http.get(f"{broker.url}/v1/health") as r:
        assert r.status == 200, await r.text()
    await issue(http, broker.url, tokens["alice"], "stripe/test", reason="deploy metrics test")
    async with http.get(f"{broker.url}/v1/me", headers=auth("not-a-jwt")) as r:
        assert r.status == 401
    async with http.get(f"{broker.url}/v1/audit/verify", headers=auth(tokens["carol"])) as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{broker.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    families: dict[str, tuple[str, set[str], set[str]]] = {}
    for family in text_string_to_metric_families(text):
        labels = {label for s in family.samples for label in s.labels} - {"le", "quantile"}
        families[family.name] = (family.type, {s.name for s in family.samples}, labels)
    return families


def _resolve(name: str, families: dict[str, tuple[str, set[str], set[str]]]) -> str | None:
    """The family ``name`` belongs to, honouring each type's sample suffixes.

    A gauge is queried by its family name; a counter only as ``x_total``, a histogram only
    as ``x_bucket``/``x_sum``/``x_count`` (their bare family names are no series).
    """
    if name in families:
        return name if families[name][0] in ("gauge", "unknown", "untyped") else None
    for family, (kind, _, _) in families.items():
        if any(name == family + suffix for suffix in SUFFIXES.get(kind, ())):
            return family
    return None


async def test_every_queried_metric_exists_on_a_live_broker(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    families = await _metrics_families(broker, tokens, http)
    assert "broker_ledger_verifications" in families  # the counter this work added
    missing: list[str] = []
    bad_labels: list[str] = []
    used: set[str] = set()
    for where, name, matchers in _all_selectors():
        if name in SCRAPE_SERIES:
            continue
        family = _resolve(name, families)
        if family is None:
            missing.append(f"{where}: {name}")
            continue
        used.add(family)
        _, samples, labels = families[family]
        # Label names are checked where the family has samples to show them.
        for label, _, _ in matchers:
            if label != "job" and samples and labels and label not in labels:
                bad_labels.append(f"{where}: {name} has no label {label!r} (has {labels})")
    assert not missing, "metrics not on /metrics:\n" + "\n".join(missing)
    assert not bad_labels, "\n".join(bad_labels)
    # Families the alerts and dashboard lean on hardest must really be in use.
    assert {
        "broker_issuances",
        "broker_http_request_duration_seconds",
        "broker_ledger_commit_duration_seconds",
        "broker_dependency_up",
        "broker_ledger_tamper_detected",
        "broker_heartbeats",
    } <= used


def test_resolve_rejects_wrong_suffixes() -> None:
    """The negative control for the lookup above: wrong suffixes do not resolve."""
    families = {
        "broker_ledger_rows": ("counter", {"broker_ledger_rows_total"}, set()),
        "broker_ledger_batch_rows": ("histogram", {"broker_ledger_batch_rows_bucket"}, set()),
        "broker_ledger_head_seq": ("gauge", {"broker_ledger_head_seq"}, set()),
    }
    assert _resolve("broker_ledger_rows_total", families) == "broker_ledger_rows"
    assert _resolve("broker_ledger_batch_rows_bucket", families) == "broker_ledger_batch_rows"
    assert _resolve("broker_ledger_head_seq", families) == "broker_ledger_head_seq"
    assert _resolve("broker_ledger_rows", families) is None
    assert _resolve("broker_ledger_rows_bucket", families) is None
    assert _resolve("broker_ledger_head_seq_total", families) is None
    assert _resolve("broker_ledger_batch_rows", families) is None
