"""Policy: YAML role model loaded from a directory, and pure access decisions over it.

``load_policy_dir`` is the only function here that touches the file system; everything
else is a pure function of a ``PolicySet`` and a ``Principal``.
"""

from broker.policy.decide import (
    Decision,
    Outcome,
    Requestable,
    capabilities,
    decide,
    requestable,
    roles_for,
)
from broker.policy.loader import DEFAULT_MAX_FILE_BYTES, MAX_FILES, load_policy_dir
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
    ApprovalFactor,
    CatalogEntry,
    ElevationRule,
    Engine,
    Members,
    PolicySet,
    Role,
    secret_matches,
    ticket_pattern_problem,
    validate_secret_name,
)

__all__ = [
    "CAPABILITIES",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_REASON_MIN_LENGTH",
    "DEFAULT_REQUEST_EXPIRY",
    "DEFAULT_TICKET_PATTERN",
    "ENGINES",
    "MAX_FACTOR_APPROVALS",
    "MAX_FILES",
    "MAX_REASON_LENGTH",
    "MAX_REQUEST_EXPIRY",
    "MIN_FACTOR_APPROVALS",
    "MIN_REASON_LENGTH",
    "MIN_REQUEST_EXPIRY",
    "ApprovalFactor",
    "CatalogEntry",
    "Decision",
    "ElevationRule",
    "Engine",
    "Members",
    "Outcome",
    "PolicySet",
    "Requestable",
    "Role",
    "capabilities",
    "decide",
    "load_policy_dir",
    "requestable",
    "roles_for",
    "secret_matches",
    "ticket_pattern_problem",
    "validate_secret_name",
]
