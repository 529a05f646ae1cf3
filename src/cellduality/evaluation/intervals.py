"""95% confidence intervals of the accuracies in ``results.tsv``, and what chance would score.

Intervals (:func:`ratio_ci`): a percentile bootstrap over the evaluation's items (prompts), resampled with
replacement, of a ratio of sums. An item contributes ``numerator / denominator``: 1 / 1 or 0 / 1 for a label
answer, cells right / cells for a CellPuzzles batch, recognised / well-formed samples for a generation prompt
(its samples are not independent, so they are resampled together). The interval describes the evaluation set's
sampling of items for one trained model; the spread over training seeds is the std of replicates.

Chance (:func:`chance_scores`): the expected score of answering uniformly at random among each prompt's
candidates. Accuracy is the mean of 1 / |candidates|; macro-F1 is the F1 of the expected confusion matrix (a
true label's row spreads 1 / |candidates| over the candidates); a CellPuzzles batch of n cells answered by a
random assignment gets each cell right with probability 1 / n and the whole batch with 1 / n!.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
N_BOOT = 2000
CHUNK = 250  # bootstrap replicates drawn at once (bounded memory for large evaluation sets)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float] | None = None, *, n_boot: int = N_BOOT,
             confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``sum(numerators) / sum(denominators)`` over items (NaN for no items)."""
    num = np.asarray(numerators, dtype=float)
    den = np.ones_like(num) if denominators is None else np.asarray(denominators, dtype=float)
    keep = den > 0
    num, den = num[keep], den[keep]
    if not len(num):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, CHUNK):
        idx = rng.integers(0, len(num), (min(CHUNK, n_boot - start), len(num)))
        stats.append(num[idx].sum(axis=1) / den[idx].sum(axis=1))
    tail = (1 - confidence) / 2
    values = np.concatenate(stats)
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def ci_scores(metric: str, numerators: Sequence[float], denominators: Sequence[float] | None = None,
              seed: int = 0) -> dict[str, float]:
    """``{<metric>_ci_low, <metric>_ci_high}`` (:func:`ratio_ci`)."""
    low, high = ratio_ci(numerators, denominators, seed=seed)
    return {f"{metric}_ci_low": low, f"{metric}_ci_high": high}


def chance_scores(labels: Sequence[str], candidates: Sequence[Sequence[str]]) -> dict[str, float]:
    """Expected accuracy and macro-F1 of a uniform guess among each item's candidates (see the module notes)."""
    classes = sorted({str(label) for label in labels} | {str(c) for cands in candidates for c in cands})
    index = {label: i for i, label in enumerate(classes)}
    expected = np.zeros((len(classes), len(classes)))
    hits = []
    for label, cands in zip(labels, candidates):
        options = sorted({str(c) for c in cands})
        if not options:
            continue
        for option in options:
            expected[index[str(label)], index[option]] += 1 / len(options)
        hits.append(float(str(label) in options) / len(options))
    if not hits:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    diagonal = np.diag(expected)
    support = expected.sum(axis=1) + expected.sum(axis=0)
    f1 = np.divide(2 * diagonal, support, out=np.zeros_like(diagonal), where=support > 0)
    return {"accuracy": float(np.mean(hits)), "macro_f1": float(f1.mean())}


def chance_puzzle_scores(sizes: Sequence[int]) -> dict[str, float]:
    """Expected cell- and batch-level accuracy of a random one-to-one assignment of batches of ``sizes`` cells."""
    sizes = [int(n) for n in sizes if int(n) > 0]
    if not sizes:
        return {"cell_accuracy": float("nan"), "batch_accuracy": float("nan")}
    return {"cell_accuracy": len(sizes) / sum(sizes),
            "batch_accuracy": float(np.mean([1 / math.factorial(n) for n in sizes]))}
