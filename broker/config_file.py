"""The TOML configuration file: defaults < file < environment.

File keys are the ``Settings`` field names, mapped generically from the dataclass, so a
field added to ``Settings`` is settable from the file with no change here. Types follow
the field's annotation:

- ``str`` / ``int`` / ``float`` / ``bool``: the TOML value of that type (an integer is a
  valid ``float``); fields ending in ``_seconds`` also take a duration string (``"90s"``);
- ``Path``: a string, relative paths taken from the config file's directory;
- ``tuple[str, ...]``: an array of strings; ``tuple[<dataclass>, ...]``: an array of
  tables (``[[issuers]]``), each mapped onto that dataclass the same way;
- ``X | None``: an ``X`` (leave the key out for None).

Errors name the file and the key. Secrets are refused in the file (it is typically a
ConfigMap, world-readable in its namespace): the Vault token and AppRole secret id come
from the environment or a file path (``vault_secret_id_file``), and a database URL in the
file may not carry a password (use ``BROKER_DATABASE_URL`` or a libpq ``PGPASSFILE``).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.config import Settings, SettingsError, from_env
from broker.durations import parse_duration

__all__ = ["load_settings", "settings_from_file", "validate_settings"]

# Keys whose value is a secret: the file may not hold them (see the module docstring).
_SECRET_KEYS = {
    "vault_token": "VAULT_TOKEN",
    "vault_secret_id": "vault_secret_id_file or VAULT_SECRET_ID",
}
_DSN_KEYS = ("database_url", "admin_database_url")
_LOG_FORMATS = ("json", "text")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_VAULT_AUTH_METHODS = ("token", "approle", "kubernetes")
_MAX_FILE_BYTES = 1024 * 1024


def load_settings(env: Mapping[str, str], config_path: Path | None = None) -> Settings:
    """Settings from defaults, then ``config_path`` (else ``BROKER_CONFIG``), then ``env``.

    Raises SettingsError naming the file/variable and key for anything invalid.
    """
    path = config_path or (Path(env["BROKER_CONFIG"]) if env.get("BROKER_CONFIG") else None)
    base = settings_from_file(path) if path is not None else Settings()
    return validate_settings(from_env(env, base=base))


def settings_from_file(path: Path, *, base: Settings | None = None) -> Settings:
    """``base`` (default: defaults) with the keys of the TOML file at ``path`` applied."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SettingsError(f"config file {path}: {e.strerror}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise SettingsError(f"config file {path}: larger than {_MAX_FILE_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"config file {path}: not valid TOML: {e}") from None
    for key, hint in _SECRET_KEYS.items():
        if key in document:
            raise SettingsError(
                f"config file {path}: key {key!r} is a secret and is not read from the file;"
                f" use {hint}"
            )
    for key in _DSN_KEYS:
        value = document.get(key)
        if isinstance(value, str) and urlsplit(value).password:
            raise SettingsError(
                f"config file {path}: key {key!r} must not carry a password; put the URL in"
                f" the environment (BROKER_{key.upper()}) or the password in a PGPASSFILE"
            )
    values = _convert_table(Settings, document, where=f"config file {path}", base_dir=path.parent)
    secret_id_file = values.get("vault_secret_id_file")
    if isinstance(secret_id_file, Path) and not secret_id_file.is_file():
        raise SettingsError(
            f"config file {path}: key 'vault_secret_id_file': {secret_id_file} is not a"
            " readable file"
        )
    return dataclasses.replace(base or Settings(), **values)


def validate_settings(settings: Settings) -> Settings:
    """Checks no single field's type can express; returns ``settings`` unchanged."""
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port must be 0-65535, got {settings.port}")
    if settings.log_format is not None and settings.log_format not in _LOG_FORMATS:
        raise SettingsError(
            f"log_format must be one of {', '.join(_LOG_FORMATS)}, got {settings.log_format!r}"
        )
    if settings.log_level.lower() not in _LOG_LEVELS:
        raise SettingsError(
            f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {settings.log_level!r}"
        )
    method = settings.vault_auth_method
    if method is not None and method not in _VAULT_AUTH_METHODS:
        raise SettingsError(
            f"vault_auth_method must be one of {', '.join(_VAULT_AUTH_METHODS)}, got {method!r}"
        )
    if method == "kubernetes" and not settings.vault_kubernetes_role:
        raise SettingsError("vault_auth_method 'kubernetes' needs vault_kubernetes_role")
    if method == "approle" and not settings.vault_role_id:
        raise SettingsError("vault_auth_method 'approle' needs vault_role_id")
    for field in dataclasses.fields(Settings):
        value = getattr(settings, field.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise SettingsError(f"{field.name} must not be negative, got {value}")
    if settings.shutdown_grace_seconds <= 0:
        raise SettingsError("shutdown_grace_seconds must be positive")
    return settings


# --- generic mapping of TOML values onto dataclass fields -----------------------------


def _convert_table(
    cls: type[Any], table: Mapping[str, Any], *, where: str, base_dir: Path
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{where}: unknown key {key!r}{suggestion}")
        values[key] = _convert(hints[key], value, key=key, where=where, base_dir=base_dir)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SettingsError(f"{where}: missing key {missing[0]!r}")
    return values


def _convert(hint: Any, value: Any, *, key: str, where: str, base_dir: Path) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, key=key, where=where, base_dir=base_dir)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list):
            raise _type_error(where, key, _describe(hint), value)
        item = args[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            converted = []
            for i, entry in enumerate(value):
                if not isinstance(entry, dict):
                    raise _type_error(where, f"{key}[{i}]", "a table", entry)
                fields = _convert_table(
                    item, entry, where=f"{where}, [[{key}]] #{i + 1}", base_dir=base_dir
                )
                converted.append(item(**fields))
            return tuple(converted)
        return tuple(
            _convert(item, v, key=f"{key}[{i}]", where=where, base_dir=base_dir)
            for i, v in enumerate(value)
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and key.endswith("_seconds"):
            return _duration(value, key=key, where=where)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and key.endswith("_seconds"):
            return float(_duration(value, key=key, where=where))
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            return path if path.is_absolute() else base_dir / path
    else:
        raise SettingsError(f"{where}: key {key!r} cannot be set from a config file")
    raise _type_error(where, key, _describe(hint), value)


def _duration(value: str, *, key: str, where: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise SettingsError(f"{where}: key {key!r}: {e}") from None


def _describe(hint: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is Path:
        return "a path (string)"
    if typing.get_origin(hint) is tuple:
        return "an array"
    return str(hint)


def _type_error(where: str, key: str, expected: str, value: Any) -> SettingsError:
    if "_seconds" in key and expected in ("an integer", "a number"):
        expected += " of seconds or a duration like '90s'"
    return SettingsError(f"{where}: key {key!r} must be {expected}, got {value!r}")

