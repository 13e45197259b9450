"""Auditor evidence derived from the ledger: continuity (heartbeats, gaps) and findings.

``analyze`` is pure (package event records in, findings out); the continuity helpers hold
the one definition of a gap and the heartbeat job every replica runs.
"""

from broker.evidence.continuity import (
    Gap,
    GapAnnotation,
    GapDetector,
    annotation_from_row,
    append_heartbeat,
    gap_threshold,
    gaps_in,
)
from broker.evidence.findings import (
    FINDING_KINDS,
    MAX_FINDINGS_PER_KIND,
    Finding,
    Severity,
    analyze,
)
from broker.evidence.package import (
    EvidenceError,
    ExportOptions,
    ExportResult,
    NotYetSigned,
    export_package,
)

__all__ = [
    "FINDING_KINDS",
    "MAX_FINDINGS_PER_KIND",
    "EvidenceError",
    "ExportOptions",
    "ExportResult",
    "Finding",
    "Gap",
    "GapAnnotation",
    "GapDetector",
    "NotYetSigned",
    "Severity",
    "analyze",
    "annotation_from_row",
    "append_heartbeat",
    "export_package",
    "gap_threshold",
    "gaps_in",
]
