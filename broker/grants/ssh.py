"""SSH user certificates as grants: what the caller asks, and what OpenBao signs.

A grant of an ``ssh`` catalog secret is a user certificate from OpenBao's SSH engine (CA
mode) for the caller's own public key. Policy alone says what it may carry: the
principals are the granting role's ``ssh.principals`` (the caller may ask for a subset,
never more), the extensions and ``source-address`` are the role's, the key id names the
grant and the subject (so each sshd log line of a login leads back to its ledger row),
and the TTL is bounded like every grant. The ledger records the serial, key id,
principals, validity and the public key's fingerprint: never the key itself.

SSH certificates cannot be recalled: a revoked or offboarded grant's certificate is
listed in the broker's key revocation list (``GET /v1/ssh/krl``) until it expires.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.errors import BadRequest, Forbidden, VaultError
from broker.policy.model import CatalogEntry, Role
from broker.ssh import InvalidCertificate, PublicKey, parse_certificate, parse_public_key
from broker.vault import VaultClient

__all__ = ["SSHAsk", "check_fields", "key_id_for", "prepare", "sign"]


@dataclass(frozen=True)
class SSHAsk:
    """A checked request for a certificate: the parsed key, the principals to sign, and
    the granting role's extensions and ``source-address``."""

    public_key: PublicKey
    principals: tuple[str, ...]
    extensions: tuple[str, ...]
    source_address: str | None


def key_id_for(grant_id: uuid.UUID, subject: str) -> str:
    """The certificate's key id: sshd logs it at each login (``ID ...``)."""
    return f"jit-broker:{grant_id}:{subject}"


def check_fields(entry: CatalogEntry, public_key: str | None, principals: object) -> None:
    """400 when SSH fields are missing for an SSH secret or given for another one."""
    if entry.engine == "ssh":
        if not public_key:
            raise BadRequest(
                f"{entry.name!r} is an SSH secret: give 'public_key' (your OpenSSH public"
                " key line, e.g. the contents of ~/.ssh/id_ed25519.pub)",
                code="public_key_required",
            )
    elif public_key is not None or principals is not None:
        raise BadRequest(
            f"'public_key' and 'principals' only apply to SSH secrets; {entry.name!r} is"
            f" a {entry.engine} secret",
            code="not_an_ssh_secret",
        )


def prepare(role: Role, public_key: str, principals: tuple[str, ...] | None) -> SSHAsk:
    """Parse the key (400 on a malformed, forbidden or private key) and settle the
    principals: the role's own when none are asked, else a subset of them (403)."""
    rule = role.ssh
    assert rule is not None  # the loader requires it of roles granting SSH secrets
    key = parse_public_key(public_key)
    allowed = rule.principals
    terms = (tuple(sorted(rule.extensions)), rule.source_address)
    if principals is None:
        return SSHAsk(key, tuple(sorted(allowed)), *terms)
    extra = sorted(set(principals) - allowed)
    if extra:
        raise Forbidden(
            f"role {role.name!r} may not sign for principals {', '.join(extra)}"
            f" (it allows {', '.join(sorted(allowed))})",
            code="principals_not_allowed",
        )
    return SSHAsk(key, tuple(sorted(set(principals))), *terms)


async def sign(
    vault: VaultClient, entry: CatalogEntry, ask: SSHAsk, *, ttl: int, key_id: str
) -> tuple[dict[str, Any], dict[str, Any], datetime]:
    """Have OpenBao sign; return (what the ledger records, the credential, its end).

    The certificate is read back and must say exactly what was asked (principals, key
    id): anything else is a ``VaultError`` and is never handed out.
    """
    options = {"source-address": ask.source_address} if ask.source_address else {}
    signed = await vault.ssh_sign(
        entry.mount,
        entry.path,
        public_key=ask.public_key.openssh,
        principals=ask.principals,
        ttl=ttl,
        key_id=key_id,
        extensions=ask.extensions,
        critical_options=options,
    )
    try:
        cert = parse_certificate(signed.signed_key)
    except InvalidCertificate as e:
        raise VaultError("vault returned an SSH certificate that does not parse") from e
    if (
        tuple(sorted(cert.principals)) != ask.principals
        or cert.key_id != key_id
        or cert.key_fingerprint != ask.public_key.fingerprint
    ):
        raise VaultError("vault signed something other than what was asked")
    record = {
        "serial_number": str(cert.serial),
        "key_id": key_id,
        "principals": list(ask.principals),
        "valid_after": cert.valid_after.isoformat(),
        "valid_before": cert.valid_before.isoformat(),
        "public_key_type": ask.public_key.algorithm,
        "public_key_fingerprint": ask.public_key.fingerprint,
        "ca_fingerprint": cert.ca_fingerprint,
        "extensions": sorted(cert.extensions),
        **({"source_address": options["source-address"]} if options else {}),
    }
    credential = {
        "signed_key": signed.signed_key,
        "serial_number": str(cert.serial),
        "key_id": key_id,
        "principals": list(ask.principals),
        "valid_after": cert.valid_after.isoformat(),
        "valid_before": cert.valid_before.isoformat(),
    }
    return record, credential, cert.valid_before
