"""Is an elevation approved? Pure: approval factors vs the approvers who voted.

Rule: every factor must be met, and one approver counts toward at most one factor — an
SRE lead who is also a security engineer cannot satisfy "one SRE lead AND one security
engineer" alone. That is a bipartite matching (approvers -> factor slots); the sizes are
tiny, so simple augmenting paths are plenty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["Factor", "factors_met", "quorum_met"]

Factor = tuple[frozenset[str], int]  # (approver groups, approvals needed)


def _matching(
    factors: Sequence[Factor], approvers: Mapping[str, frozenset[str]]
) -> tuple[list[int], dict[int, str]]:
    """The factor of each slot, and a largest assignment of approvers to slots."""
    slots = [i for i, (_, need) in enumerate(factors) for _ in range(need)]
    holder: dict[int, str] = {}  # slot -> approver

    def eligible(approver: str, slot: int) -> bool:
        return bool(approvers[approver] & factors[slots[slot]][0])

    def assign(approver: str, seen: set[int]) -> bool:
        for slot in range(len(slots)):
            if slot in seen or not eligible(approver, slot):
                continue
            seen.add(slot)
            if slot not in holder or assign(holder[slot], seen):
                holder[slot] = approver
                return True
        return False

    for approver in sorted(approvers):
        assign(approver, set())
    return slots, holder


def quorum_met(factors: Sequence[Factor], approvers: Mapping[str, frozenset[str]]) -> bool:
    """True iff ``approvers`` (approver -> groups held when they voted) meet every factor."""
    slots, holder = _matching(factors, approvers)
    return bool(slots) and len(holder) == len(slots)


def factors_met(factors: Sequence[Factor], approvers: Mapping[str, frozenset[str]]) -> list[int]:
    """How many approvals count toward each factor, by the same rule (one approver, one
    factor): what an approver sees as "met" and "still missing"."""
    slots, holder = _matching(factors, approvers)
    met = [0] * len(factors)
    for slot in holder:
        met[slots[slot]] += 1
    return met
