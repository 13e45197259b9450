"""The checkpoint keys a command trusts: the signing key's own verifier key when the key
file is at hand (an operator), plus ``BROKER_CHECKPOINT_VERIFIER_KEYS`` (an auditor)."""

from __future__ import annotations

from typing import Any

__all__ = ["checkpoint_keys"]


def checkpoint_keys(settings: Any) -> tuple[Any, list[str]]:
    """(signer or None, trusted verifier keys) from the settings."""
    from broker.ledger import CheckpointSigner, load_or_create_signing_key

    signer = None
    keys = list(settings.checkpoint_verifier_keys)
    if settings.checkpoint_key_path.exists():
        key = load_or_create_signing_key(settings.checkpoint_key_path, create=False)
        signer = CheckpointSigner(settings.checkpoint_key_name, key)
        keys.append(signer.verifier_key())
    return signer, keys
