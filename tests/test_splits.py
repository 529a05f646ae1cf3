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
