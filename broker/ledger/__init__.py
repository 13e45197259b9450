"""The ledger: the only package with SQL. Append-only, hash-chained, a Merkle tree, signed."""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    CheckpointVerifier,
    load_or_create_signing_key,
)
from .events import EVENT_TYPES, ElevationStep, Event, NewEvent, session_revoked_key
from .migrate import apply_migrations
from .replication import ReplicationState, replication_refusal, replication_state
from .store import GrantRecord, Ledger, connect_one, connect_pool
from .verify import VerifyReport, record_verified_head, verify_ledger
from .writer import Appended, LedgerWriter

__all__ = [
    "EVENT_TYPES",
    "Appended",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSigner",
    "CheckpointVerifier",
    "ElevationStep",
    "Event",
    "GrantRecord",
    "Ledger",
    "LedgerWriter",
    "NewEvent",
    "ReplicationState",
    "VerifyReport",
    "apply_migrations",
    "connect_one",
    "connect_pool",
    "load_or_create_signing_key",
    "record_verified_head",
    "replication_refusal",
    "replication_state",
    "session_revoked_key",
    "verify_ledger",
]
