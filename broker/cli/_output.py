"""How client commands print: JSON as the broker sent it, or tables and lines for people.

Every value that came from the broker goes through ``cell`` (or ``when``) before it reaches
the terminal: other people's reasons and comments are shown, never interpreted, so control
characters are replaced.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["cell", "print_json", "short", "table", "when"]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cell(value: Any, width: int | None = None) -> str:
    """Display text: no control characters (other people's reasons reach this terminal)."""
    text = "-" if value is None or value == "" else str(value)
    text = "".join(c if c.isprintable() else " " for c in text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def when(value: Any) -> str:
    """An ISO time from the broker as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), ``-`` when absent."""
    if not isinstance(value, str):
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return cell(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def short(value: Any) -> str:
    """The short ID the tables show (and ``resolve_id`` accepts back)."""
    return str(value)[:8]
