"""How one setting is declared: ``setting(default, env=..., doc=..., bounds...)``.

A setting is a field of the frozen ``Settings`` dataclass whose default is made by
``setting()``; everything else about it rides in the field's metadata as a ``Spec``. The
name is the field name and the config-file key; the type is the field's annotation. The
file loader, the environment reader, ``validate`` and the generated reference in
docs/configuration.md all read these declarations, so a setting is declared once.

``check_value`` is the one place a single value is judged against its declaration; its
message is meant to follow a label naming where the value came from (a file key, an
environment variable, or both).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

__all__ = [
    "Declared",
    "SettingsError",
    "Spec",
    "check_value",
    "declarations",
    "format_number",
    "setting",
]

_T = TypeVar("_T")
_SPEC = "broker.settings"  # the metadata key of a field's Spec


class SettingsError(ValueError):
    """The configuration is invalid. ``problems`` lists each one, naming the file key or
    the environment variable; ``str()`` joins them on one line."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Spec:
    """What a setting declares beyond its name, type and default."""

    env: str
    doc: str
    section: str
    # Bounds of a number: ge/le inclusive, gt exclusive.
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    ignore_case: bool = False
    # {value of this setting: the setting that value needs}.
    requires: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # A path that must name a readable file when set.
    readable_file: bool = False
    # A secret: read from the environment only, refused in the config file.
    secret: bool = False
    # A database URL: the config file may not carry its password.
    dsn: bool = False
    # How the reference shows the default when the value alone would mislead.
    default_text: str | None = None


def setting(
    default: _T | None = None,
    *,
    env: str,
    doc: str,
    section: str,
    factory: Callable[[], _T] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] = (),
    ignore_case: bool = False,
    requires: Mapping[str, str] | None = None,
    readable_file: bool = False,
    secret: bool = False,
    dsn: bool = False,
    default_text: str | None = None,
) -> _T:
    """A dataclass field carrying its ``Spec``; typed as the default for the dataclass."""
    spec = Spec(
        env=env,
        doc=doc,
        section=section,
        ge=ge,
        gt=gt,
        le=le,
        choices=choices,
        ignore_case=ignore_case,
        requires=MappingProxyType(dict(requires or {})),
        readable_file=readable_file,
        secret=secret,
        dsn=dsn,
        default_text=default_text,
    )
    metadata = {_SPEC: spec}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return cast(_T, dataclasses.field(default=default, metadata=metadata))


@dataclass(frozen=True)
class Declared:
    """One declared setting: its name (= file key), type, default and ``Spec``."""

    name: str
    hint: Any
    spec: Spec
    _field: dataclasses.Field[Any]

    @property
    def file_key(self) -> str:
        return self.name

    @property
    def env(self) -> str:
        return self.spec.env

    @property
    def is_duration(self) -> bool:
        """Keys ending in ``_seconds`` also take a duration string (``"90s"``)."""
        return self.name.endswith("_seconds")

    def default(self) -> Any:
        if self._field.default_factory is not dataclasses.MISSING:
            return self._field.default_factory()
        return self._field.default

    @property
    def label(self) -> str:
        """Both names, for a problem found after the file and environment were merged."""
        return f"{self.name} ({self.env})"


def declarations(cls: type[Any]) -> tuple[Declared, ...]:
    """Every field of dataclass ``cls`` in order; each must have been made by ``setting()``."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_SPEC)
        if not isinstance(spec, Spec):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        found.append(Declared(f.name, hints[f.name], spec, f))
    return tuple(found)


def check_value(declared: Declared, value: Any) -> str | None:
    """What is wrong with ``value`` for ``declared`` (to follow a label), or None."""
    spec = declared.spec
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _check_number(spec, value)
    if isinstance(value, str) and spec.choices:
        seen = value.lower() if spec.ignore_case else value
        if seen not in spec.choices:
            return f"must be one of {', '.join(spec.choices)}, got {value!r}"
    if spec.readable_file and isinstance(value, Path) and not _readable(value):
        return f"must be a readable file, got {str(value)!r}"
    return None


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


def _check_number(spec: Spec, value: float) -> str | None:
    shown = format_number(value)
    if not math.isfinite(value):
        return f"must be a finite number, got {shown}"
    low, high = spec.ge, spec.le
    if low is not None and high is not None:
        if not low <= value <= high:
            return f"must be {format_number(low)}-{format_number(high)}, got {shown}"
    elif low is not None and value < low:
        if low == 0:
            return f"must not be negative, got {shown}"
        return f"must be at least {format_number(low)}, got {shown}"
    elif high is not None and value > high:
        return f"must be at most {format_number(high)}, got {shown}"
    if spec.gt is not None and not value > spec.gt:
        if spec.gt == 0:
            return f"must be positive, got {shown}"
        return f"must be above {format_number(spec.gt)}, got {shown}"
    return None


def format_number(value: float) -> str:
    """``5.0`` as ``5``; other numbers as Python writes them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
