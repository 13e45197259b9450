"""The human summary of an evidence package: one self-contained HTML page.

Counts, a timeline of grants, access by secret and by month (inline SVG, no scripts, no
external resources), the findings and the Trust Services Criteria map. Pure: every value
is escaped; the inputs are already bounded (counters, a capped list of intervals).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["render_summary"]

_SEVERITIES = ("material_weakness", "finding", "observation")
_COLORS = {"revoked": "#c0392b", "expired": "#7f8c8d", "open": "#2980b9"}
_MAX_LANES = 12
_MAX_BARS = 20

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.num{text-align:right}.material_weakness{color:#b00020;font-weight:600}
.finding{color:#a15c00}.observation{color:#555}.ok{color:#1e7e34}.bad{color:#b00020}
svg text{font:11px system-ui,sans-serif}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _hbars(counts: Mapping[str, int], title: str) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_BARS]
    if not items:
        return "<p>none</p>"
    top = max(v for _, v in items)
    label_w, bar_w, row_h = 180, 520, 20
    height = row_h * len(items) + 10
    parts = [
        f'<svg role="img" aria-label="{_e(title)}" width="{label_w + bar_w + 80}"'
        f' height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (name, value) in enumerate(items):
        y = 5 + i * row_h
        w = max(1, round(bar_w * value / top))
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(name[:28])}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 6}" fill="#2980b9">'
            f"<title>{_e(name)}: {value}</title></rect>"
            f'<text x="{label_w + w + 5}" y="{y + 13}">{value}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _vbars(counts: Mapping[str, int], title: str) -> str:
    items = sorted(counts.items())[-36:]  # three years of months at most
    if not items:
        return "<p>none</p>"
    top = max(v for _, v in items)
    col_w, plot_h = 40, 160
    width = col_w * len(items) + 20
    parts = [
        f'<svg role="img" aria-label="{_e(title)}" width="{width}" height="{plot_h + 45}"'
        ' xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (month, value) in enumerate(items):
        h = max(1, round(plot_h * value / top))
        x = 10 + i * col_w
        parts.append(
            f'<rect x="{x + 4}" y="{plot_h - h + 15}" width="{col_w - 8}" height="{h}"'
            f' fill="#16a085"><title>{_e(month)}: {value}</title></rect>'
            f'<text x="{x + col_w / 2}" y="{plot_h - h + 11}" text-anchor="middle">{value}</text>'
            f'<text x="{x + col_w / 2}" y="{plot_h + 30}" text-anchor="middle">{_e(month)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _timeline(
    intervals: Sequence[tuple[str, str, str | None, str]],
    period_from: datetime,
    period_to: datetime,
    total: int,
) -> str:
    """One lane per secret (busiest first), one bar per grant from issue to end."""
    if not intervals:
        return "<p>no grants in the period</p>"
    lane_count: dict[str, int] = {}
    for _, secret, _, _ in intervals:
        lane_count[secret] = lane_count.get(secret, 0) + 1
    lanes = [s for s, _ in sorted(lane_count.items(), key=lambda kv: (-kv[1], kv[0]))]
    if len(lanes) > _MAX_LANES:
        lanes = [*lanes[: _MAX_LANES - 1], "(other)"]
    lane_of = {s: i for i, s in enumerate(lanes)}
    start = period_from
    stop = min(period_to, max((_time(i[2]) or period_to for i in intervals), default=period_to))
    stop = max(stop, max((_time(i[0]) or start for i in intervals), default=start))
    span = max((stop - start).total_seconds(), 1.0)
    label_w, plot_w, lane_h = 160, 800, 22
    height = lane_h * len(lanes) + 40
    parts = [
        f'<svg role="img" aria-label="timeline of grants" width="{label_w + plot_w + 20}"'
        f' height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for name, i in lane_of.items():
        y = 5 + i * lane_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_e(name[:24])}</text>'
            f'<line x1="{label_w}" x2="{label_w + plot_w}" y1="{y + lane_h - 2}"'
            f' y2="{y + lane_h - 2}" stroke="#eee"/>'
        )
    for issued, secret, ended, how in intervals:
        t0 = _time(issued)
        if t0 is None:
            continue
        t1 = _time(ended) or stop
        x0 = label_w + plot_w * max(0.0, (t0 - start).total_seconds()) / span
        x1 = label_w + plot_w * min(span, max(0.0, (t1 - start).total_seconds())) / span
        y = 5 + lane_of.get(secret, len(lanes) - 1) * lane_h
        color = _COLORS.get(how, _COLORS["open"])
        parts.append(
            f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(1.5, x1 - x0):.1f}" height="12"'
            f' fill="{color}" fill-opacity="0.55"><title>{_e(secret)} {_e(issued)}'
            f" → {_e(ended or 'open')} ({_e(how)})</title></rect>"
        )
    axis_y = height - 18
    parts.append(
        f'<text x="{label_w}" y="{axis_y + 12}">{_e(start.isoformat(timespec="minutes"))}</text>'
        f'<text x="{label_w + plot_w}" y="{axis_y + 12}" text-anchor="end">'
        f"{_e(stop.isoformat(timespec='minutes'))}</text></svg>"
    )
    note = (
        f"<p>Showing the first {len(intervals)} of {total} grants.</p>"
        if total > len(intervals)
        else ""
    )
    legend = " ".join(f'<span style="color:{c}">■</span> {_e(k)}' for k, c in _COLORS.items())
    return "".join(parts) + f"<p>{legend}</p>" + note


def render_summary(
    *,
    origin: str,
    period_from: datetime,
    period_to: datetime,
    rows: int,
    period_rows: int,
    event_counts: Mapping[str, int],
    by_secret: Mapping[str, int],
    by_month: Mapping[str, int],
    subjects: int,
    timeline: Sequence[tuple[str, str, str | None, str]],
    timeline_total: int,
    findings: Sequence[Mapping[str, Any]],
    verification_ok: bool | None,
    policy_versions: Sequence[str],
    tsc: Mapping[str, Mapping[str, Any]],
) -> str:
    """The whole page as a string (UTF-8, self-contained)."""
    by_severity = {s: [f for f in findings if f["severity"] == s] for s in _SEVERITIES}
    counts = [
        ("ledger rows in the period", period_rows),
        ("rows in the package (with context and the signed tail)", rows),
        ("grants issued", event_counts.get("grant.issued", 0)),
        ("grants revoked", event_counts.get("grant.revoked", 0)),
        ("grants expired", event_counts.get("grant.expired", 0)),
        ("requests denied", event_counts.get("grant.denied", 0)),
        ("elevations requested", event_counts.get("elevation.requested", 0)),
        ("elevations activated", event_counts.get("elevation.activated", 0)),
        ("offboardings completed", event_counts.get("subject.offboarded", 0)),
        ("reviews completed", event_counts.get("review.completed", 0)),
        ("distinct subjects with grants", subjects),
        ("policy versions in force", len(policy_versions)),
    ]
    verdict = (
        '<span class="ok">intact</span>'
        if verification_ok
        else '<span class="bad">FAILED — see verification.json</span>'
        if verification_ok is False
        else "not run"
    )
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Access evidence {_e(period_from.date())} to {_e(period_to.date())}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Access evidence: {_e(period_from.isoformat())} to {_e(period_to.isoformat())}</h1>",
        f"<p>Ledger <code>{_e(origin)}</code>. Chain verification at export: {verdict}. "
        "Findings: "
        + ", ".join(
            f'<span class="{s}">{len(by_severity[s])} {s.replace("_", " ")}</span>'
            for s in _SEVERITIES
        )
        + ".</p>",
        "<h2>Counts</h2><table>",
        *(f'<tr><td>{_e(k)}</td><td class="num">{v}</td></tr>' for k, v in counts),
        "</table>",
        "<h2>Timeline of grants</h2>",
        _timeline(timeline, period_from, period_to, timeline_total),
        "<h2>Access by secret (grants issued)</h2>",
        _hbars(by_secret, "grants issued by secret"),
        "<h2>Access by month (grants issued)</h2>",
        _vbars(by_month, "grants issued by month"),
        "<h2>Findings</h2>",
    ]
    if findings:
        out.append("<table><tr><th>severity</th><th>kind</th><th>seq</th><th>message</th></tr>")
        for s in _SEVERITIES:
            for f in by_severity[s]:
                seq = f.get("seq")
                out.append(
                    f'<tr><td class="{s}">{_e(s.replace("_", " "))}</td><td>{_e(f["kind"])}</td>'
                    f'<td class="num">{_e(seq if seq is not None else "")}</td>'
                    f"<td>{_e(f['message'])}</td></tr>"
                )
        out.append("</table>")
    else:
        out.append("<p>No findings.</p>")
    out.append("<h2>Trust Services Criteria</h2><table><tr><th>criterion</th><th>what</th>")
    out.append("<th>evidence in this package</th></tr>")
    for cc, spec in tsc.items():
        files = ", ".join(f"<code>{_e(f)}</code>" for f in spec["files"])
        out.append(f"<tr><td>{_e(cc)}</td><td>{_e(spec['title'])}</td><td>{files}</td></tr>")
    out.append("</table>")
    out.append(
        "<h2>Policy versions in force</h2><ul>"
        + "".join(f"<li><code>{_e(v)}</code></li>" for v in policy_versions)
        + "</ul>"
    )
    out.append(
        "<p>Check this package offline with <code>broker evidence check FILE.zip</code>:"
        " it verifies the signed manifest, every file's SHA-256, the hash chain up to a"
        " signed checkpoint, and re-derives the findings.</p></body></html>\n"
    )
    return "\n".join(out)
