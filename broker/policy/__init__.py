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
    ENGINES,
    CatalogEntry,
    ElevationRule,
    Engine,
    Members,
    PolicySet,
    Role,
    secret_matches,
    validate_secret_name,
)

__all__ = [
    "CAPABILITIES",
    "DEFAULT_MAX_FILE_BYTES",
    "ENGINES",
    "MAX_FILES",
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
    "validate_secret_name",
]
