"""Approval factors: every factor met, one approver counts once (pure)."""

from __future__ import annotations

from broker.elevation.quorum import factors_met, quorum_met

SRE = frozenset({"sre-leads"})
SEC = frozenset({"security"})


def test_single_factor_one_approval() -> None:
    assert quorum_met([(SRE, 1)], {"bob": SRE})
    assert not quorum_met([(SRE, 1)], {})
    assert not quorum_met([(SRE, 1)], {"carol": frozenset({"auditors"})})


def test_two_of_n_needs_two_people() -> None:
    assert not quorum_met([(SRE, 2)], {"bob": SRE})
    assert quorum_met([(SRE, 2)], {"bob": SRE, "dana": SRE})


def test_and_of_factors_needs_distinct_people() -> None:
    both = SRE | SEC
    assert not quorum_met([(SRE, 1), (SEC, 1)], {"bob": both})
    assert quorum_met([(SRE, 1), (SEC, 1)], {"bob": both, "eve": SEC})
    # Order must not matter: the matcher reassigns bob to free the slot eve needs.
    assert quorum_met([(SEC, 1), (SRE, 1)], {"bob": both, "eve": SEC})
    assert quorum_met([(SRE, 1), (SEC, 1)], {"alice": both, "zed": SRE})


def test_no_factors_is_never_met() -> None:
    assert not quorum_met([], {"bob": SRE})


def test_factors_met_counts_each_approver_once() -> None:
    both = SRE | SEC
    assert factors_met([(SRE, 1), (SEC, 1)], {}) == [0, 0]
    assert factors_met([(SRE, 2)], {"bob": SRE}) == [1]
    # bob alone meets one factor, never both; with eve the matcher gives each one.
    assert sum(factors_met([(SRE, 1), (SEC, 1)], {"bob": both})) == 1
    assert factors_met([(SRE, 1), (SEC, 1)], {"bob": both, "eve": SEC}) == [1, 1]
    assert factors_met([(SRE, 1)], {"carol": frozenset({"auditors"})}) == [0]
