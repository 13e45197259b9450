"""Reading settings: defaults < TOML config file < environment, every value checked.

- ``from_env`` is the only reader of the environment (``os.environ`` unless given a
  mapping); ``load`` adds the config file (``config_path``, else ``BROKER_CONFIG``).
- Both check each value where it is read, so a problem names its source: the file and
  key (``config file /etc/b.toml: key 'port' must be 0-65535, got 70000``) or the
  variable (``BROKER_PORT must be an integer, got 'abc'``); then ``validate`` checks the
  merged whole (rules between settings). Every problem found is reported at once in one
  ``SettingsError``. Every command that reads settings goes through ``from_env`` or
  ``load``, so every command validates them.
- File keys are the ``Settings`` field names; the value's type follows the field's
  annotation: ``str``/``int``/``float``/``bool`` (an integer is a valid ``float``);
  ``Path`` (a string; relative paths taken from the file's directory); ``tuple[str, ...]``
  (an array); ``tuple[<dataclass>, ...]`` (an array of tables, ``[[issuers]]``);
  ``X | None`` (an ``X``; leave the key out for None). Keys ending in ``_seconds`` also
  take a duration string (``"90s"``).
- Environment values are text: numbers as written (or a duration for ``_seconds``),
  lists comma-separated, ``BROKER_TRUSTED_ISSUERS`` a JSON list of objects with the keys
  of ``[[issuers]]``. An empty variable counts as unset.
- Secrets are refused in the file (it is typically a ConfigMap, world-readable in its
  namespace), and a database URL in the file may not carry a password.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.durations import parse_duration
from broker.settings.model import SETTINGS, Settings
from broker.settings.spec import Declared, SettingsError, check_value
from broker.tls.loopback import is_loopback

__all__ = ["CONFIG_ENV", "from_env", "load", "settings_from_file", "validate"]

CONFIG_ENV = "BROKER_CONFIG"
"""Names the config file when ``load`` is given no path."""

_MAX_FILE_BYTES = 1024 * 1024
_BY_NAME = {d.name: d for d in SETTINGS}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def load(config_path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then ``config_path`` (else the file ``BROKER_CONFIG`` names), then ``env``
    (default ``os.environ``); validated. What ``broker serve`` runs on.

    Raises SettingsError listing every problem, each naming the file key or variable.
    """
    env = os.environ if env is None else env
    path = config_path or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    problems: list[str] = []
    from_file: dict[str, Any] = {}
    if path is not None:
        try:
            from_file = _read_file(path, problems)
        except SettingsError as e:
            problems += e.problems
    from_environment = _read_env(env, problems)
    if problems:
        raise SettingsError(*problems)
    return validate(dataclasses.replace(Settings(), **{**from_file, **from_environment}))


def from_env(env: Mapping[str, str] | None = None, *, base: Settings | None = None) -> Settings:
    """``base`` (default: the defaults) with every set variable of ``env`` (default
    ``os.environ``) applied; validated. Raises SettingsError listing every problem."""
    problems: list[str] = []
    values = _read_env(os.environ if env is None else env, problems)
    if problems:
        raise SettingsError(*problems)
    return validate(dataclasses.replace(base or Settings(), **values))


def settings_from_file(path: Path, *, base: Settings | None = None) -> Settings:
    """``base`` (default: the defaults) with the keys of the TOML file at ``path`` applied.

    Each value is checked; the rules between settings are left to ``validate`` (``load``
    runs it once the environment is applied). Raises SettingsError naming file and key.
    """
    problems: list[str] = []
    values = _read_file(path, problems)
    if problems:
        raise SettingsError(*problems)
    return dataclasses.replace(base or Settings(), **values)


def validate(settings: Settings) -> Settings:
    """Return ``settings`` unchanged if every value and every rule between settings holds.

    Raises SettingsError listing every problem, each naming the key and its variable.
    """
    problems: list[str] = []
    for declared in SETTINGS:
        value = getattr(settings, declared.name)
        problem = check_value(declared, value)
        if problem:
            problems.append(f"{declared.label} {problem}")
        for choice, needed in declared.spec.requires.items():
            if value == choice and not getattr(settings, needed):
                problems.append(f"{declared.label} {choice!r} needs {_BY_NAME[needed].label}")
    problems += _tls_problems(settings)
    problems += _oidc_problems(settings)
    if problems:
        raise SettingsError(*problems)
    return settings


def _tls_problems(settings: Settings) -> list[str]:
    """Rules between the serving TLS settings: a certificate comes with its key."""
    cert, key = _BY_NAME["tls_cert_file"], _BY_NAME["tls_key_file"]
    ca, off = _BY_NAME["tls_client_ca_file"], _BY_NAME["tls_disable"]
    problems = []
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        given, missing = (cert, key) if settings.tls_cert_file else (key, cert)
        problems.append(f"{given.label} is set without {missing.label}: set both or neither")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        problems.append(f"{ca.label} needs {cert.label} and {key.label} (mTLS is TLS)")
    if settings.tls_disable and settings.tls_cert_file is not None:
        problems.append(f"{off.label} is true but {cert.label} is set: choose one")
    return problems


_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _oidc_problems(settings: Settings) -> list[str]:
    """Each identity provider: a usable name (also its front-door mount), an https issuer
    (http only on loopback), one source for its client secret."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(settings.oidc_providers, start=1):
        where = f"oidc_providers #{i} ({p.name!r})"
        if not _PROVIDER_NAME.match(p.name):
            problems.append(f"{where}: name must be 1-32 of a-z 0-9 _ - (it is a URL segment)")
        if p.name in seen:
            problems.append(f"{where}: name used twice")
        seen.add(p.name)
        issuer = urlsplit(p.issuer)
        if not (
            issuer.scheme == "https" or (issuer.scheme == "http" and is_loopback(issuer.hostname))
        ):
            problems.append(f"{where}: issuer must be https (http only on loopback)")
        if p.client_secret is not None and p.client_secret_file is not None:
            problems.append(f"{where}: set client_secret or client_secret_file, not both")
        if p.client_secret_file is not None and not os.access(p.client_secret_file, os.R_OK):
            problems.append(f"{where}: client_secret_file {p.client_secret_file} is not readable")
        if "openid" not in p.scopes:
            problems.append(f"{where}: scopes must include 'openid'")
    return problems


# --- the environment ----------------------------------------------------------------------


def _read_env(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """{field: value} for every declared variable set in ``env``; problems appended."""
    values: dict[str, Any] = {}
    for declared in SETTINGS:
        raw = env.get(declared.env)
        if not raw:  # unset, or set to the empty string: the same
            continue
        try:
            value = _convert(
                declared.hint,
                _from_text(declared, raw),
                _Label(None, declared.env),
                duration=declared.is_duration,
                base_dir=None,
            )
        except SettingsError as e:
            problems += e.problems
            continue
        problem = check_value(declared, value)
        if problem:
            problems.append(f"{declared.env} {problem}")
        else:
            values[declared.name] = value
    return values


def _from_text(declared: Declared, raw: str) -> Any:
    """The environment's text as the value a config file would hold for this setting."""
    hint = _without_none(declared.hint)
    if hint is int:
        return _maybe(int, raw)
    if hint is float:
        return _maybe(float, raw)
    if hint is bool:
        word = raw.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else raw
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(item):
            try:
                return json.loads(raw)
            except ValueError as e:
                raise SettingsError(f"{declared.env} must be a JSON list of objects: {e}") from None
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _maybe(kind: type[int] | type[float], raw: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        return raw  # a duration string, or a type error the conversion reports


# --- the config file ----------------------------------------------------------------------


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    """{field: value} for every key of the TOML file; problems appended.

    Raises SettingsError at once when the file cannot be read or is not TOML.
    """
    where = f"config file {path}"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SettingsError(f"{where}: {e.strerror}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise SettingsError(f"{where}: larger than {_MAX_FILE_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{where}: not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        declared = _BY_NAME.get(key)
        if declared is None:
            problems.append(_unknown_key(where, key, _BY_NAME))
            continue
        label = _Label(where, key)
        if declared.spec.secret:
            problems.append(f"{label} is a secret and is not read from the file; use {_hint(key)}")
            continue
        if declared.spec.dsn and _has_password(value):
            problems.append(
                f"{label} must not carry a password; put the URL in the environment"
                f" ({declared.env}) or the password in a PGPASSFILE"
            )
            continue
        try:
            converted = _convert(
                declared.hint, value, label, duration=declared.is_duration, base_dir=path.parent
            )
        except SettingsError as e:
            problems += e.problems
            continue
        problem = check_value(declared, converted)
        if problem:
            problems.append(f"{label} {problem}")
        else:
            values[key] = converted
    return values


def _hint(key: str) -> str:
    """Where a secret comes from instead: its variable, or a ``<key>_file`` setting too."""
    env = _BY_NAME[key].env
    return f"{key}_file or {env}" if f"{key}_file" in _BY_NAME else env


def _has_password(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(urlsplit(value).password)
    except ValueError:  # not a URL at all: the connection will say so
        return False


def _unknown_key(where: str, key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{suggestion}"


# --- values onto types (shared by both sources) ------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Label:
    """Where a value came from: ``source`` (a file, a table) and key, or a variable."""

    source: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.source is None else f"{self.source}: key {self.name!r}"

    def item(self, i: int) -> _Label:
        return _Label(self.source, f"{self.name}[{i}]")

    def table(self, i: int) -> str:
        """The ``where`` of the ``i``-th table of an array of tables."""
        if self.source is None:
            return f"{self.name} item #{i + 1}"
        return f"{self.source}, [[{self.name}]] #{i + 1}"


def _convert(hint: Any, value: Any, label: _Label, *, duration: bool, base_dir: Path | None) -> Any:
    """``value`` (as TOML or JSON holds it) as type ``hint``; SettingsError if it is not.

    Relative paths are taken from ``base_dir`` when given (the config file's directory).
    """
    hint = _without_none(hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list):
            raise _type_error(label, "an array", value, duration=False)
        item = args[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            tables = []
            for i, entry in enumerate(value):
                if not isinstance(entry, dict):
                    raise _type_error(label.item(i), "a table", entry, duration=False)
                tables.append(item(**_convert_table(item, entry, label.table(i), base_dir)))
            return tuple(tables)
        return tuple(
            _convert(item, v, label.item(i), duration=False, base_dir=base_dir)
            for i, v in enumerate(value)
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and duration:
            return _duration(value, label)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and duration:
            return float(_duration(value, label))
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str) and value:
            if base_dir is None:
                return Path(value)
            path = Path(value).expanduser()
            return path if path.is_absolute() else base_dir / path
    else:
        raise SettingsError(f"{label} cannot be set from a config file")
    raise _type_error(label, _describe(hint), value, duration=duration)


def _convert_table(
    cls: type[Any], table: Mapping[str, Any], where: str, base_dir: Path | None
) -> dict[str, Any]:
    """The keys of one table as the fields of dataclass ``cls``: none unknown, none missing."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            problems.append(_unknown_key(where, key, fields))
            continue
        if base_dir is not None and fields[key].metadata.get("secret"):  # from the file
            problems.append(
                f"{_Label(where, key)} is a secret and is not read from the file;"
                f" use {key}_file or the environment"
            )
            continue
        try:
            values[key] = _convert(
                hints[key], value, _Label(where, key), duration=False, base_dir=base_dir
            )
        except SettingsError as e:
            problems += e.problems
    problems += [
        f"{where}: missing key {name!r}"
        for name, f in fields.items()
        if name not in table
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if problems:
        raise SettingsError(*problems)
    return values


def _without_none(hint: Any) -> Any:
    """``X`` for ``X | None``; ``hint`` otherwise."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def _duration(value: str, label: _Label) -> int:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise SettingsError(f"{label}: {e}") from None


def _describe(hint: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is Path:
        return "a path (string)"
    return str(hint)


def _type_error(label: _Label, expected: str, value: Any, *, duration: bool) -> SettingsError:
    if duration and expected in ("an integer", "a number"):
        expected += " of seconds or a duration like '90s'"
    return SettingsError(f"{label} must be {expected}, got {value!r}")
