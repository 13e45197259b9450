"""The console's form and query models (form fields decode by the API's own rules)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from broker.web.fields import Rule

__all__ = ["CallbackQuery", "DevSignIn", "GapPrefill", "NextQuery"]

_NEXT = Annotated[
    str,
    Meta(max_length=512),
    Rule(
        message="'next' must be a console path",
        check=lambda v: isinstance(v, str) and v.startswith("/console/") and "//" not in v,
    ),
]


class NextQuery(Struct, kw_only=True):
    next: _NEXT | None = None


class CallbackQuery(Struct, kw_only=True):
    code: Annotated[str, Meta(max_length=4096)] | None = None
    state: Annotated[str, Meta(max_length=512)] | None = None
    error: Annotated[str, Meta(max_length=200)] | None = None
    error_description: Annotated[str, Meta(max_length=500)] | None = None


class DevSignIn(Struct, forbid_unknown_fields=True, kw_only=True):
    identity: Annotated[str, Meta(max_length=64)]
    next: _NEXT | None = None


class GapPrefill(Struct, kw_only=True):
    """The gap annotation form, filled from a gap's row (the POST decodes the real thing)."""

    from_: Annotated[str, Meta(max_length=64)] | None = msgspec.field(default=None, name="from")
    to: Annotated[str, Meta(max_length=64)] | None = None
