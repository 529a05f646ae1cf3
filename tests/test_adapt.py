"""Label-free adaptation (catalog ``role: adapt``): the cells join the RL stage of duality GRPO without their
labels, never SFT and never the oracle; held-out labelled cells are evaluated; the annotation candidates are
the label set of ``adapt_from``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellduality.data.builtin import BUILTIN_LOADERS
from cellduality.data.simulated_shift import cohort_of, load_pbmc68k_shifted
from cellduality.data.splits import SplitSettings, assign_splits
from cellduality.errors import CellDualityError
from cellduality.tasks.tables import build_task_tables, check_catalog, write_task_tables
from cellduality.training.datasets import rl_dataset

TYPES = ["T cell", "B cell", "Monocyte"]


def adapt_cells(n: int = 40, labelled: bool = True) -> pd.DataFrame:
    ids = [f"b{i}" for i in range(n)]
    split = assign_splits(ids, pd.DataFrame(index=ids), dataset="B", role="adapt", settings=SplitSettings(test_fraction=0.25))
    frame = pd.DataFrame({"cell_id": ids, "dataset": "B", "split": split, "n_genes": 4,
                          "sentence": ["CD3E MS4A1 LYZ ACTB"] * n})
    if labelled:
        frame["cell_type"] = [TYPES[i % 3] for i in range(n)]
    return frame


def test_adapt_cells_are_unlabelled_rl_prompts_and_labelled_test_cells_are_evaluated(tmp_path):
    cells = adapt_cells()
    assert set(cells.split) == {"adapt", "test"}
    table = build_task_tables(cells, ["annotation"], candidates=["NK", *TYPES])
    rl, ev = table[table.stage == "rl"], table[(table.stage == "eval") & (table.direction == "primal")]
    assert set(table.stage) == {"rl", "eval"} and not (table.stage == "sft").any()
    assert len(rl) == (cells.split == "adapt").sum() and (rl.label == "").all() and (rl.answer == "").all()
    assert (rl.direction == "primal").all() and len(ev) == (cells.split == "test").sum()
    assert set(ev.label) <= set(TYPES)
    assert all("NK" in p for p in table[table.direction == "primal"].prompt)  # the adapt_from label set is offered
    # the oracle never sees them; the duality reward does
    path = tmp_path / "tasks.parquet"
    table.to_parquet(path)
    assert len(rl_dataset([path])) == len(rl)
    with pytest.raises(CellDualityError, match="no RL prompts"):
        rl_dataset([path], labelled_only=True)


def test_unlabelled_adapt_dataset_builds_rl_prompts_only(tmp_path):
    source = tmp_path / "A.parquet"
    pd.DataFrame({"cell_id": ["a1"], "dataset": ["A"], "split": ["train"], "sentence": ["X"], "n_genes": [1],
                  "cell_type": ["T cell"]}).to_parquet(source)
    table = write_task_tables(adapt_cells(labelled=False), tmp_path / "t.parquet", ["annotation"],
                              required=["annotation"], candidates_from=source)
    assert set(table.stage) == {"rl"} and set(table.candidates.map(str)) == {'["T cell"]'}


def test_catalog_rules_for_adapt_datasets():
    from cellduality.config import validate_config

    datasets = {"A": {"source": "x", "labels": {"cell_type": "c"}},
                "B": {"source": "y", "role": "adapt", "adapt_from": "A"}}
    config = validate_config({"datasets": datasets, "tasks": {"annotation": ["A", "B"]}})
    check_catalog(config)  # B needs no label column
    with pytest.raises(CellDualityError, match="role adapt, which serves tasks.annotation only"):
        check_catalog({**config, "tasks": {"annotation": ["A", "B"], "generation": ["B"]}})
    with pytest.raises(CellDualityError, match="adapt_from .* must be listed under tasks.annotation"):
        check_catalog({**config, "tasks": {"annotation": ["B"]}})
    with pytest.raises(CellDualityError, match="adapt_from must name a train dataset"):
        validate_config({"datasets": {"B": {"source": "y", "role": "adapt"}}})


def test_shifted_cohort_is_disjoint_from_cohort_a_and_really_shifted():
    import scanpy as sc

    base = BUILTIN_LOADERS["scanpy/pbmc68k_reduced"]()
    shifted = load_pbmc68k_shifted()
    cohorts = base.obs["cohort"].to_numpy()
    assert set(cohorts) == {"A", "B"} and 0.4 < (cohorts == "A").mean() < 0.6
    assert list(shifted.obs_names) == list(base.obs_names[cohorts == "B"])
    assert (shifted.obs["bulk_labels"].to_numpy() == base.obs["bulk_labels"].astype(str).to_numpy()[cohorts == "B"]).all()
    assert (cohort_of(shifted.obs_names) == "B").all()
    raw = sc.datasets.pbmc68k_reduced().raw.X[cohorts == "B"]
    raw = raw.toarray() if hasattr(raw, "toarray") else raw
    new = shifted.X.toarray()
    assert new.min() >= 0 and np.allclose(np.expm1(new).sum(1), 1e4, rtol=1e-3)
    top = lambda m: np.argsort(-m, axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(raw), top(new))])
    assert 0.2 < overlap < 0.9  # the top genes change, but the cells stay recognisable
    again = load_pbmc68k_shifted()
    assert (again.X != shifted.X).nnz == 0
