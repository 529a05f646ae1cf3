"""Confidence intervals and chance levels of the evaluation (cellduality.evaluation.intervals, score)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from cellduality.evaluation.intervals import chance_puzzle_scores, chance_scores, ratio_ci
from cellduality.evaluation.score import score_predictions


def test_ratio_ci_brackets_the_estimate_and_narrows_with_items() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.7
    large = rng.random(2000) < 0.7
    low_s, high_s = ratio_ci(small)
    low_l, high_l = ratio_ci(large)
    assert low_s <= small.mean() <= high_s
    assert low_l <= large.mean() <= high_l
    assert high_l - low_l < (high_s - low_s) / 3  # ~ 1 / sqrt(n)
    # close to the normal approximation for a proportion
    se = np.sqrt(large.mean() * (1 - large.mean()) / len(large))
    assert high_l - low_l == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert ratio_ci(small) == ratio_ci(small)  # seeded


def test_ratio_ci_resamples_clusters_together() -> None:
    """Items of unequal size: the estimate is the pooled ratio, and all-right clusters give a point interval."""
    assert ratio_ci([3, 5, 2], [3, 5, 2]) == (1.0, 1.0)
    low, high = ratio_ci([0, 10], [10, 10])
    assert low == 0.0 and high == 1.0  # two clusters: resamples are all-wrong, half, all-right
    assert np.isnan(ratio_ci([])[0])


def test_chance_of_a_balanced_binary_task_is_one_half() -> None:
    labels = ["sensitive", "resistant"] * 50
    scores = chance_scores(labels, [["sensitive", "resistant"]] * 100)
    assert scores == {"accuracy": pytest.approx(0.5), "macro_f1": pytest.approx(0.5)}


def test_chance_accuracy_matches_simulated_uniform_guessing() -> None:
    rng = np.random.default_rng(1)
    types = ["B", "T", "NK", "Mono"]
    labels = list(rng.choice(types, 400, p=[0.4, 0.3, 0.2, 0.1]))
    candidates = [sorted({label, *rng.choice(types, 2)}) for label in labels]
    expected = chance_scores(labels, candidates)
    guesses = np.array([[c[rng.integers(len(c))] == label for label, c in zip(labels, candidates)]
                        for _ in range(200)])
    assert expected["accuracy"] == pytest.approx(guesses.mean(), abs=0.01)
    assert expected["accuracy"] == pytest.approx(np.mean([1 / len(c) for c in candidates]))
    assert 0 < expected["macro_f1"] < 1


def test_chance_of_a_puzzle_counts_permutations() -> None:
    right_cells = [sum(a == b for a, b in zip(p, range(3))) for p in itertools.permutations(range(3))]
    scores = chance_puzzle_scores([3])
    assert scores["cell_accuracy"] == pytest.approx(np.mean(right_cells) / 3)
    assert scores["batch_accuracy"] == pytest.approx(1 / 6)
    assert chance_puzzle_scores([2, 4])["cell_accuracy"] == pytest.approx(2 / 6)


def test_scored_accuracies_carry_their_interval() -> None:
    pred = pd.DataFrame({"model": "sft", "task": "annotation", "dataset": "d", "split": "test",
                         "prompt_id": [f"p{i}" for i in range(40)], "label": ["B", "T"] * 20,
                         "prediction": ["B"] * 30 + [None] * 10, "reference_sentence": ""})
    scores = score_predictions(pred, [], {}).set_index("metric")["value"]
    assert scores["accuracy"] == pytest.approx(15 / 40)
    assert scores["accuracy_ci_low"] < scores["accuracy"] < scores["accuracy_ci_high"]
