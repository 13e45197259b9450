"""Policy directory -> ``PolicySet``; the only I/O in ``broker.policy``.

Every ``*.yaml`` / ``*.yml`` file directly in the directory (not hidden, not in
subdirectories) is read, and their ``catalog`` mappings and ``roles`` lists are merged.
Validation is strict and complete: unknown keys are rejected everywhere, and all problems
are collected before failing, each as ``"<file>:<line>: <message>"`` (1-based lines taken
from PyYAML node marks; ``<directory>:0:`` for problems with the directory itself).

Limits (each a named argument or constant): ``max_file_bytes`` per file (default 256 KiB),
``MAX_FILES`` files, no YAML anchors/aliases (they make the node graph non-tree-shaped,
the classic "billion laughs" amplification).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from broker.durations import format_duration, parse_duration
from broker.errors import PolicyError
from broker.policy.model import (
    CAPABILITIES,
    DEFAULT_REASON_MIN_LENGTH,
    DEFAULT_REQUEST_EXPIRY,
    DEFAULT_TICKET_PATTERN,
    ENGINES,
    MAX_FACTOR_APPROVALS,
    MAX_REASON_LENGTH,
    MAX_REQUEST_EXPIRY,
    MIN_FACTOR_APPROVALS,
    MIN_REASON_LENGTH,
    MIN_REQUEST_EXPIRY,
    MOUNT_PATH,
    NO_LIMITS,
    SSH_EXTENSIONS,
    SSH_PRINCIPAL,
    ApprovalFactor,
    CatalogEntry,
    ElevationRule,
    Engine,
    Limits,
    Members,
    PolicySet,
    Role,
    SSHRule,
    secret_matches,
    ticket_pattern_problem,
    validate_secret_name,
)

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_TICKET_PATTERN",
    "MAX_FILES",
    "MAX_GRANT_TTL",
    "load_policy_dir",
    "load_policy_documents",
]

DEFAULT_MAX_FILE_BYTES = 256 * 1024
MAX_FILES = 200
# No grant outlives this: the audit access query relies on it to bound its index range
# (a grant overlapping [from, to) was issued after from - MAX_GRANT_TTL).
MAX_GRANT_TTL = 31 * 24 * 3600

_ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SERVICE_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9.-]*:[a-z0-9][a-z0-9.-]*")
_VAULT_ROLE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# A secrets item: a catalog name where segments may contain '*'.
_SECRET_GLOB = re.compile(r"[a-z0-9*][a-z0-9._*-]*(?:/[a-z0-9*][a-z0-9._*-]*)*")
# Names go into the version manifest line by line; forbid what sha256sum would escape.
_UNSAFE_FILE_NAME = re.compile(r"[\x00-\x1f\x7f\\]")
_MAX_STRING = 1024
# "<number>/<unit>": issuances per second, minute or hour.
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/(s|m|h)")
_RATE_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_LIMIT = 1_000_000

_STR_TAG = "tag:yaml.org,2002:str"
_SCALAR_ERRORS = (ConstructorError, ValueError, KeyError)
_TYPE_NAMES = {
    _STR_TAG: "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
}


def load_policy_dir(path: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> PolicySet:
    """Load and validate every policy file in directory ``path``.

    Returns an immutable ``PolicySet`` whose ``version`` hashes the raw files (see
    ``PolicySet``). Raises ``PolicyError("policy invalid: N errors", errors=[...])`` with
    every problem found, sorted by file and line; nothing partial is ever returned.
    """
    where = str(path)
    if not path.is_dir():
        raise _fail([f"{where}:0: not a directory"])
    try:
        files = sorted((p for p in path.iterdir() if _is_policy_file(p)), key=lambda p: p.name)
    except OSError as e:
        raise _fail([f"{where}:0: cannot list directory: {e.strerror}"]) from e
    if not files:
        raise _fail([f"{where}:0: no policy files (*.yaml, *.yml) in directory"])
    if len(files) > MAX_FILES:
        raise _fail([f"{where}:0: {len(files)} policy files, more than the limit of {MAX_FILES}"])

    v = _Validator()
    contents: dict[str, bytes | None] = {}
    for p in files:
        try:
            contents[p.name] = _read_limited(p, max_file_bytes)
        except OSError as e:
            v.errors.append((p.name, 1, f"cannot read file: {e.strerror}"))
    return _validate(v, contents, max_file_bytes)


def load_policy_documents(
    documents: Mapping[str, str], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> PolicySet:
    """Load and validate policy files given as ``{file name: text}`` (e.g. a version
    recorded in ``ledger.policy_versions``), exactly as ``load_policy_dir`` would.

    The same files give the same ``PolicySet`` and ``version`` as the directory they came
    from. Names must look like policy files (``*.yaml``/``*.yml``, not hidden). Raises
    ``PolicyError`` with every problem found, as ``load_policy_dir`` does.
    """
    where = "<documents>"
    if not documents:
        raise _fail([f"{where}:0: no policy files (*.yaml, *.yml) given"])
    if len(documents) > MAX_FILES:
        count = len(documents)
        raise _fail([f"{where}:0: {count} policy files, more than the limit of {MAX_FILES}"])
    v = _Validator()
    contents: dict[str, bytes | None] = {}
    for name in sorted(documents):
        text = documents[name]
        if not (
            isinstance(name, str)
            and isinstance(text, str)
            and name.endswith((".yaml", ".yml"))
            and not name.startswith(".")
            and "/" not in name
        ):
            v.errors.append((str(name), 1, "not a policy file name (*.yaml, *.yml) with text"))
            continue
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            v.errors.append((name, 1, "file is not valid UTF-8"))
            continue
        contents[name] = data if len(data) <= max_file_bytes else None
    return _validate(v, contents, max_file_bytes)


def _validate(
    v: _Validator, contents: Mapping[str, bytes | None], max_file_bytes: int
) -> PolicySet:
    """Validate each file's bytes (None: larger than ``max_file_bytes``), in name order."""
    raw: dict[str, bytes] = {}
    documents: dict[str, str] = {}
    for name in sorted(contents):
        data = contents[name]
        if data is None:
            v.errors.append((name, 1, f"file is larger than {max_file_bytes} bytes"))
            continue
        raw[name] = data
        if _UNSAFE_FILE_NAME.search(name):
            v.errors.append((name, 1, "file name contains control characters or '\\'"))
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            v.errors.append((name, line, "file is not valid UTF-8"))
            continue
        documents[name] = text
        v.read_file(name, text)
    policy = v.finish(raw, documents)
    if v.errors or policy is None:  # finish() returns None only when it recorded errors
        raise _fail([f"{f}:{line}: {msg}" for f, line, msg in sorted(v.errors)])
    return policy


def _fail(errors: list[str]) -> PolicyError:
    noun = "error" if len(errors) == 1 else "errors"
    return PolicyError(f"policy invalid: {len(errors)} {noun}", errors=errors)


def _is_policy_file(p: Path) -> bool:
    return p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()


def _read_limited(p: Path, limit: int) -> bytes | None:
    """File bytes, or None if larger than ``limit`` (read bounded, whatever stat says)."""
    with p.open("rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def _version(raw: dict[str, bytes]) -> str:
    manifest = "".join(f"{hashlib.sha256(raw[name]).hexdigest()}  {name}\n" for name in sorted(raw))
    return "sha256:" + hashlib.sha256(manifest.encode("utf-8")).hexdigest()


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, so the composed node graph is a tree."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in stubs
            raise ComposerError(None, None, "YAML aliases are not allowed", event.start_mark)
        return super().compose_node(parent, index)


@dataclass
class _PendingRole:
    file: str
    node: MappingNode
    fields: dict[str, tuple[ScalarNode, Node]]


@dataclass
class _Validator:
    """Accumulates errors as ``(file, line, message)`` while walking node trees."""

    errors: list[tuple[str, int, str]] = field(default_factory=list)
    catalog: dict[str, CatalogEntry] = field(default_factory=dict)
    catalog_at: dict[str, str] = field(default_factory=dict)
    pending_roles: list[_PendingRole] = field(default_factory=list)
    _file: str = ""
    _constructor: SafeConstructor = field(default_factory=SafeConstructor)

    # -- plumbing ---------------------------------------------------------------------

    def err(self, node: Node, message: str, file: str | None = None) -> None:
        self.errors.append((file or self._file, node.start_mark.line + 1, message))

    def at(self, node: Node) -> str:
        return f"{self._file}:{node.start_mark.line + 1}"

    def mapping(
        self,
        node: Node,
        what: str,
        allowed: frozenset[str],
        required: frozenset[str] = frozenset(),
        anchor: Node | None = None,
    ) -> dict[str, tuple[ScalarNode, Node]] | None:
        """The mapping's known entries by key; reports non-mappings, non-string and
        duplicate keys, unknown keys (at the key's line) and missing required keys (at
        ``anchor``, the key naming this mapping, else the mapping's first line)."""
        if not isinstance(node, MappingNode):
            self.err(node, f"{what} must be a mapping")
            return None
        out: dict[str, tuple[ScalarNode, Node]] = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _STR_TAG):
                self.err(key, f"{what}: keys must be strings")
                continue
            name = key.value
            if name in out:
                first = out[name][0].start_mark.line + 1
                self.err(key, f"{what}: duplicate key {name!r} (first at line {first})")
                continue
            if name not in allowed:
                expected = ", ".join(sorted(allowed))
                self.err(key, f"{what}: unknown key {name!r} (expected one of: {expected})")
                continue
            out[name] = (key, value)
        for name in sorted(required - out.keys()):
            self.err(anchor or node, f"{what}: missing required key {name!r}")
        return out

    def scalar(self, node: Node) -> Any:
        """The scalar's Python value. Explicit tags such as ``!!int abc`` can still fail
        here; callers treat an exception as "wrong type"."""
        return self._constructor.construct_object(node)

    def string(
        self,
        node: Node,
        what: str,
        pattern: re.Pattern[str] | None = None,
        *,
        allow_empty: bool = False,
    ) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != _STR_TAG:
            got = _describe(node)
            hint = " (quote it)" if isinstance(node, ScalarNode) else ""
            self.err(node, f"{what} must be a string, got {got}{hint}")
            return None
        value: str = node.value
        if not value and not allow_empty:
            self.err(node, f"{what} must not be empty")
            return None
        if len(value) > _MAX_STRING:
            self.err(node, f"{what} is longer than {_MAX_STRING} characters")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.err(node, f"{what} {value!r} is not valid (must match {pattern.pattern})")
            return None
        return value

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            with contextlib.suppress(*_SCALAR_ERRORS):
                return bool(self.scalar(node))
        self.err(node, f"{what} must be true or false, got {_describe(node)}")
        return None

    def integer(
        self, node: Node, what: str, minimum: int, maximum: int | None = None
    ) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            try:
                value = int(self.scalar(node))
            except _SCALAR_ERRORS:
                value = None
            if value is not None and value < minimum:
                self.err(node, f"{what} must be at least {minimum}")
                return None
            if value is not None and maximum is not None and value > maximum:
                self.err(node, f"{what} must be at most {maximum}")
                return None
            if value is not None:
                return value
        self.err(node, f"{what} must be an integer, got {_describe(node)}")
        return None

    def duration(self, node: Node, what: str) -> int | None:
        if isinstance(node, ScalarNode) and node.tag in (_STR_TAG, "tag:yaml.org,2002:int"):
            try:
                return parse_duration(self.scalar(node))
            except (ConstructorError, KeyError) as e:
                self.err(node, f"{what}: not a valid value ({e})")
                return None
            except ValueError as e:
                self.err(node, f"{what}: {e}")
                return None
        self.err(node, f"{what} must be a duration like '15m', got {_describe(node)}")
        return None

    def string_list(
        self, node: Node, what: str, pattern: re.Pattern[str] | None = None
    ) -> list[tuple[str, Node]]:
        """Valid, de-duplicated items with their nodes; duplicates are errors (a typo
        signal in a security policy, never intended)."""
        if not isinstance(node, SequenceNode):
            self.err(node, f"{what} must be a list")
            return []
        out: list[tuple[str, Node]] = []
        seen: set[str] = set()
        for item in node.value:
            value = self.string(item, f"{what} item", pattern)
            if value is None:
                continue
            if value in seen:
                self.err(item, f"{what}: duplicate item {value!r}")
                continue
            seen.add(value)
            out.append((value, item))
        return out

    # -- files ------------------------------------------------------------------------

    def read_file(self, name: str, text: str) -> None:
        self._file = name
        try:
            root = yaml.compose(text, Loader=_NoAliasLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = e.problem or e.context or "invalid YAML"
            self.errors.append((name, line, f"invalid YAML: {problem}"))
            return
        except yaml.YAMLError as e:
            self.errors.append((name, 1, f"invalid YAML: {e}"))
            return
        if root is None:  # empty or comment-only file: contributes nothing
            return
        top = self.mapping(root, "policy file", frozenset({"catalog", "roles"}))
        if top is None:
            return
        if "catalog" in top:
            self.read_catalog(top["catalog"][1])
        if "roles" in top:
            roles = top["roles"][1]
            if not isinstance(roles, SequenceNode):
                self.err(roles, "roles must be a list")
                return
            for item in roles.value:
                self.read_role_shape(item)

    def read_catalog(self, node: Node) -> None:
        if not isinstance(node, MappingNode):
            self.err(node, "catalog must be a mapping of secret name to entry")
            return
        seen: set[str] = set()
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _STR_TAG):
                self.err(key, "catalog: secret names must be strings")
                continue
            name = key.value
            if name in seen:
                self.err(key, f"catalog: duplicate key {name!r}")
                continue
            seen.add(name)
            if not validate_secret_name(name):
                self.err(
                    key,
                    f"catalog: invalid secret name {name!r} (lowercase segments "
                    "[a-z0-9][a-z0-9._-]* joined by '/', at most 128 characters)",
                )
                continue
            if name in self.catalog_at:
                self.err(
                    key, f"catalog: secret {name!r} is already defined at {self.catalog_at[name]}"
                )
                continue
            self.catalog_at[name] = self.at(key)
            entry = self.read_entry(name, key, value)
            if entry is not None:
                self.catalog[name] = entry

    def read_entry(self, name: str, key: Node, node: Node) -> CatalogEntry | None:
        what = f"catalog {name!r}"
        m = self.mapping(
            node,
            what,
            frozenset({"engine", "mount", "path", "role", "description", "limits"}),
            frozenset({"engine", "mount"}),
            anchor=key,
        )
        if m is None:
            return None
        engine = self.string(m["engine"][1], f"{what}: engine") if "engine" in m else None
        if engine is not None and engine not in ENGINES:
            allowed = ", ".join(sorted(ENGINES))
            self.err(m["engine"][1], f"{what}: engine {engine!r} is not one of: {allowed}")
            engine = None
        mount = self.string(m["mount"][1], f"{what}: mount", MOUNT_PATH) if "mount" in m else None
        description = ""
        if "description" in m:
            description = (
                self.string(m["description"][1], f"{what}: description", allow_empty=True) or ""
            )
        if engine is None:
            return None
        # kv2 addresses a path inside the mount; database/pki mint through a named role.
        want, other = ("path", "role") if engine == "kv2" else ("role", "path")
        if other in m:
            self.err(
                m[other][0], f"{what}: {other!r} is not used by engine {engine!r}; use {want!r}"
            )
        if want not in m:
            self.err(key, f"{what}: engine {engine!r} requires {want!r}")
            return None
        # These go into Vault URLs: segments may not start with '.', so no '..' escapes.
        pattern = MOUNT_PATH if want == "path" else _VAULT_ROLE
        target = self.string(m[want][1], f"{what}: {want}", pattern)
        limits = self.read_limits(*m["limits"], what, engine=engine) if "limits" in m else None
        if mount is None or target is None or (limits is None and "limits" in m):
            return None
        return CatalogEntry(
            name, cast(Engine, engine), mount, target, description, limits or NO_LIMITS
        )

    def read_role_shape(self, node: Node) -> None:
        # Roles refer to the catalog, which may come from a later file: check shape now,
        # resolve references once every file is read.
        m = self.mapping(
            node,
            "role",
            frozenset(
                {
                    "name",
                    "description",
                    "members",
                    "secrets",
                    "max_ttl",
                    "default_ttl",
                    "privileged",
                    "elevation",
                    "capabilities",
                    "limits",
                    "ssh",
                }
            ),
            frozenset({"name", "members"}),
        )
        if m is not None and isinstance(node, MappingNode):
            self.pending_roles.append(_PendingRole(self._file, node, m))

    # -- roles ------------------------------------------------------------------------

    def finish(self, raw: dict[str, bytes], documents: dict[str, str]) -> PolicySet | None:
        roles: list[Role] = []
        role_at: dict[str, str] = {}
        for pending in self.pending_roles:
            self._file = pending.file
            role = self.read_role(pending, role_at)
            if role is not None:
                roles.append(role)
        if self.errors:
            return None
        return PolicySet(
            catalog=MappingProxyType(dict(sorted(self.catalog.items()))),
            roles=tuple(roles),
            version=_version(raw),
            documents=MappingProxyType(dict(sorted(documents.items()))),
        )

    def read_role(self, p: _PendingRole, role_at: dict[str, str]) -> Role | None:
        m = p.fields
        before = len(self.errors)
        name = self.string(m["name"][1], "role name", _ROLE_NAME) if "name" in m else None
        what = f"role {name!r}" if name else "role"
        if name is not None:
            if name in role_at:
                self.err(m["name"][1], f"{what} is already defined at {role_at[name]}")
            else:
                role_at[name] = self.at(p.node)

        def opt(key: str, read: Callable[[Node, str], Any]) -> Any:
            return read(m[key][1], f"{what}: {key}") if key in m else None

        description = (
            self.string(m["description"][1], f"{what}: description", allow_empty=True) or ""
            if "description" in m
            else ""
        )
        members = self.read_members(*m["members"], what) if "members" in m else None
        secrets = self.read_secrets(m["secrets"][1], what) if "secrets" in m else ()
        capabilities = (
            self.read_capabilities(m["capabilities"][1], what)
            if ("capabilities" in m)
            else frozenset()
        )
        max_ttl = opt("max_ttl", self.duration)
        default_ttl = opt("default_ttl", self.duration)
        privileged = opt("privileged", self.boolean)
        elevation = self.read_elevation(*m["elevation"], what) if "elevation" in m else None
        limits = self.read_limits(*m["limits"], what) if "limits" in m else NO_LIMITS
        ssh = self.read_ssh(*m["ssh"], what) if "ssh" in m else None
        ssh_secrets = [
            n
            for n in self.catalog_names()
            if (e := self.catalog.get(n)) is not None
            and e.engine == "ssh"
            and any(secret_matches(g, n) for g in secrets)
        ]
        if ssh_secrets and "ssh" not in m:
            self.err(
                p.node,
                f"{what} grants SSH secret {ssh_secrets[0]!r}: it needs 'ssh' with the"
                " principals it may sign for",
            )
        if "ssh" in m and not ssh_secrets:
            self.err(m["ssh"][0], f"{what}: 'ssh' only applies to roles that grant SSH secrets")

        # Cross-field rules look at which keys are present, not at parsed values, so one
        # mistake is reported once rather than again by every rule that depends on it.
        if "secrets" not in m and "capabilities" not in m:
            self.err(p.node, f"{what} grants nothing: give it 'secrets' or 'capabilities'")
        if "secrets" in m and "max_ttl" not in m:
            self.err(p.node, f"{what}: 'max_ttl' is required for a role that grants secrets")
        if "secrets" not in m:
            for key in ("max_ttl", "default_ttl"):
                if key in m:
                    self.err(m[key][0], f"{what}: {key!r} only applies to roles with secrets")
        if max_ttl is not None and max_ttl > MAX_GRANT_TTL:
            limit = format_duration(MAX_GRANT_TTL)
            self.err(m["max_ttl"][1], f"{what}: max_ttl is longer than the {limit} limit")
        if max_ttl is not None and default_ttl is not None and default_ttl > max_ttl:
            self.err(m["default_ttl"][1], f"{what}: default_ttl is longer than max_ttl")
        if privileged and "elevation" not in m:
            self.err(m["privileged"][0], f"{what}: a privileged role needs an 'elevation' rule")
        if "elevation" in m and (privileged is False or "privileged" not in m):
            self.err(m["elevation"][0], f"{what}: 'elevation' needs 'privileged: true'")
        if privileged and "capabilities" in m:
            self.err(
                m["capabilities"][0],
                f"{what}: a privileged role cannot carry "
                "capabilities (they would be standing, not elevated)",
            )
        if privileged and "secrets" not in m:
            self.err(m["privileged"][0], f"{what}: a privileged role must grant secrets")
        if elevation is not None and max_ttl is not None and max_ttl > elevation.max_duration:
            # A credential must not outlive the elevation that justified it.
            self.err(m["max_ttl"][1], f"{what}: max_ttl is longer than elevation.max_duration")

        if len(self.errors) != before or name is None or members is None:
            return None
        ttl = max_ttl or 0
        return Role(
            name=name,
            description=description,
            members=members,
            secrets=secrets,
            max_ttl=ttl,
            default_ttl=default_ttl or ttl,
            privileged=bool(privileged),
            elevation=elevation,
            capabilities=capabilities,
            source=role_at[name],
            limits=limits or NO_LIMITS,
            ssh=ssh,
        )

    def read_limits(
        self, key: Node, node: Node, what: str, *, engine: str | None = None
    ) -> Limits | None:
        """A ``limits`` mapping; ``engine`` is set for a catalog entry, None for a role.

        ``live_grants`` needs something to count (a leased engine, or a role);
        ``elevation_requests`` is a requester's, so it belongs to roles only."""
        what = f"{what}: limits"
        allowed = {"rate", "burst", "live_grants"}
        if engine is None:
            allowed.add("elevation_requests")
        m = self.mapping(node, what, frozenset(allowed), anchor=key)
        if m is None:
            return None
        if not m:
            self.err(node, f"{what} must not be empty (omit the key instead)")
            return None
        before = len(self.errors)
        rate = self.rate(m["rate"][1], f"{what}: rate") if "rate" in m else None
        burst, live, elevations = (
            self.integer(m[k][1], f"{what}: {k}", 1, _MAX_LIMIT) if k in m else None
            for k in ("burst", "live_grants", "elevation_requests")
        )
        if engine is not None and engine != "database" and "live_grants" in m:
            self.err(
                m["live_grants"][0],
                f"{what}: live_grants counts database leases; a {engine} grant is not one"
                " (use rate)",
            )
        if len(self.errors) != before:
            return None
        return Limits(rate=rate, burst=burst, live_grants=live, elevation_requests=elevations)

    def read_ssh(self, key: Node, node: Node, what: str) -> SSHRule | None:
        what = f"{what}: ssh"
        m = self.mapping(
            node,
            what,
            frozenset({"principals", "extensions", "source_address"}),
            frozenset({"principals"}),
            anchor=key,
        )
        if m is None:
            return None
        before = len(self.errors)
        principals = (
            self.string_list(m["principals"][1], f"{what}: principals", SSH_PRINCIPAL)
            if "principals" in m
            else []
        )
        if "principals" in m and not principals and len(self.errors) == before:
            self.err(m["principals"][1], f"{what}: principals must not be empty")
        extensions = frozenset({"permit-pty"})
        if "extensions" in m:
            items = self.string_list(m["extensions"][1], f"{what}: extensions")
            for value, item in items:
                if value not in SSH_EXTENSIONS:
                    allowed = ", ".join(sorted(SSH_EXTENSIONS))
                    self.err(item, f"{what}: extension {value!r} is not one of: {allowed}")
            extensions = frozenset(v for v, _ in items)
        source = None
        if "source_address" in m:
            source = self.string(m["source_address"][1], f"{what}: source_address")
            if source is not None:
                try:
                    for cidr in source.split(","):
                        ipaddress.ip_network(cidr.strip(), strict=False)
                except ValueError:
                    self.err(
                        m["source_address"][1],
                        f"{what}: source_address must be comma-separated addresses or CIDRs",
                    )
                source = ",".join(c.strip() for c in source.split(","))
        if len(self.errors) != before:
            return None
        return SSHRule(frozenset(v for v, _ in principals), extensions, source)

    def rate(self, node: Node, what: str) -> float | None:
        text = node.value if isinstance(node, ScalarNode) and node.tag == _STR_TAG else None
        match = _RATE.fullmatch(text) if text is not None else None
        value = float(match[1]) / _RATE_UNIT[match[2]] if match else 0.0
        if match is None or not 0 < value <= _MAX_LIMIT:
            self.err(node, f"{what} must look like '5/s', '30/m' or '100/h' (more than 0)")
            return None
        return value

    def read_capabilities(self, node: Node, what: str) -> frozenset[str]:
        what = f"{what}: capabilities"
        items = self.string_list(node, what)
        if isinstance(node, SequenceNode) and not node.value:
            self.err(node, f"{what} must not be empty (omit the key instead)")
        out: set[str] = set()
        for value, item in items:
            if value in CAPABILITIES:
                out.add(value)
            else:
                allowed = ", ".join(sorted(CAPABILITIES))
                self.err(item, f"{what}: unknown capability {value!r} (expected one of: {allowed})")
        return frozenset(out)

    def read_members(self, key: Node, node: Node, what: str) -> Members | None:
        what = f"{what}: members"
        before = len(self.errors)
        m = self.mapping(node, what, frozenset({"groups", "subjects", "service_accounts"}))
        if m is None:
            return None

        def values(key: str, pattern: re.Pattern[str] | None = None) -> frozenset[str]:
            if key not in m:
                return frozenset()
            return frozenset(v for v, _ in self.string_list(m[key][1], f"{what}.{key}", pattern))

        members = Members(
            groups=values("groups"),
            subjects=values("subjects"),
            service_accounts=values("service_accounts", _SERVICE_ACCOUNT),
        )
        if len(self.errors) != before:
            return None
        if not (members.groups or members.subjects or members.service_accounts):
            self.err(key, f"{what}: at least one group, subject or service account is required")
            return None
        return members

    def read_secrets(self, node: Node, what: str) -> tuple[str, ...]:
        items = self.string_list(node, f"{what}: secrets", _SECRET_GLOB)
        if isinstance(node, SequenceNode) and not node.value:
            self.err(node, f"{what}: secrets must not be empty (omit the key instead)")
        out: list[str] = []
        for pattern, item in items:
            if "*" in pattern:
                if not any(secret_matches(pattern, name) for name in self.catalog_names()):
                    self.err(item, f"{what}: pattern {pattern!r} matches no catalog secret")
                    continue
            elif pattern not in self.catalog_at:
                self.err(item, f"{what}: secret {pattern!r} is not in the catalog")
                continue
            out.append(pattern)
        return tuple(out)

    def catalog_names(self) -> Iterator[str]:
        # Names whose entries were invalid still count: their error is reported once, at
        # the entry, rather than again at every role that grants them.
        return iter(self.catalog_at)

    def read_elevation(self, key: Node, node: Node, what: str) -> ElevationRule | None:
        what = f"{what}: elevation"
        m = self.mapping(
            node,
            what,
            frozenset(
                {
                    "factors",
                    "approver_groups",
                    "approvals",
                    "max_duration",
                    "request_expiry",
                    "reason_min_length",
                    "ticket_required",
                    "ticket_pattern",
                    "break_glass",
                    "break_glass_reviewers",
                }
            ),
            frozenset({"max_duration"}),
            anchor=key,
        )
        if m is None:
            return None
        before = len(self.errors)

        # Who approves: the general 'factors' list, or the one-factor shorthand.
        factors: tuple[ApprovalFactor, ...] = ()
        shorthand = [k for k in ("approver_groups", "approvals") if k in m]
        if "factors" in m and shorthand:
            self.err(
                m["factors"][0],
                f"{what}: give either 'factors' or the shorthand 'approver_groups'/'approvals',"
                " not both",
            )
        elif "factors" in m:
            factors = self.read_factors(m["factors"][1], f"{what}.factors")
        elif "approver_groups" in m:
            factor = self.read_factor(m, what)
            factors = (factor,) if factor is not None else ()
        else:
            self.err(key, f"{what}: missing required key 'approver_groups' (or give 'factors')")

        def opt_duration(name: str, default: int) -> int:
            if name not in m:
                return default
            return self.duration(m[name][1], f"{what}.{name}") or default

        def opt_bool(name: str) -> bool:
            return name in m and bool(self.boolean(m[name][1], f"{what}.{name}"))

        max_duration = opt_duration("max_duration", 0)
        request_expiry = opt_duration("request_expiry", DEFAULT_REQUEST_EXPIRY)
        if "request_expiry" in m and not (
            MIN_REQUEST_EXPIRY <= request_expiry <= MAX_REQUEST_EXPIRY
        ):
            self.err(
                m["request_expiry"][1],
                f"{what}.request_expiry must be between {format_duration(MIN_REQUEST_EXPIRY)}"
                f" and {format_duration(MAX_REQUEST_EXPIRY)}",
            )
        reason_min_length = DEFAULT_REASON_MIN_LENGTH
        if "reason_min_length" in m:
            reason_min_length = (
                self.integer(
                    m["reason_min_length"][1],
                    f"{what}.reason_min_length",
                    MIN_REASON_LENGTH,
                    MAX_REASON_LENGTH,
                )
                or DEFAULT_REASON_MIN_LENGTH
            )
        ticket_required = opt_bool("ticket_required")
        ticket_pattern = DEFAULT_TICKET_PATTERN
        if "ticket_pattern" in m:
            value = self.string(m["ticket_pattern"][1], f"{what}.ticket_pattern")
            if value is not None:
                problem = ticket_pattern_problem(value)
                if problem is None:
                    ticket_pattern = value
                else:
                    self.err(m["ticket_pattern"][1], f"{what}.ticket_pattern: {problem}")
        break_glass_value = (
            self.boolean(m["break_glass"][1], f"{what}.break_glass")
            if "break_glass" in m
            else False
        )
        break_glass = bool(break_glass_value)
        reviewers: frozenset[str] = frozenset()
        if "break_glass_reviewers" in m:
            reviewers = self.group_list(
                m["break_glass_reviewers"][1], f"{what}.break_glass_reviewers"
            )
            # Present-but-not-true: a typo'd or forgotten flag must not go unnoticed.
            if break_glass_value is False:
                self.err(
                    m["break_glass_reviewers"][0],
                    f"{what}: 'break_glass_reviewers' needs 'break_glass: true'",
                )
        if len(self.errors) != before or not factors or not max_duration:
            return None
        return ElevationRule(
            factors=factors,
            max_duration=max_duration,
            request_expiry=request_expiry,
            reason_min_length=reason_min_length,
            ticket_required=ticket_required,
            ticket_pattern=ticket_pattern,
            break_glass=break_glass,
            break_glass_reviewers=reviewers,
        )

    def read_factors(self, node: Node, what: str) -> tuple[ApprovalFactor, ...]:
        if not isinstance(node, SequenceNode):
            self.err(node, f"{what} must be a list")
            return ()
        if not node.value:
            self.err(node, f"{what} must not be empty")
            return ()
        out: list[ApprovalFactor] = []
        for i, item in enumerate(node.value):
            item_what = f"{what}[{i}]"
            m = self.mapping(
                item,
                item_what,
                frozenset({"approver_groups", "approvals"}),
                frozenset({"approver_groups"}),
            )
            if m is None:
                continue
            factor = self.read_factor(m, item_what)
            if factor is not None:
                out.append(factor)
        return tuple(out) if len(out) == len(node.value) else ()

    def read_factor(
        self, m: dict[str, tuple[ScalarNode, Node]], what: str
    ) -> ApprovalFactor | None:
        """One factor from a mapping holding 'approver_groups' and optional 'approvals'
        (a 'factors' item, or the elevation mapping itself in the shorthand form)."""
        before = len(self.errors)
        groups = frozenset[str]()
        if "approver_groups" in m:
            groups = self.group_list(m["approver_groups"][1], f"{what}.approver_groups")
        approvals = MIN_FACTOR_APPROVALS
        if "approvals" in m:
            approvals = (
                self.integer(
                    m["approvals"][1],
                    f"{what}.approvals",
                    MIN_FACTOR_APPROVALS,
                    MAX_FACTOR_APPROVALS,
                )
                or MIN_FACTOR_APPROVALS
            )
        if len(self.errors) != before or not groups:
            return None
        return ApprovalFactor(approver_groups=groups, approvals=approvals)

    def group_list(self, node: Node, what: str) -> frozenset[str]:
        groups = frozenset(v for v, _ in self.string_list(node, what))
        if isinstance(node, SequenceNode) and not node.value:
            self.err(node, f"{what} must not be empty")
        return groups


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TYPE_NAMES.get(node.tag, f"a value tagged {node.tag}")
