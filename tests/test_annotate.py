"""`cellduality annotate`: a trained model labels the cells of a new h5ad (label, confidence, format-error flag,
reasoning beside it), from its model card; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_adata, make_task_row

from cellduality.cli import main
from cellduality.evaluation.annotate import annotate
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


def test_annotate_writes_labels_confidence_flags_and_reasoning(model, tmp_path):
    import anndata as ad

    src = tmp_path / "new.h5ad"
    new_cells().write_h5ad(src)
    out = tmp_path / "out" / "annotated.h5ad"
    result = annotate(model / "sft", src, out, batch_size=4, chunk_size=5, progress=False)  # 3 chunks
    annotated = ad.read_h5ad(out)
    assert list(annotated.obs_names) == [f"cell{i}" for i in range(12)] and annotated.obs["sample"].eq("s1").all()
    obs = annotated.obs
    assert set(obs["cellduality_label"].cat.categories) == set(MARKERS)
    ok = ~obs["cellduality_format_error"]
    assert ok.sum() >= 10 and obs.loc[ok, "cellduality_label"].notna().all()
    assert obs.loc[~ok, "cellduality_label"].isna().all()
    assert ((obs["cellduality_confidence"] > 0) == ok).all() and (obs["cellduality_confidence"] <= 1).all()
    assert (result["cellduality_format_error"].to_numpy() == obs["cellduality_format_error"].to_numpy()).all()
    reasoning = pd.read_parquet(tmp_path / "out" / "annotated.reasoning.parquet")
    assert list(reasoning["obs_name"]) == list(obs.index) and reasoning["response"].str.contains("<answer>").any()
    assert list(annotated.uns["cellduality_annotate"]["labels"]) == sorted(MARKERS)


def test_annotate_command_bad_input_is_one_line(model, tmp_path, capfd):
    src = tmp_path / "new.h5ad"
    new_cells(genes=[f"OTHER{i}" for i in range(len(GENES))]).write_h5ad(src)
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "sft"), "--h5ad", str(src), "--out", str(tmp_path / "o.h5ad"),
              "--no-progress", "--log", str(tmp_path / "annotate.log")])
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of its" in err[0] and "gene vocabulary" in err[0]
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "o.reasoning.parquet").exists()
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "base"), "--h5ad", str(src), "--out", str(tmp_path / "o.h5ad")])
    assert f"no {CARD}" in capfd.readouterr().err
    ensembl = new_cells(genes=[f"ENSG{i:011d}" for i in range(len(GENES))])
    ensembl.write_h5ad(tmp_path / "ens.h5ad")
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(model / "sft"), "--h5ad", str(tmp_path / "ens.h5ad"), "--out",
              str(tmp_path / "o.h5ad"), "--no-progress"])
    assert "Ensembl" in capfd.readouterr().err


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
