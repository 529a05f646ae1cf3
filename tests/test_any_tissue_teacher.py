"""The offline markers teacher on a tissue its shipped tables do not cover: brain tumour cells (Tirosh et al.
2016, oligodendroglioma, Smart-seq2 TPM; the 184-cell example of the infercnvpy package, its 1,500 most
widely detected genes, values rounded to 0.1: tests/data/oligodendroglioma_small.h5ad). With
``teacher.knowledge: data`` it learns each label's genes from the SFT-stage cells, so annotation and
CellPuzzles answers are accepted at least half the time, and it never writes that it lacks a reference."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

from cellduality.data.preprocess import PreprocessSettings, preprocess_file
from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.tables import write_task_tables
from cellduality.teacher.filtering import FilterSettings
from cellduality.teacher.runner import TeacherSettings
from cellduality.teacher.sft_data import sft_cell_profiles, write_sft_dataset

DATA = Path(__file__).parent / "data" / "oligodendroglioma_small.h5ad"
ENTRY = {"species": "human", "labels": {"cell_type": "cell_type"}, "metadata": {}, "constants": {"tissue": "brain"}}
PREPROCESS = PreprocessSettings(min_genes=50, min_cells=3, expression="tpm")


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oligo")
    report = preprocess_file(DATA, root / "p.h5ad", root / "qc.json", ENTRY, PREPROCESS, "oligo")
    assert report.input_kind == "tpm" and report.n_cells_out == 184
    write_sentence_table(root / "p.h5ad", root / "cells.parquet", dataset="oligo",
                         cell_sentence=CellSentenceSettings(top_k=32))
    return root / "cells.parquet"


def test_the_data_file_is_the_labelled_brain_tumour_example():
    adata = ad.read_h5ad(DATA)
    assert adata.shape == (184, 1500)
    assert adata.obs["cell_type"].value_counts().to_dict() == {
        "malignant_93": 40, "malignant_97": 35, "malignant_MGH53": 34, "malignant_MGH36": 33,
        "Oligodendrocytes (non-malignant)": 23, "Microglia/Macrophage": 19}


@pytest.mark.parametrize("task", ["annotation", "cellpuzzles"])
def test_data_knowledge_teacher_is_accepted_on_brain_tumour_cells(cells, tmp_path, task):
    table = write_task_tables(cells, tmp_path / "t.parquet", [task], inpainting=InpaintingSettings(hidden_fraction=0.75),
                              top_k=32, required=[task])
    teacher = TeacherSettings.from_params({"provider": "markers", "n_samples": 4, "knowledge": "data",
                                           "max_reasoning_lines": 6})
    stats = write_sft_dataset(table, tmp_path / "sft.parquet", tmp_path / "stats.json", teacher,
                              FilterSettings(), data=sft_cell_profiles(cells), label=f"{task}/oligo")
    assert stats["primal"]["acceptance_rate"] >= 0.5, stats["primal"]
    sft = pd.read_parquet(tmp_path / "sft.parquet")
    text = " ".join(sft["completion"])
    assert "no marker reference" not in text.lower() and "best guess" not in text.lower()
    # the reasoning names genes measured in these cells, not immune markers from the shipped tables
    assert any(gene in text for gene in ("PLP1", "MBP", "CD74", "C1QB", "SOX4", "OLIG2", "PTPRZ1"))
    # the shipped (immune) tables alone do not cover this tissue: measured 0.15 (annotation) and 0.0 (CellPuzzles)
    shipped = TeacherSettings.from_params({"provider": "markers", "n_samples": 4, "knowledge": "shipped",
                                           "max_reasoning_lines": 6})
    before = write_sft_dataset(table, tmp_path / "sft0.parquet", tmp_path / "stats0.json", shipped, FilterSettings(),
                               data=sft_cell_profiles(cells), label=f"{task}/oligo")
    assert before["primal"]["acceptance_rate"] < 0.3 < stats["primal"]["acceptance_rate"]
