"""Classification metrics: accuracy, macro-F1, format-error rate, confusion matrix; CellPuzzles accuracies.

Input convention (the ``prediction`` column of the predictions table): ``y_true`` holds the gold labels and
``y_pred`` the parsed predictions, already mapped onto canonical labels, with ``None`` for a format error
(malformed response or an answer that is not an allowed label). A format error is always wrong.

- accuracy: correct / all (format errors in the denominator);
- macro-F1: scikit-learn's ``f1_score(average="macro", zero_division=0)`` over the labels of the truth and
  of the well-formed predictions (the convention of the baselines the paper cites): a predicted label absent
  from the truth is a class of its own with F1 0; a format error counts as wrong for its true label but is
  not a label itself;
- format-error rate: share of ``None`` predictions;
- CellPuzzles (Cell-o1): a batch of N cells with gold assignment ``a | b | …`` and a predicted assignment
  (``None`` when invalid: bad format, wrong length, a non-candidate or a repeated type). Batch-level
  accuracy = batches with every cell right / batches. Cell-level accuracy = cells right / cells over all
  batches (Cell-o1's released ``eval.py``; an invalid batch contributes 0 right of N);
  ``mean_batch_cell_accuracy`` is the per-batch mean of the same fraction (the paper's formula; equal to the
  cell-level accuracy when all batches have the same N).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import f1_score

from cellduality.errors import CellDualityError

FORMAT_ERROR = "format error"
_MISSING = "\x00format error"  # stand-in for None inside sklearn (never a real label)
PUZZLE_SEP = "|"


def _check_lengths(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) != len(y_pred):
        raise CellDualityError(f"{len(y_true)} true labels but {len(y_pred)} predictions; pass one prediction per "
                               "example (None for a format error)")


def _as_arrays(y_true: Sequence[str], y_pred: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    _check_lengths(y_true, y_pred)
    true = np.array([str(t) for t in y_true], dtype=object)
    pred = np.array([_MISSING if is_missing(p) else str(p) for p in y_pred], dtype=object)
    return true, pred


def is_missing(value: object) -> bool:
    """A format error: None or NaN (how parquet round-trips None in object columns)."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def accuracy(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """Share of predictions equal to the true label (NaN for no examples)."""
    true, pred = _as_arrays(y_true, y_pred)
    return float(np.mean(true == pred)) if len(true) else float("nan")


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """Macro-F1 over the labels of truth and well-formed predictions; a format error is wrong but no label
    (NaN for no examples)."""
    true, pred = _as_arrays(y_true, y_pred)
    if not len(true):
        return float("nan")
    labels = sorted(set(true) | {p for p in pred if p != _MISSING})
    return float(f1_score(true, pred, labels=labels, average="macro", zero_division=0))


def format_error_rate(y_pred: Sequence[str | None]) -> float:
    """Share of predictions that are format errors (None)."""
    return float(np.mean([is_missing(p) for p in y_pred])) if len(y_pred) else float("nan")


class _Scores:
    def as_dict(self) -> dict[str, float]:
        """Field -> value (for a long results table)."""
        return asdict(self)


@dataclass(frozen=True)
class ClassificationScores(_Scores):
    accuracy: float
    macro_f1: float
    format_error_rate: float
    n: int


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str | None]) -> ClassificationScores:
    """Accuracy, macro-F1, format-error rate and the number of examples."""
    return ClassificationScores(accuracy(y_true, y_pred), macro_f1(y_true, y_pred), format_error_rate(y_pred),
                                len(y_true))


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str | None],
                     labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts: rows = true label, columns = predicted label plus a last ``"format error"`` column.

    ``labels`` orders rows and columns (default: sorted union of true and predicted labels); a true or
    predicted label missing from an explicit ``labels`` is an error.
    """
    true, pred = _as_arrays(y_true, y_pred)
    seen = set(true) | (set(pred) - {_MISSING})
    if labels is None:
        labels = sorted(seen)
    else:
        labels = list(dict.fromkeys(str(label) for label in labels))
        missing = sorted(seen - set(labels))
        if missing:
            raise CellDualityError(f"confusion_matrix: labels {missing[:5]} occur in the data but not in `labels`")
    if FORMAT_ERROR in labels:
        raise CellDualityError(f"confusion_matrix: {FORMAT_ERROR!r} is reserved for the format-error column")
    counts = _sk_confusion_matrix(true, pred, labels=[*labels, _MISSING]) if len(true) else (
        np.zeros((len(labels) + 1, len(labels) + 1), dtype=int))
    frame = pd.DataFrame(counts[: len(labels)], index=pd.Index(labels, name="true"),
                         columns=pd.Index([*labels, FORMAT_ERROR], name="predicted"))
    return frame.astype(int)


# ---------------------------------------------------------------- CellPuzzles

def _assignment(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(PUZZLE_SEP) if item.strip())
    return tuple(str(item) for item in value)


@dataclass(frozen=True)
class PuzzleScores(_Scores):
    cell_accuracy: float
    batch_accuracy: float
    mean_batch_cell_accuracy: float
    format_error_rate: float
    n_batches: int
    n_cells: int


def puzzle_counts(gold: Sequence[str | Sequence[str]],
                  predicted: Sequence[str | Sequence[str] | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per batch: cells assigned right, cells, and whether the answer is a format error (missing or of the
    wrong length; no cell right)."""
    _check_lengths(gold, predicted)
    right = np.zeros(len(gold))
    sizes = np.zeros(len(gold))
    invalid = np.zeros(len(gold), dtype=bool)
    for i, (g, p) in enumerate(zip(gold, predicted)):
        truth, guess = _assignment(g), _assignment(p)
        if not truth:
            raise CellDualityError(f"cellpuzzles_scores: gold assignment {i} is empty")
        sizes[i] = len(truth)
        if guess is None or len(guess) != len(truth):
            invalid[i] = True
            continue
        right[i] = sum(a == b for a, b in zip(truth, guess))
    return right, sizes, invalid


def cellpuzzles_scores(gold: Sequence[str | Sequence[str]],
                       predicted: Sequence[str | Sequence[str] | None]) -> PuzzleScores:
    """Cell-o1 cell- and batch-level accuracy of assignments (``"a | b | c"`` strings or label sequences).

    Predictions should be canonical candidate labels (``parsing.parse_cellpuzzles_answer``); they are
    compared exactly, position by position. A prediction of the wrong length counts as a format error.
    """
    right, sizes, invalid = puzzle_counts(gold, predicted)
    if not len(gold):
        nan = float("nan")
        return PuzzleScores(nan, nan, nan, nan, 0, 0)
    return PuzzleScores(
        cell_accuracy=float(right.sum() / sizes.sum()),
        batch_accuracy=float(np.mean(right == sizes)),
        mean_batch_cell_accuracy=float(np.mean(right / sizes)),
        format_error_rate=float(invalid.mean()),
        n_batches=len(gold),
        n_cells=int(sizes.sum()),
    )
