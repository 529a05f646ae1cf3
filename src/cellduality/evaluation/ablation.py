"""The duality ablation: does the duality reward improve a model without labels, beside a positive and a
negative control? Arms (each trained from the SFT model of the same seed): ``sft`` (no RL), ``grpo_duality``,
``grpo_oracle`` (ground-truth reward: the positive control) and ``grpo_shuffled`` (the duality reward scored
against another prompt's condition: the negative control), over ``ablation.seeds`` seeds (replicates).

Each task is judged by one metric stated before the run (config ``ablation.primary_metric``), computed per
item so arms can be paired: an eval prompt of the in-distribution test split (classification: 1 when right;
CellPuzzles: the share of the puzzle's cells assigned right; generation: the share of the prompt's sampled cells
a kNN classifier on the real test cells recognises as the condition, a malformed sample counting as not
recognised). Guard metrics (config ``ablation.guard_metrics``, also stated before the run) get the same rows: what
an arm must not lose beyond its CI (generation ``real_rwjs``: a prompt's sampled cells' mean RWJS to their most
similar real test cell of any condition, a malformed sample counting 0: generated cells that stay real cells).
Statistics over items x seeds:

- ``mean`` and its 95% CI: a two-way bootstrap that resamples seeds and items with replacement;
- ``delta_vs_sft`` and its CI: the same bootstrap of the paired differences (arm - SFT of the same seed, item by
  item), so item difficulty and the seed's starting model cancel;
- ``p_mcnemar``: the exact McNemar test of the pooled (item, seed) pairs where items are right/wrong (label
  tasks); NaN otherwise.

A task evaluated on several datasets (e.g. label-free adaptation: the training cohort and the adapted one) gets
its pooled rows (``dataset`` ``all``) and the same rows per dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cellduality.errors import CellDualityError
from cellduality.evaluation.classification_metrics import is_missing, puzzle_counts
from cellduality.evaluation.score import ExpressionSpace, attach_references
from cellduality.evaluation.settings import ABLATION_ARMS as ARMS
from cellduality.evaluation.settings import AblationSettings, EmbeddingSettings
from cellduality.tasks.registry import get_task

ABLATION_COLUMNS = ("task", "dataset", "metric", "arm", "mean", "ci_low", "ci_high", "delta_vs_sft", "delta_ci_low",
                    "delta_ci_high", "p_mcnemar", "n_seeds", "n_items")
ALL_DATASETS = "all"  # the ``dataset`` of a task's rows pooled over its datasets
KNN_PREFIX = "knn_acc_k"
REAL_RWJS = "real_rwjs"


def _real_rwjs_items(group: pd.DataFrame) -> pd.Series:
    from cellduality.tasks.rwjs import rwjs

    references = group.drop_duplicates("prompt_id")["reference_sentence"].fillna("").str.split().tolist()
    best = [0.0 if is_missing(p) else max(rwjs(real, str(p).split()) for real in references)
            for p in group["prediction"]]
    return pd.Series(best, index=group["prompt_id"].to_numpy()).groupby(level=0).mean()


def _knn_items(group: pd.DataFrame, k: int, space: ExpressionSpace, embedding: EmbeddingSettings,
               seed: int) -> pd.Series:
    from cellduality.evaluation.generation_metrics import knn_recognised

    references = group.drop_duplicates("prompt_id")
    fit, space_e, real_e = space.embed_references(group["dataset"].iloc[0],
                                                  references["reference_sentence"].fillna(""), embedding, seed)
    ok = ~group["prediction"].map(is_missing).to_numpy(bool)
    right = np.zeros(len(group))
    if ok.any():
        generated = space_e.transform(fit.invert(group.loc[ok, "prediction"].tolist()).X)
        right[ok] = knn_recognised(real_e, references["label"].tolist(), generated,
                                   group.loc[ok, "label"].tolist(), k)
    return pd.Series(right, index=group["prompt_id"].to_numpy()).groupby(level=0).mean()


def item_scores(pred: pd.DataFrame, task: str, metric: str, space: ExpressionSpace, embedding: EmbeddingSettings,
                seed: int = 0) -> pd.Series:
    """``metric`` of each test-split prompt of ``task`` (index: ``dataset/prompt_id``), see the module notes."""
    rows = pred[(pred["task"] == task) & (pred["split"] == "test")]
    if rows.empty:
        return pd.Series(dtype=float)
    family = get_task(task).metric
    parts = []
    for dataset, group in rows.groupby("dataset", sort=True):
        if family == "classification" and metric == "accuracy":
            scores = pd.Series([float(not is_missing(p) and p == label)
                                for p, label in zip(group["prediction"], group["label"])], index=group["prompt_id"])
        elif family == "cellpuzzles" and metric == "cell_accuracy":
            right, sizes, _ = puzzle_counts(group["label"].tolist(), group["prediction"].tolist())
            scores = pd.Series(right / sizes, index=group["prompt_id"])
        elif family == "generation" and metric.startswith(KNN_PREFIX):
            scores = _knn_items(group, int(metric.removeprefix(KNN_PREFIX)), space, embedding, seed)
        elif family == "generation" and metric == REAL_RWJS:
            scores = _real_rwjs_items(group)
        else:
            raise CellDualityError(f"ablation: {task} metric {metric} is not scored per item for a {family} task; "
                                   "use accuracy (classification), cell_accuracy (CellPuzzles), knn_acc_k<k> or "
                                   f"{REAL_RWJS} (generation)")
        parts.append(scores.rename(lambda pid, d=dataset: f"{d}/{pid}"))
    return pd.concat(parts).astype(float)


def two_way_bootstrap(values: np.ndarray, n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    """CI of the mean of ``values`` (seeds x items), resampling seeds and items with replacement."""
    rng = np.random.default_rng(seed)
    n_seeds, n_items = values.shape
    stats = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = rng.integers(0, n_items, n_items)
        stats[b] = values[np.ix_(rows, cols)].mean()
    tail = (1 - confidence) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def mcnemar_exact(base: np.ndarray, arm: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired binary outcomes (NaN unless both are 0/1)."""
    if not (np.isin(base, (0, 1)).all() and np.isin(arm, (0, 1)).all()):
        return float("nan")
    lost, gained = int(((base == 1) & (arm == 0)).sum()), int(((base == 0) & (arm == 1)).sum())
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _arm_rows(frames: Mapping[str, pd.DataFrame], items: Sequence[str], settings: AblationSettings,
              n_seeds: int) -> list[tuple]:
    """Per arm: mean, its CI, the paired difference to SFT and its CI, McNemar's p, seeds and items."""
    rows = []
    base = frames["sft"].loc[items].to_numpy().T
    for arm, frame in frames.items():
        values = frame.loc[items].to_numpy().T  # seeds x items
        low, high = two_way_bootstrap(values, settings.bootstrap, settings.confidence, settings.bootstrap_seed)
        delta = values - base
        d_low, d_high = two_way_bootstrap(delta, settings.bootstrap, settings.confidence, settings.bootstrap_seed)
        rows.append((arm, values.mean(), low, high, delta.mean(), d_low, d_high,
                     mcnemar_exact(base.ravel(), values.ravel()) if arm != "sft" else float("nan"), n_seeds,
                     len(items)))
    return rows


def ablation_table(scores: Mapping[tuple[str, str, str, int], pd.Series], settings: AblationSettings) -> pd.DataFrame:
    """The ablation table from item scores keyed ``(task, metric, arm, seed)`` (see the module notes): each task's
    primary metric first, then its guard metrics."""
    rows = []
    seeds = sorted({seed for *_, seed in scores})
    def order(task_metric: tuple[str, str]) -> tuple:  # each task's primary metric first
        task, metric = task_metric
        return task, metric != settings.primary_metric.get(task), metric

    for task, metric in sorted({(t, m) for t, m, _, _ in scores}, key=order):
        frames = {}
        for arm in ARMS:
            present = [scores[(task, metric, arm, seed)] for seed in seeds if (task, metric, arm, seed) in scores]
            if len(present) == len(seeds):
                frames[arm] = pd.concat(present, axis=1, keys=seeds)
        if "sft" not in frames:
            continue
        items = sorted(set.intersection(*(set(f.dropna().index) for f in frames.values())))
        datasets = sorted({item.split("/", 1)[0] for item in items})
        for dataset in [ALL_DATASETS, *(datasets if len(datasets) > 1 else [])]:
            chosen = items if dataset == ALL_DATASETS else [i for i in items if i.split("/", 1)[0] == dataset]
            rows += [(task, dataset, metric, *row) for row in _arm_rows(frames, chosen, settings, len(seeds))]
    return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))


def run_ablation(predictions: Mapping[tuple[str, int], str], task_tables: Sequence[str],
                 data: Mapping[str, Mapping[str, str]], settings: AblationSettings,
                 embedding: EmbeddingSettings) -> pd.DataFrame:
    """Item scores of every ``(arm, seed) -> predictions.parquet`` for each task with a primary metric (and its
    guard metrics), then :func:`ablation_table`."""
    space = ExpressionSpace(data)
    scores = {}
    for (arm, seed), path in predictions.items():
        pred = attach_references(pd.read_parquet(path), task_tables)
        for task, primary in settings.primary_metric.items():
            for metric in (primary, *settings.guard_metrics.get(task, ())):
                items = item_scores(pred, task, metric, space, embedding)
                if len(items):
                    scores[(task, metric, arm, seed)] = items
    return ablation_table(scores, settings)
