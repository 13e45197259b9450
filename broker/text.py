"""What text may enter the ledger: printable, UTF-8-encodable, no NUL.

Postgres rejects NUL in text and jsonb, and lone surrogates cannot be encoded as UTF-8;
either would fail a whole ledger batch. Control and bidi-override characters would let a
requester make the evidence read differently from what was stored. One rule, used at
every boundary where outside text comes in (request bodies, query strings, JWT claims).
"""

from __future__ import annotations

import re

__all__ = ["is_safe_text", "safe_text"]

# C0 controls except tab/newline/CR, DEL, C1 controls, bidi embeddings/overrides/isolates,
# and lone surrogates.
_UNSAFE = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def is_safe_text(value: str) -> bool:
    """True iff ``value`` may be stored and shown as evidence verbatim."""
    return _UNSAFE.search(value) is None


def safe_text(value: str, limit: int = 200) -> str:
    """``value`` cut to ``limit`` chars with each unsafe character replaced by U+FFFD.

    For outside text recorded *about* a request (a path, a user-agent), where refusing
    is not an option: the refusal itself must still be ledgered.
    """
    return _UNSAFE.sub("\ufffd", value[:limit])
