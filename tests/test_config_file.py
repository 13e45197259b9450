"""The TOML config file: generic mapping onto Settings, precedence, and clear errors.

Each setting's environment variable and bounds: tests/test_settings.py.
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
    IssuerSettings,
    Settings,
    SettingsError,
    load,
    settings_from_file,
)
from tests.support.commands import subprocess_env
from tests.support.paths import BROKER_BIN, REPO

EXAMPLE = REPO / "deploy" / "broker.example.toml"
DOCS = REPO / "docs" / "configuration.md"
_REFUSED = {"vault_token", "vault_secret_id"}  # secrets: never from the file
_FIELDS = [f.name for f in dataclasses.fields(Settings)]
_CHOICES = {d.name: d.spec.choices for d in SETTINGS}
_READABLE = {d.name: d.spec.readable_file for d in SETTINGS}
_LEAST = {d.name: d.spec.ge for d in SETTINGS}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_the_example_loads_and_says_what_it_sets() -> None:
    settings = load(EXAMPLE, env={})
    assert settings.host == "0.0.0.0"  # noqa: S104 - the example is for a container
    assert settings.vault_auth_method == "kubernetes"
    assert settings.vault_kubernetes_role == "jit-broker"
    assert settings.shutdown_grace_seconds == 20.0
    assert settings.offboarding_sla_seconds == 4 * 3600
    assert settings.log_format == "json"
    assert [i.issuer for i in settings.issuers] == [
        "https://login.example.com",
        "https://kubernetes.default.svc",
    ]
    assert settings.issuers[0].algorithms == ("RS256",)
    assert settings.policies_dir == Path("/etc/jit-broker/policies")


@pytest.mark.parametrize("field", _FIELDS)
def test_every_setting_is_documented_and_in_the_example(field: str) -> None:
    assert f"`{field}`" in DOCS.read_text(), f"{field} is not documented in {DOCS.name}"
    assert re.search(rf"^#?\s*({field} =|\[\[{field}\]\])", EXAMPLE.read_text(), re.M), (
        f"{field} is not in {EXAMPLE.name} (as a key or a commented-out key)"
    )


def _sample(hint: Any) -> tuple[Any, Any]:
    """A TOML value for a field of type ``hint`` and the Python value it must become."""
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _sample(inner)
    if hint is bool:
        return True, True
    if hint is int:
        return 7, 7
    if hint is float:
        return 2.5, 2.5
    if hint is str:
        return "sample", "sample"
    if hint is Path:
        return "/srv/sample", Path("/srv/sample")
    if hint == tuple[str, ...]:
        return ["a", "b"], ("a", "b")
    raise AssertionError(f"no sample for {hint}")


@pytest.mark.parametrize(
    "field", [f for f in _FIELDS if f not in _REFUSED and f not in {"issuers", "oidc_providers"}]
)
def test_every_field_is_settable_from_the_file(tmp_path: Path, field: str) -> None:
    """Generic: a field added to Settings later is settable with no change to the loader."""
    toml_value, expected = _sample(typing.get_type_hints(Settings)[field])
    if isinstance(expected, int) and not isinstance(expected, bool) and _LEAST[field] is not None:
        toml_value = expected = max(expected, int(_LEAST[field]))  # within the field's bounds
    choices = _CHOICES.get(field)
    if choices:  # a string among its choices
        toml_value = expected = choices[0]
    if _READABLE[field]:  # must name a readable file
        (tmp_path / "sid").write_text("x")
        toml_value, expected = str(tmp_path / "sid"), tmp_path / "sid"
    path = _write(tmp_path, f"{field} = {json.dumps(toml_value)}\n")
    settings = settings_from_file(path)
    assert getattr(settings, field) == expected
    # ...and every other field keeps its default.
    defaults = Settings(replica_id=settings.replica_id)
    for other in _FIELDS:
        if other not in (field, "replica_id"):
            assert getattr(settings, other) == getattr(defaults, other), other


def test_precedence_defaults_then_file_then_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, 'port = 9000\nvault_addr = "http://file:8200"\n')
    from_file = load(path, env={})
    assert (from_file.port, from_file.vault_addr, from_file.host) == (
        9000,
        "http://file:8200",
        "127.0.0.1",  # not in the file: the default
    )
    env = {"BROKER_PORT": "9100"}
    overridden = load(path, env=env)
    assert (overridden.port, overridden.vault_addr) == (9100, "http://file:8200")
    # BROKER_CONFIG names the file when no path is given.
    assert load(env={"BROKER_CONFIG": str(path)}).port == 9000
    assert load(path, env={}).port == 9000


def test_relative_paths_are_taken_from_the_files_directory(tmp_path: Path) -> None:
    path = _write(tmp_path, 'policies_dir = "policies"\ncheckpoint_key_path = "/abs/key"\n')
    settings = settings_from_file(path)
    assert settings.policies_dir == tmp_path / "policies"
    assert settings.checkpoint_key_path == Path("/abs/key")


def test_durations_may_be_seconds_or_strings(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'shutdown_grace_seconds = "1m30s"\nheartbeat_seconds = 15\n'
        'offboarding_sla_seconds = "2h"\n',
    )
    settings = settings_from_file(path)
    assert settings.shutdown_grace_seconds == 90.0
    assert settings.heartbeat_seconds == 15.0
    assert settings.offboarding_sla_seconds == 7200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('vault_adr = "x"\n', "unknown key 'vault_adr' (did you mean 'vault_addr'?)"),
        ("zzz = 1\n", "unknown key 'zzz'"),
        ('port = "80"\n', "key 'port' must be an integer, got '80'"),
        ("port = 80.5\n", "key 'port' must be an integer, got 80.5"),
        ("db_pool_max = true\n", "key 'db_pool_max' must be an integer, got True"),
        ("host = 1\n", "key 'host' must be a string, got 1"),
        ("webhook_urls = 'x'\n", "key 'webhook_urls' must be an array, got 'x'"),
        ("webhook_urls = [1]\n", "key 'webhook_urls[0]' must be a string, got 1"),
        (
            'heartbeat_seconds = "soon"\n',
            "key 'heartbeat_seconds': invalid duration 'soon'",
        ),
        (
            "heartbeat_seconds = false\n",
            "key 'heartbeat_seconds' must be a number of seconds or a duration like '90s',"
            " got False",
        ),
        ("port = \n", "not valid TOML"),
        ("[[issuers]]\nissuer = 'x'\n", "[[issuers]] #1: missing key 'audience'"),
        (
            "[[issuers]]\nissuer = 'x'\naudience = 'a'\nalgorithms = ['RS256']\njwks = 'u'\n",
            "[[issuers]] #1: unknown key 'jwks' (did you mean 'jwks_url'?)",
        ),
        ("issuers = [1]\n", "key 'issuers[0]' must be a table, got 1"),
        ('vault_token = "s.abc"\n', "key 'vault_token' is a secret"),
        ('vault_secret_id = "abc"\n', "key 'vault_secret_id' is a secret"),
        (
            'database_url = "postgresql://w:hunter2@db/broker"\n',
            "key 'database_url' must not carry a password",
        ),
        (
            'vault_secret_id_file = "/nonexistent/sid"\n',
            "key 'vault_secret_id_file' must be a readable file, got '/nonexistent/sid'",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError) as e:
        settings_from_file(path)
    assert str(e.value).startswith(f"config file {path}"), str(e.value)
    assert message in str(e.value)
    assert "hunter2" not in str(e.value) and "s.abc" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('log_format = "xml"\n', "key 'log_format' must be one of json, text, got 'xml'"),
        ('log_level = "loud"\n', "key 'log_level' must be one of"),
        ('vault_auth_method = "ldap"\n', "key 'vault_auth_method' must be one of"),
        ("port = 70000\n", "key 'port' must be 0-65535, got 70000"),
        ("db_pool_max = -1\n", "key 'db_pool_max' must be at least 1, got -1"),
        ("jwt_leeway_seconds = -1\n", "key 'jwt_leeway_seconds' must not be negative, got -1"),
        ("shutdown_grace_seconds = 0\n", "key 'shutdown_grace_seconds' must be positive, got 0"),
        ("heartbeat_seconds = nan\n", "key 'heartbeat_seconds' must be a finite number"),
    ],
)
def test_values_are_checked_against_their_bounds(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError, match=re.escape(f"config file {path}: {message}")):
        load(path, env={})


def test_rules_between_settings_are_checked_after_merging(tmp_path: Path) -> None:
    path = _write(tmp_path, 'vault_auth_method = "kubernetes"\n')
    settings_from_file(path)  # alone, the file is fine: the role may come from the env
    with pytest.raises(SettingsError) as e:
        load(path, env={})
    assert str(e.value) == (
        "vault_auth_method (VAULT_AUTH_METHOD) 'kubernetes' needs vault_kubernetes_role"
        " (VAULT_K8S_ROLE)"
    )
    assert load(path, env={"VAULT_K8S_ROLE": "r"}).vault_kubernetes_role == "r"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, 'port = 70000\nvault_adr = "x"\nlog_format = "xml"\n')
    with pytest.raises(SettingsError) as e:
        load(path, env={"BROKER_DB_POOL_MAX": "0", "BROKER_VAULT_TIMEOUT": "soon"})
    assert e.value.problems == (
        f"config file {path}: key 'port' must be 0-65535, got 70000",
        f"config file {path}: unknown key 'vault_adr' (did you mean 'vault_addr'?)",
        f"config file {path}: key 'log_format' must be one of json, text, got 'xml'",
        "BROKER_DB_POOL_MAX must be at least 1, got 0",
        "BROKER_VAULT_TIMEOUT: invalid duration 'soon': use seconds or e.g. '90s', '15m', '1h'",
    )
    assert str(e.value) == "; ".join(e.value.problems)


def test_environment_values_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BROKER_LOG_FORMAT must be one of"):
        load(env={"BROKER_LOG_FORMAT": "yaml"})
    with pytest.raises(SettingsError, match="needs vault_kubernetes_role"):
        load(env={"VAULT_AUTH_METHOD": "kubernetes"})
    settings = load(
        env={"VAULT_AUTH_METHOD": "kubernetes", "VAULT_K8S_ROLE": "r", "VAULT_K8S_MOUNT": "k8s"}
    )
    assert (settings.vault_kubernetes_role, settings.vault_kubernetes_mount) == ("r", "k8s")


def test_issuer_tables_map_onto_issuer_settings(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[[issuers]]\nissuer = 'https://a'\naudience = 'b'\nalgorithms = ['EdDSA']\n"
        "public_keys = ['PEM']\ngroups_claim = 'roles'\n",
    )
    (issuer,) = settings_from_file(path).issuers
    assert issuer == IssuerSettings(
        issuer="https://a",
        audience="b",
        algorithms=("EdDSA",),
        public_keys=("PEM",),
        groups_claim="roles",
    )


def test_oidc_provider_tables_keep_the_secret_out_of_the_file(tmp_path: Path) -> None:
    table = (
        "[[oidc_providers]]\nname = 'sso'\nissuer = 'https://idp'\nclient_id = 'c'\n"
        "client_secret_file = 'secret.txt'\ngroups_claim = 'realm_access.roles'\n"
    )
    (provider,) = settings_from_file(_write(tmp_path, table)).oidc_providers
    assert provider.client_secret_file == tmp_path / "secret.txt"  # relative to the file
    assert (provider.groups_claim, provider.client_secret) == ("realm_access.roles", None)
    with pytest.raises(SettingsError) as caught:
        settings_from_file(_write(tmp_path, table + "client_secret = 'hunter2'\n"))
    assert "'client_secret' is a secret and is not read from the file" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("via", ["--config", "BROKER_CONFIG"])
def test_broker_serve_refuses_a_bad_file_with_exit_2(tmp_path: Path, via: str) -> None:
    path = _write(tmp_path, 'vault_adr = "http://x"\n')
    args = [str(BROKER_BIN), "serve"] + (["--config", str(path)] if via == "--config" else [])
    env = subprocess_env(**({"BROKER_CONFIG": str(path)} if via == "BROKER_CONFIG" else {}))
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        f"configuration error: config file {path}: unknown key 'vault_adr'"
        " (did you mean 'vault_addr'?)"
    )
