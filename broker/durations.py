"""Durations as Vault writes them (``90s``, ``15m``, ``1h``, ``1h30m``) or integer seconds."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")
_WHOLE = re.compile(r"(?:\d+[smhd])+")
_MAX_SECONDS = 10 * 365 * 86400  # anything longer is a typo, not a TTL


def parse_duration(value: object) -> int:
    """Return ``value`` in whole seconds (> 0).

    Accepts a positive int, a digit string, or a Vault-style string. Raises ``ValueError``
    with a readable message for anything else (bool, negative, zero, unknown unit, absurd size).
    """
    if isinstance(value, bool):
        raise ValueError("duration must be seconds or a string like '15m'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 32:
            raise ValueError("duration is too long")
        if not text.isascii():
            raise ValueError(f"invalid duration {value!r}: use seconds or e.g. '90s', '15m', '1h'")
        if text.isdigit():
            seconds = int(text)
        elif _WHOLE.fullmatch(text):
            seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(f"invalid duration {value!r}: use seconds or e.g. '90s', '15m', '1h'")
    else:
        raise ValueError("duration must be seconds or a string like '15m'")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    if seconds > _MAX_SECONDS:
        raise ValueError("duration is longer than ten years")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest Vault-style spelling of ``seconds`` (``3600`` -> ``1h``)."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
