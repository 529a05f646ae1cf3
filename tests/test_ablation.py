"""The ablation's statistics: paired deltas over items x seeds with bootstrap CIs, the exact McNemar test, and
the table's columns; the per-item scores of each task family."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cellduality.errors import CellDualityError
from cellduality.evaluation.ablation import (
    ABLATION_COLUMNS,
    ablation_table,
    item_scores,
    mcnemar_exact,
    two_way_bootstrap,
)
from cellduality.evaluation.settings import AblationSettings


def test_mcnemar_exact_matches_the_binomial_test():
    from scipy.stats import binomtest

    base = np.array([1] * 10 + [0] * 10 + [1] * 5 + [0] * 5)
    arm = np.array([1] * 10 + [0] * 10 + [0] * 5 + [1] * 5)
    assert mcnemar_exact(base, arm) == 1.0  # 5 lost, 5 gained
    arm = np.array([1] * 10 + [0] * 10 + [1] * 5 + [1] * 5)
    assert mcnemar_exact(base, arm) == pytest.approx(binomtest(0, 5, 0.5).pvalue)  # 0 lost, 5 gained
    assert mcnemar_exact(base, base) == 1.0 and math.isnan(mcnemar_exact(base, arm * 0.5))


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_items():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.3, 1, (3, 30)), rng.normal(0.3, 1, (3, 3000))
    lo, hi = two_way_bootstrap(small, 500, 0.95, 0)
    assert lo < small.mean() < hi
    lo2, hi2 = two_way_bootstrap(large, 500, 0.95, 0)
    assert hi2 - lo2 < hi - lo and lo2 < 0.3 < hi2
    assert two_way_bootstrap(small, 500, 0.95, 0) == (lo, hi)  # seeded


def test_ablation_table_pairs_items_and_seeds():
    items = [f"d/p{i}" for i in range(200)]
    rng = np.random.default_rng(1)
    scores = {}
    for seed in range(3):
        base = pd.Series(rng.integers(0, 2, len(items)).astype(float), index=items)
        better = base.copy()
        better.iloc[rng.choice(len(items), 40, replace=False)] = 1.0  # the positive control: strictly better
        scores[("annotation", "accuracy", "sft", seed)] = base
        scores[("annotation", "accuracy", "grpo_oracle", seed)] = better
        scores[("annotation", "accuracy", "grpo_shuffled", seed)] = base.copy()  # the negative control: unchanged
    table = ablation_table(scores, AblationSettings(bootstrap=300))
    assert list(table.columns) == list(ABLATION_COLUMNS)
    row = table.set_index("arm")
    assert row.loc["grpo_oracle", "delta_ci_low"] > 0 and row.loc["grpo_oracle", "p_mcnemar"] < 1e-6
    assert row.loc["grpo_shuffled", "delta_vs_sft"] == 0 and row.loc["grpo_shuffled", "p_mcnemar"] == 1.0
    assert row.loc["sft", "delta_vs_sft"] == 0 and math.isnan(row.loc["sft", "p_mcnemar"])
    assert set(row["n_seeds"]) == {3} and set(row["n_items"]) == {200} and row.loc["sft", "metric"] == "accuracy"
    assert "grpo_duality" not in row.index  # an arm without every seed is left out, not half-counted
    assert set(table["dataset"]) == {"all"}  # one dataset: no per-dataset rows


def test_a_task_on_two_datasets_gets_pooled_and_per_dataset_rows():
    """Label-free adaptation: the adapted cohort's own rows, beside the training cohort's and the pooled ones."""
    scores = {}
    for seed in range(2):
        base = pd.Series(0.0, index=[f"A/p{i}" for i in range(50)] + [f"B/p{i}" for i in range(50)])
        arm = base.copy()
        arm.loc[[f"B/p{i}" for i in range(20)]] = 1.0  # gains on cohort B only
        scores[("annotation", "accuracy", "sft", seed)] = base
        scores[("annotation", "accuracy", "grpo_duality", seed)] = arm
    table = ablation_table(scores, AblationSettings(bootstrap=200)).set_index(["dataset", "arm"])
    assert list(table.index.get_level_values(0).unique()) == ["all", "A", "B"]
    assert table.loc[("B", "grpo_duality"), "delta_vs_sft"] == pytest.approx(0.4)
    assert table.loc[("A", "grpo_duality"), "delta_vs_sft"] == 0 and table.loc[("all", "grpo_duality"), "n_items"] == 100


def test_item_scores_per_task_family():
    pred = pd.DataFrame({
        "task": ["annotation", "annotation", "annotation", "cellpuzzles", "annotation"],
        "split": ["test", "test", "test", "test", "ood"],
        "dataset": ["d"] * 5,
        "prompt_id": ["a", "b", "c", "p", "o"],
        "label": ["T", "B", "T", "T | B", "T"],
        "prediction": ["T", "T", None, "T | T", "T"],
    })
    assert item_scores(pred, "annotation", "accuracy", None, None).to_dict() == {"d/a": 1.0, "d/b": 0.0, "d/c": 0.0}
    assert item_scores(pred, "cellpuzzles", "cell_accuracy", None, None).to_dict() == {"d/p": 0.5}
    with pytest.raises(CellDualityError, match="not scored per item"):
        item_scores(pred, "annotation", "macro_f1", None, None)


def test_real_rwjs_scores_how_close_each_sample_stays_to_a_real_cell():
    from cellduality.tasks.rwjs import rwjs

    pred = pd.DataFrame({
        "task": ["generation"] * 4, "split": ["test"] * 4, "dataset": ["d"] * 4,
        "prompt_id": ["g1", "g1", "g2", "g2"], "label": ["T", "T", "B", "B"],
        "reference_sentence": ["CD3E CD2 IL7R", "CD3E CD2 IL7R", "MS4A1 CD79A CD74", "MS4A1 CD79A CD74"],
        # a copy of a real cell, a cell of another type's real genes, a half-real cell, a malformed sample
        "prediction": ["CD3E CD2 IL7R", "MS4A1 CD79A CD74", "MS4A1 GENEX GENEY", None],
    })
    scores = item_scores(pred, "generation", "real_rwjs", None, None).to_dict()
    half = max(rwjs("MS4A1 CD79A CD74", "MS4A1 GENEX GENEY"), rwjs("CD3E CD2 IL7R", "MS4A1 GENEX GENEY"))
    assert scores == {"d/g1": 1.0, "d/g2": pytest.approx(half / 2)}  # any condition's real cell counts
    assert 0 < half < 1


def test_guard_metrics_follow_the_primary_metric_in_the_table():
    scores = {}
    for seed in range(2):
        index = [f"d/p{i}" for i in range(30)]
        for metric, arm, value in (("knn_acc_k5", "sft", 0.2), ("knn_acc_k5", "grpo_duality", 0.5),
                                   ("real_rwjs", "sft", 0.6), ("real_rwjs", "grpo_duality", 0.55)):
            scores[("generation", metric, arm, seed)] = pd.Series(value, index=index)
    table = ablation_table(scores, AblationSettings(bootstrap=100))
    assert list(table["metric"]) == ["knn_acc_k5", "knn_acc_k5", "real_rwjs", "real_rwjs"]
    guard = table.set_index(["metric", "arm"]).loc[("real_rwjs", "grpo_duality")]
    assert guard["delta_vs_sft"] == pytest.approx(-0.05) and math.isnan(guard["p_mcnemar"])
