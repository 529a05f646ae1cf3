"""`cellduality.annotate(adata, model)` and `cellduality annotate`: a trained model labels every cell (label,
confidence, probabilities over its labels; reasoning on request), from its model card, with the prompt the model
was trained on; bad input is one line, found before the model loads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_adata, make_task_row

from cellduality.cli import main
from cellduality.errors import CellDualityError
from cellduality.tasks import prompts
from cellduality.tasks.prompts import format_answer
from cellduality.tasks.schema import rows_frame
from cellduality.training.model_card import CARD, derive_model_card, read_model_card, write_model_card
from cellduality.training.settings import EmbeddedModelSettings, LoraSettings, SFTSettings

pytest.importorskip("trl")

MARKERS = {"T cell": "CD3E", "B cell": "MS4A1", "Monocyte": "CD14"}
GENES = [f"GENE{i}" for i in range(20)] + list(MARKERS.values())
PREPROCESS = {"target_sum": 1e4, "min_genes": 1, "min_cells": 0, "duplicate_genes": "make_unique"}


def cell_genes(label: str, i: int) -> list[str]:
    return [MARKERS[label]] + GENES[i % 8: i % 8 + 7]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from cellduality.training.sft import run_sft
    from cellduality.training.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("annotate")
    labels = list(MARKERS)
    rows = [make_task_row(prompt_id=f"annotation:primal:sft:d:c{i}", prompt=prompts.annotation_prompt(
        cell_genes(labels[i % 3], i), {}, labels), answer=labels[i % 3], label=labels[i % 3], candidates=labels,
        cell_ids=[f"c{i}"]) for i in range(30)]
    tasks = root / "tasks.parquet"
    rows_frame(rows).to_parquet(tasks)
    sentences = root / "sentences.parquet"
    pd.DataFrame({"sentence": [" ".join(GENES)]}).to_parquet(sentences)
    build_tiny_model([sentences], [tasks], root / "base",
                     EmbeddedModelSettings(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1,
                                           num_heads=2))
    sft = pd.read_parquet(tasks)
    sft["completion"] = [format_answer("", a) for a in sft["answer"]]
    sft["accepted"] = True
    sft.to_parquet(root / "sft.parquet")
    run_sft(str(root / "base"), [root / "sft.parquet"], root / "sft", root / "ckpt",
            SFTSettings(max_steps=40, learning_rate=1e-2, per_device_batch_size=8, save_steps=1000), LoraSettings())
    write_model_card(root / "sft", tables=[tasks], preprocess=PREPROCESS, cell_sentence={"top_k": 8},
                     species="human", source={"test": True})
    return root


def new_cells(n: int = 12, genes=None):
    """Counts for n new cells: a marker gene of each type plus filler genes, highest first."""
    genes = genes or GENES
    labels = list(MARKERS)
    X = np.zeros((n, len(genes)), dtype=np.float32)
    for i in range(n):
        for rank, gene in enumerate(cell_genes(labels[i % 3], i)):
            if gene in genes:
                X[i, genes.index(gene)] = 50 - 5 * rank
    X[:, 0] += 1  # every cell expresses something
    return make_adata(X, genes=genes, obs=pd.DataFrame({"sample": ["s1"] * n}))


def test_every_cell_gets_a_label_with_probabilities_over_the_model_labels(model):
    import cellduality

    adata = new_cells()
    before = adata.X.copy()
    assert cellduality.annotate(adata, model / "sft") is None  # scanpy's convention: in place by default
    obs, labels = adata.obs, list(adata.uns["cellduality"]["labels"])
    assert labels == sorted(MARKERS) and (adata.X != before).nnz == 0  # the data itself is not changed
    assert obs["cellduality_label"].notna().all() and set(obs["cellduality_label"]) <= set(MARKERS)
    probabilities = adata.obsm["cellduality_probabilities"]
    assert probabilities.shape == (12, 3) and np.allclose(probabilities.sum(axis=1), 1)
    assert np.allclose(obs["cellduality_confidence"], probabilities.max(axis=1))
    assert (np.array(labels)[probabilities.argmax(axis=1)] == obs["cellduality_label"].astype(str)).all()
    # scoring the labels agrees with what the model answers when it generates (constrained to its labels)
    from transformers import AutoModelForCausalLM

    from cellduality.tasks.registry import get_task
    from cellduality.training.decoding import generate_chat
    from cellduality.training.setup import load_tokenizer

    conversations = [prompts.annotation_prompt(cell_genes(list(MARKERS)[i % 3], i)[:8], {}, labels) for i in range(12)]
    lm, tokenizer = AutoModelForCausalLM.from_pretrained(str(model / "sft")), load_tokenizer(str(model / "sft"))
    said = [get_task("annotation").parse_prediction(r, labels)[1]
            for r in generate_chat(lm, tokenizer, conversations, max_new_tokens=20, allowed_labels=[labels] * 12)]
    assert (obs["cellduality_label"].astype(str).to_numpy() == np.array(said, dtype=object)).mean() >= 0.75


def test_copy_threshold_majority_voting_and_reasoning(model):
    import cellduality

    adata = new_cells()
    adata.obs["cluster"] = ["a" if i % 3 == 0 else "b" for i in range(12)]
    out = cellduality.annotate(adata, model / "sft", copy=True, min_confidence=1.01, majority_voting="cluster",
                               reasoning=["cell0", "cell4"])
    assert "cellduality_label" not in adata.obs and out is not adata  # copy=True leaves the input alone
    assert (out.obs["cellduality_label"] == "unassigned").all()  # nothing reaches probability 1.01
    assert (out.obs["cellduality_majority_voting"] == "unassigned").all()
    voted = cellduality.annotate(adata, model / "sft", copy=True, majority_voting="cluster").obs
    for _, cells in voted.groupby("cluster", observed=True):
        assert cells["cellduality_majority_voting"].nunique() == 1
        assert cells["cellduality_majority_voting"].iloc[0] == cells["cellduality_label"].mode().iloc[0]
    reasoning = out.obs["cellduality_reasoning"]
    assert reasoning.loc[["cell0", "cell4"]].str.contains("<answer>").all() and (reasoning.drop(["cell0", "cell4"]) == "").all()


def test_prompt_parity_with_a_model_trained_with_context(tmp_path):
    """A model whose training prompts carried a context line gets the same line from annotate: from an obs column,
    or the training constant; a per-cell key without a column is one line naming it."""
    import cellduality
    from cellduality.evaluation import annotate as annotate_module

    labels = list(MARKERS)
    rows = [make_task_row(prompt_id=f"annotation:primal:sft:d:c{i}", prompt=prompts.annotation_prompt(
        cell_genes(labels[i % 3], i), {"tissue": "blood", "donor": f"d{i % 2}"}, labels), answer=labels[i % 3],
        label=labels[i % 3], candidates=labels, cell_ids=[f"c{i}"], metadata={"tissue": "blood", "donor": f"d{i % 2}"})
        for i in range(6)]
    tasks = tmp_path / "tasks.parquet"
    rows_frame(rows).to_parquet(tasks)
    card = read_model_card(write_model_card(tmp_path, tables=[tasks], preprocess=PREPROCESS,
                                            cell_sentence={"top_k": 8}, species="human", source={}).parent)
    assert card["context"] == {"keys": ["donor", "tissue"], "constants": {"tissue": "blood"}}
    obs = pd.DataFrame({"donor_id": ["x", "y"]}, index=["c1", "c2"])
    contexts = annotate_module.context_of(card, obs, {"donor": "donor_id"}, "new.h5ad")
    assert contexts == [{"donor": "x", "tissue": "blood"}, {"donor": "y", "tissue": "blood"}]
    sent = prompts.annotation_prompt(["CD3E"], contexts[0], labels)
    assert sent == prompts.annotation_prompt(["CD3E"], {"tissue": "blood", "donor": "x"}, labels)
    with pytest.raises(CellDualityError, match=r"carried 'donor'.*metadata=\{'donor': '<obs column>'\}.*--metadata"):
        annotate_module.context_of(card, obs, None, "new.h5ad")
    with pytest.raises(CellDualityError, match="obs column 'nope', which does not exist"):
        annotate_module.context_of(card, obs, {"donor": "nope"}, "new.h5ad")
    assert cellduality.annotate is annotate_module.annotate


def test_annotate_command_writes_the_h5ad_and_prints_a_summary(model, tmp_path, capfd):
    import anndata as ad

    src = tmp_path / "new.h5ad"
    new_cells().write_h5ad(src)
    out = tmp_path / "out" / "annotated.h5ad"
    main(["annotate", "--model", str(model / "sft"), "--h5ad", str(src), "--out", str(out), "--min-confidence",
          "0.2", "--figure", str(tmp_path / "fig" / "cells.png"), "--log", str(tmp_path / "annotate.log")])
    assert (tmp_path / "fig" / "cells.png").read_bytes()[:4] == b"\x89PNG"
    annotated = ad.read_h5ad(out)
    assert list(annotated.obs_names) == [f"cell{i}" for i in range(12)] and annotated.obs["sample"].eq("s1").all()
    assert annotated.obsm["cellduality_probabilities"].shape == (12, 3)
    assert "annotated 12 cells" in capfd.readouterr().out


def test_info_lists_what_the_model_knows(model, capfd):
    main(["info", str(model / "sft")])
    text = capfd.readouterr().out
    assert "labels (3): B cell, Monocyte, T cell" in text and "top 8 genes" in text


def test_output_problems_are_found_before_the_model_loads(model, tmp_path, capfd, monkeypatch):
    from cellduality.evaluation import annotate as annotate_module

    src = tmp_path / "new.h5ad"
    new_cells().write_h5ad(src)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(annotate_module, "annotate", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "sft"), "--h5ad", str(src), "--out", str(tmp_path / "afile" / "o.h5ad")])
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]


def test_annotate_command_bad_input_is_one_line(model, tmp_path, capfd):
    src = tmp_path / "new.h5ad"
    new_cells(genes=[f"OTHER{i}" for i in range(len(GENES))]).write_h5ad(src)
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "sft"), "--h5ad", str(src), "--out", str(tmp_path / "o.h5ad"),
              "--log", str(tmp_path / "annotate.log")])
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of its" in err[0] and "gene vocabulary" in err[0]
    assert not (tmp_path / "o.h5ad").exists()
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "base"), "--h5ad", str(src), "--out", str(tmp_path / "o.h5ad")])
    assert f"no {CARD}" in capfd.readouterr().err
    ensembl = new_cells(genes=[f"ENSG{i:011d}" for i in range(len(GENES))])
    ensembl.write_h5ad(tmp_path / "ens.h5ad")
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "sft"), "--h5ad", str(tmp_path / "ens.h5ad"), "--out",
              str(tmp_path / "o.h5ad")])
    assert "pass gene_symbols='<var column of symbols>' (CLI: --gene-symbols COLUMN)" in capfd.readouterr().err


def test_model_card_round_trip(model):
    card = read_model_card(model / "sft")
    assert card["labels"] == sorted(MARKERS) and card["top_k"] == 8 and card["preprocess"] == PREPROCESS
    assert json.loads((model / "sft" / CARD).read_text())["trained"] == {"test": True}
    readme = (model / "sft" / "README.md").read_text()
    assert "cellduality annotate --model" in readme and "- Monocyte" in readme


def test_model_card_states_base_model_data_licences_settings_and_metrics(model, tmp_path):
    """README.md: Hugging Face front matter (license other, tags, base_model for a hub base), each dataset's
    description and licence, the training settings, where the metrics are; GRPO's card extends the SFT card."""
    import yaml

    sft, grpo = tmp_path / "sft", tmp_path / "grpo"
    sft.mkdir()
    grpo.mkdir()
    write_model_card(sft, tables=[model / "tasks.parquet"], preprocess=PREPROCESS, cell_sentence={"top_k": 8},
                     species="human", source={"model": "acme/tiny-llm", "datasets": ["pbmc"], "annotation": ["pbmc"]},
                     data={"pbmc": {"license": "CC BY 4.0", "description": "10x PBMC\n cells."}},
                     settings={"sft": {"max_steps": 40}, "lora": {"enabled": False}}, variant="sft")
    readme = (sft / "README.md").read_text()
    meta = yaml.safe_load(readme.split("---\n")[1])
    assert meta["license"] == "other" and meta["base_model"] == "acme/tiny-llm"
    assert {"single-cell", "cellduality"} <= set(meta["tags"])
    assert "- **pbmc**: 10x PBMC cells. Licence: CC BY 4.0." in readme and '"max_steps": 40' in readme
    assert "variant `sft`" in readme and "results/report/results.tsv" in readme
    assert derive_model_card(sft, grpo, variant="grpo_duality", settings={"grpo": {"beta": 0.04}}) == grpo / CARD
    card = read_model_card(grpo)
    assert card["labels"] == sorted(MARKERS) and set(card["settings"]) == {"sft", "lora", "grpo"}
    text = (grpo / "README.md").read_text()
    assert "variant `grpo_duality`" in text and "Licence: CC BY 4.0" in text and '"beta": 0.04' in text
    assert "base_model" not in (model / "sft" / "README.md").read_text()  # no hub base: no base_model
    assert derive_model_card(tmp_path / "no-card", tmp_path / "out", variant="grpo_oracle", settings={}) is None
