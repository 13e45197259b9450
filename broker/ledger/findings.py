"""What a check of ledger rows found: shared by verification and segment checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_PROBLEMS", "Problems"]

MAX_PROBLEMS = 50


@dataclass
class Problems:
    """``ok`` until a failure; ``first_bad_seq`` the lowest row named; at most
    ``MAX_PROBLEMS`` problems listed (``seq`` None for those about no row)."""

    ok: bool = True
    first_bad_seq: int | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> None:
        self.ok = False
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"seq": seq, "problem": problem})
