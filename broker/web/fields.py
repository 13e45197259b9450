"""Decoding request bodies and query strings into typed models, with today's error codes.

A model is a ``msgspec.Struct``: its types, required fields, static ``Meta`` limits and
``forbid_unknown_fields`` are checked by msgspec (compiled, fast on the hot path). What a
type cannot say is written once, next to the field, as a ``Rule`` in its ``Annotated``
metadata: the error code and message, a limit taken from ``Settings`` (one place for
limits), the shared text rule, a conversion from the wire form (a duration, an instant)
and that wire form's schema for the OpenAPI document. A model may add a ``check(settings)``
method for rules across fields (``to`` after ``from``).

Error codes, whatever the model (kept exactly as the handlers had them):

===========================  ===========================================================
refusal                      code
===========================  ===========================================================
body not JSON / not object   ``malformed_json``
unknown body field           ``unknown_field``
unknown query parameter      ``unknown_parameter`` (models that forbid unknown ones)
required field absent/null   the rule's ``missing_code`` (default ``missing_field``)
field invalid                the rule's ``code`` (default ``invalid_<field>``)
===========================  ===========================================================
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import msgspec

from broker.errors import BadRequest
from broker.settings import Settings
from broker.text import is_safe_text

__all__ = ["Rule", "decode_body", "decode_query", "field_rules"]

T = TypeVar("T", bound=msgspec.Struct)

_FIELD_AT = re.compile(r"- at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_MISSING = re.compile(r"Object missing required field `([^`]*)`")


# eq=False: hashed by identity (a rule holds dicts; typing hashes Annotated metadata).
@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """What a field's type cannot say. Put it in the field's ``Annotated`` metadata.

    ``limit`` bounds the value: characters of a text field, the maximum of a number; an
    ``int`` or the name of the ``Settings`` attribute that holds it (one place for limits).
    A ``text`` field must pass the shared text rule (``broker.text``), is stripped, and
    blank means absent. ``parse`` turns the wire value into the field's type (raising
    ValueError when it cannot); ``check`` accepts or refuses it. ``message`` may name
    ``{limit}``. ``wire`` replaces the field's schema in the OpenAPI document when the
    wire form differs from the Python type.
    """

    code: str | None = None
    message: str | None = None
    missing_code: str = "missing_field"
    missing_message: str | None = None
    text: bool = False
    limit: int | str | None = None
    parse: Callable[[Any], Any] | None = None
    check: Callable[[Any], bool] | None = None
    wire: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # Python attribute
    key: str  # wire name
    required: bool
    rule: Rule

    def code(self) -> str:
        return self.rule.code or f"invalid_{self.key}"

    def invalid(self, settings: Settings) -> BadRequest:
        message = self.rule.message
        if message is None and self.rule.text:
            message = (
                f"'{self.key}' must be text of at most {{limit}} characters"
                " without control characters"
            )
        if message is None and self.rule.limit is not None:
            message = f"'{self.key}' must be 1..{{limit}}"
        text = (message or f"'{self.key}' is not valid").replace(
            "{limit}", str(self.limit(settings))
        )
        return BadRequest(text, code=self.code())

    def missing(self) -> BadRequest:
        return BadRequest(
            self.rule.missing_message or f"'{self.key}' is required", code=self.rule.missing_code
        )

    def limit(self, settings: Settings) -> int | None:
        bound = self.rule.limit
        return int(getattr(settings, bound)) if isinstance(bound, str) else bound


def _rule_of(annotation: Any) -> Rule | None:
    """The Rule in ``annotation``'s metadata, looking through ``X | None``."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Rule):
                return meta
        return _rule_of(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _rule_of(arg)
            if found is not None:
                return found
    return None


@cache
def field_rules(model: type[msgspec.Struct]) -> tuple[_Field, ...]:
    """Every field of ``model`` with its Rule (a default Rule when it declares none)."""
    hints = typing.get_type_hints(model, include_extras=True)
    out = []
    for f in msgspec.structs.fields(model):
        out.append(_Field(f.name, f.encode_name, f.required, _rule_of(hints[f.name]) or Rule()))
    return tuple(out)


@cache
def _by_key(model: type[msgspec.Struct]) -> dict[str, _Field]:
    return {f.key: f for f in field_rules(model)}


def _translate(
    model: type[msgspec.Struct],
    error: msgspec.ValidationError,
    settings: Settings,
    *,
    unknown_code: str,
    unknown_what: str,
) -> BadRequest:
    text = str(error)
    if m := _UNKNOWN.search(text):
        return BadRequest(f"unknown {unknown_what}: {m.group(1)[:40]!r}", code=unknown_code)
    fields = _by_key(model)
    if m := _MISSING.search(text):
        return fields[m.group(1)].missing()
    if m := _FIELD_AT.search(text):
        f = fields.get(m.group(1))
        if f is not None:
            if "got `null`" in text and f.required:
                return f.missing()
            return f.invalid(settings)
    return BadRequest("request body must be a JSON object", code="malformed_json")


def _prepare(
    model: type[msgspec.Struct], raw: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Apply the text rule and ``parse`` to the wire values, before msgspec types them."""
    for f in field_rules(model):
        value = raw.get(f.key)
        if value is None:
            continue
        rule = f.rule
        limit = f.limit(settings)
        if rule.text:
            if (
                not isinstance(value, str)
                or (limit is not None and len(value) > limit)
                or not is_safe_text(value)
            ):
                raise f.invalid(settings)
            value = value.strip() or None
            if value is None:
                if f.required:
                    raise f.missing()
                raw[f.key] = None
                continue
        elif limit is not None and isinstance(value, str):  # a bounded number, as text
            if not value.isdigit() or not 1 <= int(value) <= limit:
                raise f.invalid(settings)
            value = int(value)
        elif limit is not None and (type(value) is not int or not 1 <= value <= limit):
            raise f.invalid(settings)
        if rule.parse is not None:
            try:
                value = rule.parse(value)
            except (ValueError, TypeError) as e:
                if rule.message is not None:
                    raise f.invalid(settings) from None
                raise BadRequest(f"'{f.key}': {e}", code=f.code()) from None
        if rule.check is not None and not rule.check(value):
            raise f.invalid(settings)
        raw[f.key] = value
    return raw


def _finish(
    model: type[T],
    raw: dict[str, Any],
    settings: Settings,
    *,
    strict: bool,
    unknown_code: str,
    unknown_what: str,
) -> T:
    try:
        out = msgspec.convert(_prepare(model, raw, settings), model, strict=strict)
    except msgspec.ValidationError as e:
        raise _translate(
            model, e, settings, unknown_code=unknown_code, unknown_what=unknown_what
        ) from None
    check = getattr(out, "check", None)
    if check is not None:
        check(settings)
    return out


def _refuse_unknown(
    model: type[msgspec.Struct], keys: typing.Iterable[str], *, code: str, what: str
) -> None:
    if not model.__struct_config__.forbid_unknown_fields:
        return
    unknown = sorted(set(keys) - _by_key(model).keys())
    if unknown:
        names = ", ".join(repr(k)[:40] for k in unknown[:5])
        raise BadRequest(f"unknown {what}(s): {names}", code=code)


def decode_body(model: type[T], raw: bytes, settings: Settings, *, optional: bool = False) -> T:
    """The JSON object ``raw`` as ``model``; BadRequest with the table's codes otherwise.

    With ``optional``, an empty body is an empty object (an approval without comment).
    """
    if not raw:
        if not optional:
            raise BadRequest("request body must be a JSON object", code="malformed_json")
        body: Any = {}
    else:
        try:
            # The standard parser, not msgspec's: it reads a lone surrogate escape, so the
            # text rule refuses it by field (invalid_reason) rather than as bad JSON.
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise BadRequest("request body is not valid JSON", code="malformed_json") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object", code="malformed_json")
    # Unknown names first, as the handlers did, so a typo is named before any value.
    _refuse_unknown(model, body, code="unknown_field", what="field")
    return _finish(
        model, body, settings, strict=True, unknown_code="unknown_field", unknown_what="field"
    )


def decode_query(model: type[T], query: Mapping[str, str], settings: Settings) -> T:
    """The query string as ``model`` (values are text; numbers and booleans converted)."""
    _refuse_unknown(model, query, code="unknown_parameter", what="query parameter")
    known = _by_key(model)
    raw: dict[str, str] = {}
    for k, v in query.items():
        if k not in known:
            continue
        if k in raw:  # which one would count is anyone's guess: refuse, do not pick
            raise BadRequest(f"query parameter '{k}' is given more than once", code=f"invalid_{k}")
        raw[k] = v
    out = _finish(
        model,
        raw,
        settings,
        strict=False,
        unknown_code="unknown_parameter",
        unknown_what="query parameter",
    )
    # Lax conversion reads the text "null" as None for an optional field: not a value.
    for k, v in raw.items():
        if v == "null" and getattr(out, known[k].name) is None:
            raise known[k].invalid(settings)
    return out
