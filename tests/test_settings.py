"""Every setting is declared once and reachable both ways; every command validates.

Walks the declarations in ``broker.settings``: each has a file key and an environment
variable, the variable sets it (parsed from a mapping, not ``os.environ``), an invalid
value of each bounded setting is refused naming the key or the variable, and the
reference table in docs/configuration.md is the one the declarations generate.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from broker.settings import (
    SETTINGS,
    Declared,
    IssuerSettings,
    OIDCProviderSettings,
    Settings,
    SettingsError,
    from_env,
    load,
    validate,
)
from broker.settings.reference import BEGIN, END, render, splice
from tests.support.commands import subprocess_env
from tests.support.paths import BROKER_BIN, REPO

DOC = REPO / "docs" / "configuration.md"
_ENV_NAME = re.compile(r"(BROKER|VAULT)_[A-Z0-9_]+")


def _ids(settings: tuple[Declared, ...]) -> list[str]:
    return [d.name for d in settings]


def _bounded(d: Declared) -> bool:
    spec = d.spec
    return bool(spec.choices or spec.readable_file or {spec.ge, spec.gt, spec.le} - {None})


_BOUNDED = tuple(d for d in SETTINGS if _bounded(d))


def test_every_setting_has_a_file_key_and_an_environment_variable() -> None:
    assert [d.name for d in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    envs = [d.env for d in SETTINGS]
    assert len(set(envs)) == len(envs), "two settings share a variable"
    for d in SETTINGS:
        assert d.file_key == d.name
        assert _ENV_NAME.fullmatch(d.env), d.env
        assert d.spec.doc.strip() and d.spec.section, d.name
        assert "\n" not in d.spec.doc and "|" not in d.spec.doc, d.name  # one table cell


def _env_sample(d: Declared, tmp_path: Path) -> tuple[str, Any]:
    """A value for ``d`` as the environment writes it, and the value it must become."""
    if d.spec.choices:
        return d.spec.choices[0], d.spec.choices[0]
    if d.spec.readable_file:
        (tmp_path / "file").write_text("x")
        return str(tmp_path / "file"), tmp_path / "file"
    hint = d.hint
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        return "true", True
    if hint is int:  # 7, or the least value the setting allows
        value = max(7, int(d.spec.ge)) if d.spec.ge is not None else 7
        return str(value), value
    if hint is float:
        return "2.5", 2.5
    if hint is str:
        return "sample", "sample"
    if hint is Path:
        return "/srv/sample", Path("/srv/sample")
    if hint == tuple[str, ...]:
        return "a, b,,c", ("a", "b", "c")
    if hint == tuple[IssuerSettings, ...]:
        item = {"issuer": "https://a", "audience": "b", "algorithms": ["EdDSA"]}
        return json.dumps([item]), (IssuerSettings("https://a", "b", ("EdDSA",)),)
    if hint == tuple[OIDCProviderSettings, ...]:
        provider = {"name": "sso", "issuer": "https://idp", "client_id": "c", "client_secret": "s"}
        return json.dumps([provider]), (
            OIDCProviderSettings("sso", "https://idp", "c", client_secret="s"),
        )
    raise AssertionError(f"no sample for {d.name}: {hint}")


# Settings valid only beside others (validate's rules between settings): what each needs.
_NEEDS = {
    "tls_cert_file": ("tls_key_file",),
    "tls_key_file": ("tls_cert_file",),
    "tls_client_ca_file": ("tls_cert_file", "tls_key_file"),
}
_BY_NAME = {d.name: d for d in SETTINGS}


@pytest.mark.parametrize("declared", SETTINGS, ids=_ids(SETTINGS))
def test_the_environment_variable_sets_the_setting(declared: Declared, tmp_path: Path) -> None:
    text, expected = _env_sample(declared, tmp_path)
    partners = _NEEDS.get(declared.name, ())
    env = {declared.env: text}
    env.update({_BY_NAME[p].env: _env_sample(_BY_NAME[p], tmp_path)[0] for p in partners})
    settings = from_env(env)
    assert getattr(settings, declared.name) == expected
    defaults = Settings(replica_id=settings.replica_id)
    for other in SETTINGS:
        if other.name not in (declared.name, "replica_id", *partners):
            assert getattr(settings, other.name) == getattr(defaults, other.name), other.name
    # The variable wins over the config file.
    assert getattr(load(env=env), declared.name) == expected


def _invalid(d: Declared) -> Any:
    """A value of the right type that ``d``'s bounds or choices refuse."""
    spec = d.spec
    if spec.choices:
        return "bogus"
    if spec.readable_file:
        return "/nonexistent/file"
    if spec.le is not None:
        return int(spec.le) + 1
    if spec.ge is not None:
        return int(spec.ge) - 1
    assert spec.gt is not None
    return int(spec.gt)


@pytest.mark.parametrize("declared", _BOUNDED, ids=_ids(_BOUNDED))
def test_an_invalid_value_is_refused_naming_the_key(declared: Declared, tmp_path: Path) -> None:
    bad = _invalid(declared)
    with pytest.raises(SettingsError) as from_environment:
        from_env({declared.env: str(bad)})
    assert str(from_environment.value).startswith(f"{declared.env} must "), from_environment
    path = tmp_path / "broker.toml"
    path.write_text(f"{declared.file_key} = {json.dumps(bad)}\n")
    with pytest.raises(SettingsError) as from_file:
        load(path, env={})
    assert str(from_file.value).startswith(
        f"config file {path}: key {declared.file_key!r} must "
    ), from_file
    # Settings built in code are held to the same bounds.
    value = Path(bad) if declared.spec.readable_file else bad
    with pytest.raises(SettingsError) as in_code:
        validate(Settings(**{declared.name: value}))
    assert str(in_code.value).startswith(f"{declared.name} ({declared.env}) must "), in_code


def test_the_defaults_are_valid() -> None:
    settings = Settings()
    assert validate(settings) is settings


def test_environment_formats() -> None:
    settings = from_env(
        {
            "BROKER_SHUTDOWN_GRACE": "1m30s",
            "BROKER_OFFBOARDING_SLA": "2h",
            "BROKER_HEARTBEAT_SECONDS": "0.5",
            "BROKER_WEBHOOK_URLS": "https://a, https://b",
            "BROKER_HOST": "",  # empty: unset, the default stays
            "VAULT_AUTH_METHOD": "",
        }
    )
    assert settings.shutdown_grace_seconds == 90.0
    assert settings.offboarding_sla_seconds == 7200
    assert settings.heartbeat_seconds == 0.5
    assert settings.webhook_urls == ("https://a", "https://b")
    assert settings.host == "127.0.0.1" and settings.vault_auth_method is None
    base = Settings(port=9000)
    assert from_env({}, base=base).port == 9000  # nothing set: the base stays


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_PORT": "abc"}, "BROKER_PORT must be an integer, got 'abc'"),
        ({"BROKER_PORT": "80.5"}, "BROKER_PORT must be an integer, got '80.5'"),
        ({"BROKER_DB_TIMEOUT": "inf"}, "BROKER_DB_TIMEOUT must be a finite number, got inf"),
        ({"BROKER_TRUSTED_ISSUERS": "[{"}, "BROKER_TRUSTED_ISSUERS must be a JSON list"),
        ({"BROKER_TRUSTED_ISSUERS": "{}"}, "BROKER_TRUSTED_ISSUERS must be an array, got {}"),
        (
            {"BROKER_TRUSTED_ISSUERS": '[{"issuer": "x", "algorithms": ["RS256"]}]'},
            "BROKER_TRUSTED_ISSUERS item #1: missing key 'audience'",
        ),
        (
            {
                "BROKER_TRUSTED_ISSUERS": '[{"issuer": "x", "audience": "a",'
                ' "algorithms": ["RS256"], "jwks_uri": "u"}]'
            },
            "BROKER_TRUSTED_ISSUERS item #1: unknown key 'jwks_uri' (did you mean 'jwks_url'?)",
        ),
        (
            {"BROKER_TRUSTED_ISSUERS": '[{"issuer": "x", "audience": "a", "algorithms": "RS256"}]'},
            "BROKER_TRUSTED_ISSUERS item #1: key 'algorithms' must be an array, got 'RS256'",
        ),
        (
            {"VAULT_AUTH_METHOD": "approle"},
            "vault_auth_method (VAULT_AUTH_METHOD) 'approle' needs vault_role_id (VAULT_ROLE_ID)",
        ),
    ],
)
def test_environment_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        from_env(env)
    assert message in str(e.value)


def test_the_reference_in_the_docs_is_generated_from_the_declarations() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert splice(text) == text, f"{DOC.name} is out of date: run `make docs`"
    for d in SETTINGS:
        assert f"| `{d.file_key}` | `{d.env}`" in text, d.name
    # The check can fail: a changed declaration changes the text.
    changed = dataclasses.replace(
        SETTINGS[0], spec=dataclasses.replace(SETTINGS[0].spec, doc="something else")
    )
    assert splice(text, (changed, *SETTINGS[1:])) != text
    assert render() in text


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["migrate"],
        ["verify"],
        ["checkpoint-key", "show"],
        ["evidence", "check", "missing.zip"],
        ["evidence", "export", "--from", "2026-01-01", "--to", "2026-01-02", "--out", "x.zip"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_every_command_validates_its_settings(command: list[str], tmp_path: Path) -> None:
    env = subprocess_env(BROKER_DB_POOL_MAX="0", BROKER_LOG_FORMAT="yaml")
    run = subprocess.run(
        [str(BROKER_BIN), *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        "configuration error: BROKER_LOG_FORMAT must be one of json, text, got 'yaml';"
        " BROKER_DB_POOL_MAX must be at least 1, got 0"
    )
