import math

import numpy as np
import pytest

from cellduality.errors import CellDualityError
from cellduality.evaluation.classification_metrics import (
    FORMAT_ERROR,
    accuracy,
    cellpuzzles_scores,
    classification_scores,
    confusion_matrix,
    format_error_rate,
    macro_f1,
)
from cellduality.tasks.parsing import parse_cellpuzzles_answer

TRUE = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", None, "d"]


def test_accuracy_f1_and_format_errors_by_hand():
    # a: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 0.8; b: TP 1, FP 1, FN 1 -> F1 0.5; c: never predicted -> F1 0;
    # "d" (predicted, never true) is a class with F1 0; the format error (None) is a miss for b, no class.
    assert accuracy(TRUE, PRED) == pytest.approx(3 / 6)
    assert macro_f1(TRUE, PRED) == pytest.approx((0.8 + 0.5 + 0.0 + 0.0) / 4)
    assert format_error_rate(PRED) == pytest.approx(1 / 6)
    scores = classification_scores(TRUE, PRED)
    assert scores.as_dict() == pytest.approx({"accuracy": 0.5, "macro_f1": 1.3 / 4, "format_error_rate": 1 / 6, "n": 6})


def test_macro_f1_is_scikit_learns_over_truth_and_well_formed_predictions():
    from sklearn.metrics import f1_score

    true, pred = ["A", "A", "B", "C"], ["A", None, "B", "D"]
    assert macro_f1(true, pred) == pytest.approx(0.41666666, abs=1e-6)  # not 0.556 (truth-only labels)
    rng = np.random.default_rng(1)
    for _ in range(50):
        true = [str(x) for x in rng.choice(["x", "y", "z", "w"], size=25)]
        pred = [None if rng.random() < 0.2 else str(rng.choice(["x", "y", "z", "v"])) for _ in true]
        well_formed = [(t, p) for t, p in zip(true, pred) if p is not None]
        # scikit-learn with format errors as a placeholder that is scored but not averaged over
        placeholder = ["<none>" if p is None else p for p in pred]
        labels = sorted(set(true) | {p for _, p in well_formed})
        expected = f1_score(true, placeholder, labels=labels, average="macro", zero_division=0)
        assert macro_f1(true, pred) == pytest.approx(expected)
        assert macro_f1(true, pred) == pytest.approx(_reference_macro_f1(true, pred))


def _reference_macro_f1(true, pred):
    """Independent plain-Python macro-F1 over the labels of truth and well-formed predictions."""
    f1s = []
    for label in sorted(set(true) | {p for p in pred if p is not None}):
        tp = sum(t == label and p == label for t, p in zip(true, pred))
        fp = sum(t != label and p == label for t, p in zip(true, pred))
        fn = sum(t == label and p != label for t, p in zip(true, pred))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def test_macro_f1_matches_plain_python_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(20):
        true = list(rng.choice(["x", "y", "z", "w"], size=30))
        pred = [None if rng.random() < 0.2 else str(rng.choice(["x", "y", "z", "v"])) for _ in true]
        assert macro_f1(true, pred) == pytest.approx(_reference_macro_f1(true, pred))
        assert accuracy(true, pred) == pytest.approx(np.mean([t == p for t, p in zip(true, pred)]))


def test_perfect_and_all_format_errors():
    assert classification_scores(["a", "b"], ["a", "b"]).as_dict() == pytest.approx(
        {"accuracy": 1, "macro_f1": 1, "format_error_rate": 0, "n": 2})
    assert classification_scores(["a", "b"], [None, None]).as_dict() == pytest.approx(
        {"accuracy": 0, "macro_f1": 0, "format_error_rate": 1, "n": 2})
    assert math.isnan(accuracy([], [])) and math.isnan(macro_f1([], [])) and math.isnan(format_error_rate([]))


def test_confusion_matrix_counts_and_format_column():
    cm = confusion_matrix(TRUE, PRED)
    assert list(cm.index) == ["a", "b", "c", "d"]
    assert list(cm.columns) == ["a", "b", "c", "d", FORMAT_ERROR]
    assert cm.loc["a"].tolist() == [2, 1, 0, 0, 0]
    assert cm.loc["b"].tolist() == [0, 1, 0, 0, 1]
    assert cm.loc["c"].tolist() == [0, 0, 0, 1, 0]
    assert cm.loc["d"].sum() == 0 and int(cm.values.sum()) == len(TRUE)
    ordered = confusion_matrix(TRUE, PRED, labels=["d", "c", "b", "a"])
    assert list(ordered.index) == ["d", "c", "b", "a"] and ordered.loc["a", "a"] == 2
    with pytest.raises(CellDualityError, match="not in `labels`"):
        confusion_matrix(TRUE, PRED, labels=["a", "b"])
    with pytest.raises(CellDualityError, match="predictions"):
        confusion_matrix(["a"], [])


def test_cellpuzzles_scores_by_hand():
    gold = ["a | b | c", "a | b", "x | y | z", "p | q"]
    pred = ["a | b | c", "b | a", None, "p"]  # right, all wrong, format error, wrong length
    s = cellpuzzles_scores(gold, pred)
    assert s.cell_accuracy == pytest.approx(3 / 10)
    assert s.batch_accuracy == pytest.approx(1 / 4)
    assert s.mean_batch_cell_accuracy == pytest.approx((1 + 0 + 0 + 0) / 4)
    assert s.format_error_rate == pytest.approx(2 / 4)
    assert (s.n_batches, s.n_cells) == (4, 10)
    partial = cellpuzzles_scores([["a", "b", "c"], ["a", "b", "c", "d", "e"]], [("a", "c", "b"), list("abcde")])
    assert partial.cell_accuracy == pytest.approx(6 / 8)  # pooled over cells (Cell-o1 eval.py)
    assert partial.mean_batch_cell_accuracy == pytest.approx((1 / 3 + 1) / 2)  # per-batch mean
    assert partial.batch_accuracy == pytest.approx(0.5)


def test_cellpuzzles_with_parsed_answers():
    candidates = ["T cell", "B cell", "NK cell"]
    answers = ["t cell | B cell | NK cell", "B cell | B cell | NK cell"]  # second repeats a type
    parsed = [parse_cellpuzzles_answer(a, candidates).labels for a in answers]
    s = cellpuzzles_scores(["T cell | B cell | NK cell"] * 2, parsed)
    assert s.batch_accuracy == 0.5 and s.format_error_rate == 0.5 and s.cell_accuracy == pytest.approx(0.5)
    with pytest.raises(CellDualityError, match="empty"):
        cellpuzzles_scores([""], ["a"])
