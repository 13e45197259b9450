"""Which Vault API call a request is, and which catalog entry it reads (pure; no I/O).

The front door is read/issue-only. ``resolve`` maps (method, path after ``/v1/``) to an
``Operation``; everything it does not recognise is a refusal, never a pass-through:

=========================================  =============  =======  =================================
request                                    kind           access   notes
=========================================  =============  =======  =================================
PUT/POST auth/<mount>/login                login          public   {role?, jwt}
PUT/POST auth/<idp>/oidc/auth_url          oidc_auth_url  public   redirect_uri, client_nonce, role?
GET auth/<idp>/oidc/callback               oidc_callback  public   ?state&code&client_nonce
GET auth/token/lookup-self                 token_lookup   session
PUT/POST auth/token/renew-self             token_renew    session  via the provider if any
PUT/POST auth/token/revoke-self            token_revoke   session  a sign-in: logout
GET sys/health, GET sys/seal-status        health         public   as in Vault
GET sys/mounts                             mounts         session  the caller's mounts
GET sys/internal/ui/mounts/<path>          ui_mount       session  CLIs' KV probe
PUT/POST sys/leases/renew                  lease_renew    session  {lease_id, increment?}
PUT/POST sys/leases/renew/<lease id>       lease_renew    session
PUT/POST sys/leases/revoke                 lease_revoke   session  {lease_id}
PUT/POST sys/leases/revoke/<lease id>      lease_revoke   session
GET <kv mount>/data/<path>                 kv_read        session  catalog kv2 entry
GET <kv mount>/metadata/<path>             kv_metadata    session  no values returned
GET <db mount>/creds/<role>                db_creds       session  catalog database entry
PUT/POST <pki mount>/issue/<role>          pki_issue      session  catalog pki entry
PUT/POST <ssh mount>/sign/<role>           ssh_sign       session  catalog ssh entry
other sys/* and auth/*                     refused        session  not_supported
any other write (PUT/POST/PATCH/DELETE)    refused        session  read_only
any other read                             refused        session  not_in_catalog
=========================================  =============  =======  =================================

``<idp>`` is the ``name`` of a configured identity provider (``[[oidc_providers]]``): the
two calls of ``bao login -method=oidc -path=<idp>``. The same paths under any other mount,
and every other path of an auth mount (``auth/<idp>/role/…``, ``auth/<idp>/config``,
``auth/<idp>/oidc/poll``), are ``not_supported``.

``OPERATION_ACCESS`` is the access column, read by the front door's one handler before it
does anything else (deny by default: a kind missing from it is refused). ``session`` is a
front-door token (``hvb.…``) of a subject not offboarded, checked as ``authenticated``
routes are on the native API; refusals are authenticated first so that a known subject's
probing is ledgered. Resource rules (which secrets) are the policy's, as on the native API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from broker.policy.model import CatalogEntry
from broker.web.access import Access, authenticated, public

__all__ = [
    "OPERATION_ACCESS",
    "CatalogIndex",
    "Operation",
    "OperationKind",
    "catalog_index",
    "mount_of",
    "resolve",
]

OperationKind = Literal[
    "login",
    "oidc_auth_url",
    "oidc_callback",
    "token_lookup",
    "token_renew",
    "token_revoke",
    "health",
    "mounts",
    "ui_mount",
    "lease_renew",
    "lease_revoke",
    "kv_read",
    "kv_metadata",
    "db_creds",
    "pki_issue",
    "ssh_sign",
    "refused",
]

# The access column of the table above. A session is the front door's ``authenticated``.
OPERATION_ACCESS: Mapping[OperationKind, Access] = {
    "login": public,
    "oidc_auth_url": public,
    "oidc_callback": public,
    "health": public,
    **{
        kind: authenticated
        for kind in (
            "token_lookup",
            "token_renew",
            "token_revoke",
            "mounts",
            "ui_mount",
            "lease_renew",
            "lease_revoke",
            "kv_read",
            "kv_metadata",
            "db_creds",
            "pki_issue",
            "ssh_sign",
            "refused",
        )
    },
}

# HEAD is not a read here: it would mint (and ledger) a credential nobody receives.
_READ = frozenset({"GET"})
_WRITE = frozenset({"PUT", "POST"})
_LOGIN = re.compile(r"^auth/([A-Za-z0-9._-]{1,64})/login$")
_OIDC = re.compile(r"^auth/([^/]+)/oidc/(auth_url|callback)$")
_LEASE = re.compile(r"^sys/leases/(renew|revoke)(?:/(.+))?$")


@dataclass(frozen=True)
class Operation:
    kind: OperationKind
    entry: CatalogEntry | None = None
    # login: the auth mount; oidc_*: the identity provider's name; lease_*: a lease id from
    # the path; ui_mount: the probed path; health: "seal_status" for sys/seal-status (always
    # 200, as Vault answers it);
    # refused: why (not_in_catalog | read_only | not_supported | method_not_allowed).
    detail: str = ""


CatalogIndex = dict[str, tuple[str, CatalogEntry]]


def catalog_index(catalog: Mapping[str, CatalogEntry]) -> CatalogIndex:
    """'<mount>/<verb>/<path>' -> (operation kind, entry), for every catalog entry.

    Built once per policy version by the caller, so a request costs one dict lookup.
    """
    out: CatalogIndex = {}
    for e in catalog.values():
        mount = e.mount.strip("/")
        if e.engine == "kv2":
            out[f"{mount}/data/{e.path}"] = ("kv_read", e)
            out[f"{mount}/metadata/{e.path}"] = ("kv_metadata", e)
        elif e.engine == "database":
            out[f"{mount}/creds/{e.path}"] = ("db_creds", e)
        elif e.engine == "pki":
            out[f"{mount}/issue/{e.path}"] = ("pki_issue", e)
        elif e.engine == "ssh":
            out[f"{mount}/sign/{e.path}"] = ("ssh_sign", e)
    return out


def resolve(
    method: str, path: str, index: CatalogIndex, providers: frozenset[str] = frozenset()
) -> Operation:
    """Classify one request. ``path`` is the URL path after ``/v1/``, already decoded;
    ``providers`` are the names of the configured identity providers."""
    method = method.upper()
    path = path.strip("/")
    if (m := _OIDC.match(path)) and m.group(1) in providers:
        # bao writes auth_url (PUT) and reads the callback (GET, the query carries it).
        if m.group(2) == "auth_url":
            if method not in _WRITE:
                return _not_allowed()
            return Operation("oidc_auth_url", detail=m.group(1))
        if method not in _READ:
            return _not_allowed()
        return Operation("oidc_callback", detail=m.group(1))
    if m := _LOGIN.match(path):
        if m.group(1) == "token":
            return Operation("refused", detail="not_supported")
        return Operation("login", detail=m.group(1)) if method in _WRITE else _not_allowed()
    if path == "auth/token/lookup-self":
        return Operation("token_lookup") if method in _READ else _not_allowed()
    if path in ("auth/token/renew-self", "auth/token/revoke-self"):
        if method not in _WRITE:
            return _not_allowed()
        return Operation("token_renew" if path.endswith("renew-self") else "token_revoke")
    if path in ("sys/health", "sys/seal-status"):
        if method not in ("GET", "HEAD"):
            return _not_allowed()
        return Operation("health", detail="seal_status" if path.endswith("status") else "")
    if path == "sys/mounts":
        return Operation("mounts") if method in _READ else _refused_write()
    if path.startswith("sys/internal/ui/mounts/"):
        probed = path[len("sys/internal/ui/mounts/") :]
        return Operation("ui_mount", detail=probed) if method in _READ else _refused_write()
    if m := _LEASE.match(path):
        if method not in _WRITE:
            return _not_allowed()
        kind: OperationKind = "lease_renew" if m.group(1) == "renew" else "lease_revoke"
        return Operation(kind, detail=m.group(2) or "")
    if path.startswith(("sys/", "auth/")) or path == "sys":
        return Operation("refused", detail="not_supported")
    found = index.get(path)
    if found is None:
        return (
            _refused_write()
            if method not in _READ
            else Operation("refused", detail="not_in_catalog")
        )
    kind_name, entry = found
    if kind_name in ("pki_issue", "ssh_sign"):
        kind = "pki_issue" if kind_name == "pki_issue" else "ssh_sign"
        return Operation(kind, entry) if method in _WRITE else _not_allowed()
    if method not in _READ:
        return _refused_write()
    op_kind: OperationKind = (
        "kv_read"
        if kind_name == "kv_read"
        else ("kv_metadata" if kind_name == "kv_metadata" else "db_creds")
    )
    return Operation(op_kind, entry)


def _not_allowed() -> Operation:
    return Operation("refused", detail="method_not_allowed")


def _refused_write() -> Operation:
    return Operation("refused", detail="read_only")


def mount_of(path: str, catalog: Mapping[str, CatalogEntry]) -> CatalogEntry | None:
    """A catalog entry whose mount is a prefix of ``path`` (for the KV-version probe)."""
    path = path.strip("/") + "/"
    for e in sorted(catalog.values(), key=lambda e: -len(e.mount)):
        if path.startswith(e.mount.strip("/") + "/"):
            return e
    return None
