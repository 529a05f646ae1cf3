"""RWJS: hand-computed cases and properties."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellduality.tasks.rwjs import as_gene_list, mean_rwjs, rank_weights, rwjs

GENES = st.sampled_from([f"G{i}" for i in range(12)])
LISTS = st.lists(GENES, max_size=10)
UNIQUE = st.lists(GENES, max_size=10, unique=True)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # identical lists
        (["A", "B", "C"], ["A", "B", "C"], Fraction(1)),
        # swapped: min = 1/2 + 1/2, max = 1 + 1
        (["A", "B"], ["B", "A"], Fraction(1, 2)),
        # B missing, C moves up: min = 1 + 0 + 1/3, max = 1 + 1/2 + 1/2
        (["A", "B", "C"], ["A", "C"], Fraction(2, 3)),
        # reversed 4: min = 1/4+1/3+1/3+1/4 = 7/6, max = 1+1/2+1/2+1 = 3
        (["A", "B", "C", "D"], ["D", "C", "B", "A"], Fraction(7, 18)),
        # extra gene in candidate: min = 1 + 1/2, max = 1 + 1/2 + 1/3
        (["A", "B"], ["A", "B", "X"], Fraction(9, 11)),
        # duplicates are removed before ranking (first occurrence kept): B moves up to rank 2
        (["A", "B"], ["A", "A", "B"], Fraction(1)),
        (["A", "B"], ["A", "B", "B"], Fraction(1)),
        # a repeat of a reference gene cannot stand in for a missing one: min = 1, max = 1 + 1/2
        (["A", "B"], ["A", "A", "A"], Fraction(2, 3)),
        (["A"], ["B"], Fraction(0)),
        (["A", "B"], [], Fraction(0)),
        ([], [], Fraction(0)),
    ],
)
def test_hand_computed(a: list[str], b: list[str], expected: Fraction) -> None:
    assert rwjs(a, b) == pytest.approx(float(expected), abs=1e-12)


def test_sentences_are_split_on_whitespace() -> None:
    assert rwjs("A B C", ["A", "C"]) == pytest.approx(2 / 3)
    assert as_gene_list("CD3D  CD3E\nIL7R") == ["CD3D", "CD3E", "IL7R"]
    assert as_gene_list(None) == []


def test_rank_weights_first_occurrence() -> None:
    assert rank_weights(["A", "B", "A", "C"]) == {"A": 1.0, "B": 0.5, "C": 1 / 3}


@settings(max_examples=200, deadline=None)
@given(LISTS, LISTS)
def test_duplicates_never_change_the_score(a: list[str], b: list[str]) -> None:
    """One rule everywhere: a list scores like its de-duplicated self, so padding with repeats is free."""
    dedup = list(dict.fromkeys(b))
    assert rwjs(a, b) == pytest.approx(rwjs(a, dedup), abs=1e-12)
    assert rwjs(a, b + b) == pytest.approx(rwjs(a, dedup), abs=1e-12)


def test_case_sensitive_exact_strings() -> None:
    assert rwjs(["cd3d"], ["CD3D"]) == 0.0


def test_mean_rwjs() -> None:
    assert mean_rwjs([["A"], ["A", "B"]], [["A"], ["B", "A"]]) == pytest.approx(0.75)
    assert mean_rwjs([], []) == 0.0
    with pytest.raises(ValueError):
        mean_rwjs([["A"]], [])


@settings(max_examples=300, deadline=None)
@given(LISTS, LISTS)
def test_range(a: list[str], b: list[str]) -> None:
    assert 0.0 <= rwjs(a, b) <= 1.0


@settings(max_examples=300, deadline=None)
@given(UNIQUE, UNIQUE)
def test_symmetric_for_duplicate_free_lists(a: list[str], b: list[str]) -> None:
    assert rwjs(a, b) == pytest.approx(rwjs(b, a), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(GENES, min_size=1, max_size=10))
def test_identity_is_one(a: list[str]) -> None:
    assert rwjs(a, a) == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(UNIQUE, UNIQUE)
def test_one_only_when_identical(a: list[str], b: list[str]) -> None:
    if a != b:
        assert rwjs(a, b) < 1.0 - 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(GENES, max_size=6, unique=True), st.lists(st.sampled_from(["X1", "X2", "X3"]), max_size=3))
def test_disjoint_is_zero(a: list[str], b: list[str]) -> None:
    assert rwjs(a, b) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(GENES, min_size=1, max_size=8, unique=True))
def test_dropping_the_last_gene_lowers_the_score(a: list[str]) -> None:
    if len(a) >= 2:
        assert rwjs(a, a[:-1]) < rwjs(a, a)
