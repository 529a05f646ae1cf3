import numpy as np
import pandas as pd

from cellduality.data.splits import SplitSettings, assign_splits


def ids(n):
    return [f"c{i}" for i in range(n)]


def at(test_fraction, seed=0):
    return SplitSettings(test_fraction=test_fraction, seed=seed)


def test_splits_are_deterministic_and_independent_of_other_cells():
    obs = pd.DataFrame(index=ids(2000))
    full = assign_splits(ids(2000), obs, dataset="d", role="train", settings=at(0.2))
    assert set(full) == {"train", "test"} and 0.17 < np.mean(full == "test") < 0.23
    half = assign_splits(ids(2000)[::2], obs.iloc[::2], dataset="d", role="train", settings=at(0.2))
    assert (half == full[::2]).all()  # removing cells moves nobody
    other_seed = assign_splits(ids(2000), obs, dataset="d", role="train", settings=at(0.2, seed=1))
    assert (other_seed != full).any()


def test_groups_stay_together_and_ood_rules():
    obs = pd.DataFrame({"split_group": [f"line{i // 5}" for i in range(500)],
                        "cell_type": ["B"] * 250 + ["T"] * 250}, index=ids(500))
    split = assign_splits(ids(500), obs, dataset="d", role="train", settings=at(0.3))
    assert pd.Series(split).groupby(obs["split_group"].to_numpy()).nunique().max() == 1
    assert set(split) == {"train", "test"}
    held = assign_splits(ids(500), obs, dataset="d", role="train", settings=at(0.3),
                         ood_labels={"cell_type": ["T"]})
    assert (held[250:] == "ood").all() and "ood" not in set(held[:250])
    assert set(assign_splits(ids(5), obs.head(5), dataset="d", role="ood", settings=at(0.3))) == {"ood"}


def test_pair_id_groups_controls_with_their_treated_copies():
    obs = pd.DataFrame({"pair_id": [f"cell{i // 3}" for i in range(300)]}, index=ids(300))
    split = assign_splits(ids(300), obs, dataset="d", role="train", settings=at(0.5))
    assert pd.Series(split).groupby(obs["pair_id"].to_numpy()).nunique().max() == 1


def test_a_derived_row_takes_the_split_of_the_cell_it_was_built_from():
    source = assign_splits(ids(400), pd.DataFrame(index=ids(400)), dataset="cells", role="train", settings=at(0.3))
    copies = [f"c{i}|{copy}" for copy in ("control", "drugA", "drugB") for i in range(400)]
    obs = pd.DataFrame({"source_dataset": "cells", "source_cell": ids(400) * 3}, index=copies)
    derived = assign_splits(copies, obs, dataset="derived", role="adapt", settings=at(0.3))
    expected = np.tile(np.where(source == "test", "test", "adapt"), 3)
    assert (derived == expected).all()  # whatever the derived dataset is called, and its copies stay together
    shuffled = np.random.default_rng(0).permutation(len(copies))
    again = assign_splits([copies[i] for i in shuffled], obs.iloc[shuffled], dataset="derived", role="adapt",
                          settings=at(0.3))
    assert (again == derived[shuffled]).all()  # row order does not matter
    # a reused download (origin) hashes as its source entry does
    assert (assign_splits(ids(400), pd.DataFrame(index=ids(400)), dataset="cells-ID", role="train",
                          settings=at(0.3), origin="cells") == source).all()
    held = assign_splits(copies, obs, dataset="derived", role="train", settings=at(0.3),
                         ood_cells={("cells", "c7"), ("other", "c8")})
    assert set(held[[7, 407, 807]]) == {"ood"} and "ood" not in set(np.delete(held, [7, 407, 807]))


def test_split_context_finds_the_datasets_that_share_cells():
    import pytest

    from cellduality.data.sentence_table import cell_origin, split_context
    from cellduality.errors import CellDualityError

    datasets = {"pbmc": {"source": "builtin:scanpy/pbmc68k_reduced"},
                "perturb": {"source": "builtin:simulated/pbmc_perturbation", "role": "ood"},
                "shifted": {"source": "builtin:simulated/pbmc68k_shifted", "role": "adapt"},
                "sciplex": {"source": "https://example.org/sciplex.h5ad", "ood_labels": {"drug": ["x"]}},
                "sciplex-ID": {"source": "dataset:sciplex"}}
    assert cell_origin("perturb", datasets) == cell_origin("pbmc", datasets) == "builtin:scanpy/pbmc68k_reduced"
    assert cell_origin("sciplex-ID", datasets) == "sciplex"
    assert split_context("shifted", datasets, used=list(datasets)) == {
        "origin": "builtin:scanpy/pbmc68k_reduced", "ood_peers": {"perturb": {"role": "ood", "ood_labels": {}}}}
    assert split_context("shifted", datasets, used=["shifted", "pbmc"])["ood_peers"] == {}  # perturb not in the run
    assert split_context("perturb", datasets, used=list(datasets))["ood_peers"] == {}  # all OOD anyway
    assert split_context("sciplex-ID", datasets, used=list(datasets))["ood_peers"] == {
        "sciplex": {"role": "train", "ood_labels": {"drug": ["x"]}}}
    regrouped = {**datasets, "sciplex-ID": {"source": "dataset:sciplex", "split_by": "cell_line"}}
    with pytest.raises(CellDualityError, match="split_by"):
        split_context("sciplex-ID", regrouped, used=list(regrouped))
