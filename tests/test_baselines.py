import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellduality.data.builtin import pbmc68k_reduced
from cellduality.data.preprocess import PreprocessSettings, preprocess
from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table
from cellduality.data.simulated_perturbation import load_pbmc_perturbation
from cellduality.data.splits import SplitSettings
from cellduality.errors import CellDualityError
from cellduality.evaluation.baselines import BASELINE_COLUMNS, classification_baselines, generation_baselines
from cellduality.evaluation.classification_metrics import cellpuzzles_scores, classification_scores
from cellduality.tasks.tables import build_task_tables


def _dataset(tmp, adata, name, labels, tasks):
    """Processed h5ad, cell-sentence table and task table of ``adata``, as the pipeline writes them."""
    ds = {"species": "human", "labels": labels}
    out, _ = preprocess(adata, ds, PreprocessSettings(min_genes=1), name, where=name)
    h5ad = tmp / f"{name}.h5ad"
    out.write_h5ad(h5ad)
    write_sentence_table(h5ad, tmp / f"{name}.parquet", dataset=name, cell_sentence=CellSentenceSettings(top_k=32),
                         splits=SplitSettings(test_fraction=0.25))
    cells = pd.read_parquet(tmp / f"{name}.parquet")
    return h5ad, cells, build_task_tables(cells, tasks)


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pbmc")
    return _dataset(tmp, pbmc68k_reduced(), "pbmc68k", {"cell_type": "bulk_labels"},
                    ("annotation", "generation", "cellpuzzles"))


@pytest.fixture(scope="module")
def perturb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perturb")
    labels = {"cell_type": "cell_type", "drug": "drug", "condition": "condition", "pair_id": "pair_id"}
    return _dataset(tmp, load_pbmc_perturbation(n_cells=80), "perturb", labels, ("perturbation",))


def test_annotation_baselines_beat_chance_quickly(pbmc):
    h5ad, cells, tasks = pbmc
    start = time.perf_counter()
    preds = classification_baselines(tasks, cells, h5ad, task="annotation")
    assert time.perf_counter() - start < 15
    assert tuple(preds.columns) == BASELINE_COLUMNS and set(preds["model"]) == {"logreg", "knn"}
    test = cells[cells["split"] == "test"]
    majority = test["cell_type"].value_counts(normalize=True).max()
    for model, group in preds.groupby("model"):
        assert len(group) == len(test) and set(group["split"]) == {"test"}
        scores = classification_scores(group["label"].tolist(), group["prediction"].tolist())
        assert scores.accuracy > majority + 0.2, model
        assert scores.format_error_rate == 0
    primal = tasks[(tasks["task"] == "annotation") & (tasks["stage"] == "eval") & (tasks["direction"] == "primal")]
    some = primal["prompt_id"].head(7)
    few = classification_baselines(tasks, cells, h5ad, task="annotation", methods=["logreg"], prompt_ids=some)
    assert sorted(few["prompt_id"]) == sorted(some.tolist())


def test_cellpuzzles_baseline_assigns_each_candidate_once(pbmc):
    h5ad, cells, tasks = pbmc
    preds = classification_baselines(tasks, cells, h5ad, task="cellpuzzles", methods=["logreg"])
    rows = tasks[(tasks["task"] == "cellpuzzles") & (tasks["stage"] == "eval") & (tasks["direction"] == "primal")]
    candidates = dict(zip(rows["prompt_id"], rows["candidates"]))
    for pid, prediction in zip(preds["prompt_id"], preds["prediction"]):
        assert sorted(prediction.split(" | ")) == sorted(json.loads(candidates[pid]))
    scores = cellpuzzles_scores(preds["label"].tolist(), preds["prediction"].tolist())
    assert scores.cell_accuracy > 0.5 and scores.batch_accuracy > 1 / 120  # chance for N=5 is 1/5! batches


def test_sensitivity_baselines_use_the_drug(tmp_path):
    rng = np.random.default_rng(0)
    n, genes = 300, 40
    drug = rng.choice(["D1", "D2"], n)
    sensitive = rng.random(n) < 0.5
    X = rng.gamma(2.0, 1.0, size=(n, genes))
    X[:, 0] += np.where(sensitive, 4.0, 0.0)  # marker of sensitivity
    X[:, 1] += np.where(drug == "D2", 3.0, 0.0)
    obs = pd.DataFrame({"drug": drug, "sensitivity": np.where(sensitive, "sensitive", "resistant")},
                       index=[f"line{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=[f"GENE{i}" for i in range(genes)]))
    h5ad, cells, tasks = _dataset(tmp_path, adata, "lines", {"drug": "drug", "sensitivity": "sensitivity"},
                                  ("sensitivity",))
    preds = classification_baselines(tasks, cells, h5ad, task="sensitivity")
    for model, group in preds.groupby("model"):
        assert classification_scores(group["label"].tolist(), group["prediction"].tolist()).accuracy > 0.8, model
    with pytest.raises(CellDualityError, match="cover"):
        classification_baselines(tasks, cells, h5ad, task="generation")


def test_generation_baselines_give_sentences_of_the_requested_type(pbmc):
    h5ad, cells, tasks = pbmc
    preds = generation_baselines(tasks, cells, h5ad, task="generation")
    assert set(preds["model"]) == {"type_mean", "type_sample"}
    rows = tasks[(tasks["task"] == "generation") & (tasks["stage"] == "eval") & (tasks["direction"] == "primal")]
    length = {pid: len(s.split()) for pid, s in zip(rows["prompt_id"], rows["reference_sentence"])}
    genes = set(ad.read_h5ad(h5ad).var_names)
    train = cells[cells["split"] == "train"]
    by_type = {t: set(g["sentence"]) for t, g in train.groupby("cell_type")}
    for rec in preds.itertuples():
        words = rec.prediction.split()
        assert len(words) == length[rec.prompt_id] and set(words) <= genes
        if rec.model == "type_sample":
            assert rec.prediction in by_type[rec.label]
    means = preds[preds["model"] == "type_mean"]
    assert means.groupby("label")["prediction"].nunique().max() == 1  # one mean cell per type


def test_perturbation_baselines(perturb):
    h5ad, cells, tasks = perturb
    preds = generation_baselines(tasks, cells, h5ad, task="perturbation")
    assert set(preds["model"]) == {"copy_control", "drug_mean", "control_shift"}
    rows = tasks[(tasks["task"] == "perturbation") & (tasks["stage"] == "eval") & (tasks["direction"] == "primal")]
    copy = preds[preds["model"] == "copy_control"].set_index("prompt_id")["prediction"]
    assert copy.to_dict() == dict(zip(rows["prompt_id"], rows["input_sentence"]))
    shift = preds[preds["model"] == "control_shift"]
    assert (shift["prediction"].str.split().str.len() == 32).all()
    with pytest.raises(CellDualityError, match="unknown"):
        generation_baselines(tasks, cells, h5ad, task="perturbation", methods=["type_mean"])
