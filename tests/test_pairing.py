"""Perturbation screens whose treated cells are not paired with controls (sci-Plex3-shaped): the catalog's
``pairing`` matches each treated cell to a control of the same cell line, and the perturbation task gets
prompts (without a pairing it would get none)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_adata

from cellduality.data.preprocess import PreprocessSettings, preprocess, preprocess_file
from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table
from cellduality.data.splits import SplitSettings
from cellduality.errors import CellDualityError
from cellduality.tasks.tables import build_task_tables, check_catalog

SETTINGS = PreprocessSettings(min_genes=1)
SCIPLEX = {"species": "human", "labels": {"drug": "perturbation", "cell_type": "cell_line"},
           "metadata": {"dose": "dose_value"}, "constants": {},
           "pairing": {"by": ["cell_line"], "control": ["control"], "operation": None}}


def sciplex_like(n_per_group: int = 12, seed: int = 0):
    """scPerturb's sci-Plex3 obs layout: perturbation ('control' for vehicle), cell_line, dose_value, time."""
    rng = np.random.default_rng(seed)
    obs = []
    for line in ("A549", "K562", "MCF7"):
        for drug in ("control", "Dex", "SAHA"):
            for _ in range(n_per_group):
                obs.append({"perturbation": drug, "cell_line": line, "dose_value": "0" if drug == "control" else "10",
                            "time": "24"})
    obs = pd.DataFrame(obs, index=[f"cell{i}" for i in range(len(obs))])
    X = rng.poisson(2.0, size=(len(obs), 30)).astype(np.float32) + 1
    return make_adata(X, genes=[f"G{i}" for i in range(30)], obs=obs)


def test_each_treated_cell_gets_a_control_of_its_cell_line():
    adata = sciplex_like()
    out, report = preprocess(adata, SCIPLEX, SETTINGS, "sciplex", where="in.h5ad")
    obs = out.obs
    controls, treated = obs[obs.condition == "control"], obs[obs.condition == "treated"]
    assert len(controls) == 36 and len(treated) == 72
    assert (controls.pair_id == controls.index).all()
    for _, row in treated.iterrows():
        assert row.pair_id in controls.index
        assert controls.loc[row.pair_id, "cell_type"] == row.cell_type
    assert report.pairing == {"control_cells": 36, "paired_cells": 72, "treated_cells_without_control": 0}
    # deterministic, and every control is used (a hash of the treated cell's id picks among them)
    again, _ = preprocess(sciplex_like(), SCIPLEX, SETTINGS, "sciplex", where="in.h5ad")
    assert again.obs.pair_id.tolist() == obs.pair_id.tolist()
    assert treated.pair_id.nunique() > 20


def test_sciplex_shaped_entry_yields_perturbation_prompts(tmp_path):
    raw = tmp_path / "raw.h5ad"
    sciplex_like().write_h5ad(raw)
    preprocess_file(raw, tmp_path / "p.h5ad", tmp_path / "qc.json", SCIPLEX, SETTINGS, "sciplex")
    write_sentence_table(tmp_path / "p.h5ad", tmp_path / "s.parquet", dataset="sciplex",
                         cell_sentence=CellSentenceSettings(top_k=10), splits=SplitSettings(test_fraction=0.3))
    cells = pd.read_parquet(tmp_path / "s.parquet")
    table = build_task_tables(cells, ["perturbation"])
    primal = table[(table.task == "perturbation") & (table.direction == "primal")]
    assert len(primal) == 72 and set(primal.label) == {"Dex", "SAHA"}
    # without the pairing the same cells give no prompt, and the catalog check says so before any job
    unpaired = {**SCIPLEX, "pairing": {}}
    config = {"tasks": {"perturbation": ["sciplex"]}, "datasets": {"sciplex": unpaired}}
    with pytest.raises(CellDualityError, match=r"dataset sciplex cannot serve task perturbation.*condition"):
        check_catalog(config)
    check_catalog({**config, "datasets": {"sciplex": SCIPLEX}})


def test_genetic_perturbations_are_operation_and_target():
    adata = sciplex_like()
    adata.obs["perturbation"] = adata.obs["perturbation"].replace({"Dex": "TP53", "SAHA": "MYC"})
    adata.obs["op"] = np.where(adata.obs["perturbation"] == "MYC", "overexpression", "knockdown")
    ds = {**SCIPLEX, "pairing": {"by": ["cell_line"], "control": ["control"], "operation": "op"}}
    out, _ = preprocess(adata, ds, SETTINGS, "screen", where="in.h5ad")
    assert set(out.obs.drug) == {"control", "knockdown TP53", "overexpression MYC"}
    fixed = {**SCIPLEX, "pairing": {"by": ["cell_line"], "control": ["control"], "operation": "knockdown"}}
    out, _ = preprocess(sciplex_like(), fixed, SETTINGS, "screen", where="in.h5ad")
    assert set(out.obs.drug) == {"control", "knockdown Dex", "knockdown SAHA"}


@pytest.mark.parametrize("pairing, message", [
    ({"by": ["plate"], "control": ["control"]}, r"pairing.by names obs column\(s\) \['plate'\]"),
    ({"by": ["cell_line"], "control": ["vehicle"]}, r"no cell has a control value \['vehicle'\]"),
])
def test_pairing_errors_are_one_line(pairing, message):
    with pytest.raises(CellDualityError, match=message) as err:
        preprocess(sciplex_like(), {**SCIPLEX, "pairing": pairing}, SETTINGS, "s", where="in.h5ad")
    assert "\n" not in str(err.value)


def test_treated_cells_without_a_control_in_their_group_stay_unpaired():
    adata = sciplex_like()
    keep = ~((adata.obs.cell_line == "MCF7") & (adata.obs.perturbation == "control"))
    out, report = preprocess(adata[keep].copy(), SCIPLEX, SETTINGS, "s", where="in.h5ad")
    assert report.pairing["treated_cells_without_control"] == 24
    assert out.obs.loc[out.obs.cell_type == "MCF7", "pair_id"].isna().all()
