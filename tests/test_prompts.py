"""Prompt builders, including the verbatim Cell-o1 CellPuzzles format."""

from __future__ import annotations

import math

import pytest

from cellduality.tasks import prompts as P

# The ncbi/Cell-o1 model card example, verbatim.
CELL_O1_SYSTEM = (
    "You are an expert assistant specialized in cell type annotation. "
    "You will be given a batch of N cells from the same donor, where each cell represents a unique cell type. "
    "For each cell, the top expressed genes are provided in descending order of expression. "
    "Using both the gene expression data and donor information, determine the correct cell type for each cell. "
    "You will also receive a list of N candidate cell types, and each candidate must be assigned to exactly one cell. "
    "Ensure that you consider all cells and candidate types together, rather than annotating each cell individually. "
    "Include your detailed reasoning within <think> and </think> tags, and provide your final answer within <answer> and </answer> tags. "
    "The final answer should be a single string listing the assigned cell types in order, separated by ' | '."
)
CELL_O1_USER = (
    "Context: The cell is from a female at the 73-year-old stage, originating from the lung. The patient has been diagnosed with chronic obstructive pulmonary disease. The patient is a smoker. There is no cancer present. \n\n"
    "Cell 1: MT2A, ACTB, MT1X, MTATP6P29, MYL9, MTND4LP30, CRIP1, DSTN, MTND2P13, MTCO2P22, S100A6, MTCYBP19, MALAT1, VIM, RPLP1, RGS5, TPT1, LGALS1, TPM2, MTND3P6, MTND1P22, PTMA, TMSB4X, STEAP1B, MT1M, LPP, RPL21\n"
    "Cell 2: MALAT1, FTL, MTCO2P22, TMSB4X, B2M, MTND4LP30, IL6ST, RPS19, RBFOX2, CCSER1, RPL41, RPS27, RPL10, ACTB, MTATP6P29, MTND2P13, RPS12, STEAP1B, RPL13A, S100A4, RPL34, TMSB10, RPL28, RPL32, RPL39, RPL13\n"
    "Cell 3: SCGB3A1, SCGB1A1, SLPI, WFDC2, TPT1, MTCO2P22, B2M, RPS18, RPS4X, RPS6, MTND4LP30, RPL34, RPS14, RPL31, STEAP1B, LCN2, RPLP1, IL6ST, S100A6, RPL21, RPL37A, ADGRL3, RPL37, RBFOX2, RPL41, RARRES1, RPL19\n\n"
    "Match the cells above to one of the following cell types:\n"
    "non-classical monocyte\nepithelial cell of lung\nsmooth muscle cell"
)


def _cells_from_example() -> list[list[str]]:
    lines = CELL_O1_USER.split("\n\n")[1].split("\n")
    return [line.split(": ", 1)[1].split(", ") for line in lines]


def test_cellpuzzles_reproduces_cell_o1_exactly() -> None:
    messages = P.cellpuzzles_prompt(
        _cells_from_example(),
        ["non-classical monocyte", "epithelial cell of lung", "smooth muscle cell"],
        {"sex": "female", "age": "73-year-old stage", "tissue": "lung", "disease": "chronic obstructive pulmonary disease"},
        extra_context=["The patient is a smoker.", "There is no cancer present."],
    )
    assert messages == [{"role": "system", "content": CELL_O1_SYSTEM}, {"role": "user", "content": CELL_O1_USER}]


def test_cellpuzzles_checks_counts_and_accepts_sentences() -> None:
    with pytest.raises(ValueError, match="as many candidates"):
        P.cellpuzzles_prompt([["A"], ["B"]], ["x"])
    user = P.cellpuzzles_prompt(["A B", "C D"], ["t1", "t2"])[1]["content"]
    assert user == "Context: \n\nCell 1: A, B\nCell 2: C, D\n\nMatch the cells above to one of the following cell types:\nt1\nt2"


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"sex": "male", "age": 45, "tissue": "blood"}, "The cell is from a male at the 45-year-old stage, originating from the blood."),
        ({"age": 45.0}, "The cell is from a donor at the 45-year-old stage."),
        ({"sex": "Female"}, "The cell is from a female."),
        ({"tissue": "liver"}, "The cell originates from the liver."),
        ({"disease": "normal"}, "The donor is healthy."),
        ({"disease": "type 2 diabetes"}, "The patient has been diagnosed with type 2 diabetes."),
        ({"donor": "D3"}, "The donor ID is D3."),
        ({"drug": "cisplatin", "dose": "1 uM", "time": "24 h"}, "The cell was treated with cisplatin at a dose of 1 uM for 24 h."),
        ({"dose": "1 uM"}, "The treatment dose is 1 uM."),
        ({"sex": float("nan"), "age": None, "tissue": "unknown", "disease": "", "donor": "nan"}, ""),
        ({"cell_type": "B cell", "batch": "b1"}, ""),  # only context keys are used
        (None, ""),
    ],
)
def test_context_sentence(meta: dict | None, expected: str) -> None:
    assert P.context_sentence(meta) == expected


def test_context_skips_pandas_na() -> None:
    pd = pytest.importorskip("pandas")
    assert P.context_sentence({"sex": pd.NA, "tissue": "lung"}) == "The cell originates from the lung."
    assert not P.is_present(math.nan)


def _all_prompts() -> list[list[dict[str, str]]]:
    meta = {"tissue": "blood", "drug": "DrugX"}
    return [
        P.annotation_prompt(["CD3D", "CD3E"], meta),
        P.annotation_prompt(["CD3D"], meta, ["T cell", "B cell"]),
        P.annotation_dual_prompt(["CD3D"], "T cell", 3, meta),
        P.generation_prompt("T cell", 32, meta),
        P.generation_dual_prompt(["CD3D"], meta, ["T cell"]),
        P.sensitivity_prompt(["CD3D"], "DrugX", meta),
        P.sensitivity_dual_prompt(["CD3D"], "DrugX", "sensitive", 2, meta),
        P.perturbation_prompt(["CD3D"], "DrugX", 10, meta),
        P.perturbation_dual_prompt(["CD3E"], ["CD3D"], ["DrugX", "DrugY"], meta),
        P.cellpuzzles_prompt([["CD3D"], ["MS4A1"]], ["B cell", "T cell"], meta),
        P.cellpuzzles_dual_prompt(["CD3D"], "T cell", 1, meta),
    ]


def test_every_prompt_is_system_plus_user_and_asks_for_tags() -> None:
    for messages in _all_prompts():
        assert [m["role"] for m in messages] == ["system", "user"]
        system = messages[0]["content"]
        assert "<think>" in system and "</think>" in system and "<answer>" in system and "</answer>" in system


def test_annotation_prompts() -> None:
    user = P.annotation_prompt(["CD3D", "CD3E"], {"tissue": "blood"})[1]["content"]
    assert user == "Context: The cell originates from the blood.\n\nCell: CD3D CD3E\n\nWhat is the cell type of this cell?"
    user = P.annotation_prompt("CD3D CD3E", None, ["T cell", "B cell"])[1]["content"]
    assert user.startswith("Cell: CD3D CD3E\n\n") and user.endswith("cell types:\nT cell\nB cell")
    assert P.generation_dual_prompt is P.annotation_prompt


def test_inpainting_prompt_states_condition_visible_genes_and_count() -> None:
    user = P.annotation_dual_prompt(["CD3D", "IL7R"], "T cell", 3)[1]["content"]
    assert user == (
        "Cell type: T cell\nObserved genes: CD3D IL7R\nNumber of hidden genes: 3\n\n"
        "List the 3 hidden genes, highest expressed first."
    )
    user = P.sensitivity_dual_prompt(["A"], "cisplatin", "resistant", 1, {"drug": "cisplatin"})[1]["content"]
    assert "Drug: cisplatin\nDrug response: resistant\n" in user
    assert "treated with" not in user  # the drug is not repeated in the context


def test_generation_and_sensitivity_prompts() -> None:
    assert "top 32 expressed genes" in P.generation_prompt("B cell", 32)[1]["content"]
    assert "Cell type: B cell" in P.generation_prompt("B cell", 32)[1]["content"]
    messages = P.sensitivity_prompt(["A", "B"], "cisplatin", labels=("resistant", "sensitive"))
    assert messages[0]["content"].endswith("one of: resistant, sensitive.")
    assert messages[1]["content"] == "Cell: A B\nDrug: cisplatin\n\nIs this cell resistant or sensitive to the drug?"


def test_perturbation_dual_does_not_leak_the_drug() -> None:
    meta = {"drug": "SecretDrug", "dose": "10 nM", "tissue": "lung"}
    messages = P.perturbation_dual_prompt(["B", "A"], ["A", "B"], None, meta)
    text = messages[0]["content"] + messages[1]["content"]
    assert "SecretDrug" not in text
    assert "Cell before treatment: A B\nCell after treatment: B A" in text
    assert "10 nM" in text  # other context stays
    primal = P.perturbation_prompt(["A"], "SecretDrug", 5, meta)[1]["content"]
    assert primal.count("SecretDrug") == 1  # given once, as the input, not again in the context


def test_format_answer_parses() -> None:
    from cellduality.tasks.parsing import parse_response

    parsed = parse_response(P.format_answer("because", "T cell"), strict=True)
    assert parsed.format_ok and parsed.answer == "T cell"
