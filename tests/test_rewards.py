"""Reward functions: duality, oracle, CellPuzzles variants, format penalty."""

from __future__ import annotations

import pytest

from cellduality.errors import CellDualityError
from cellduality.tasks import rewards as R
from cellduality.tasks.prompts import format_answer

OK = format_answer("reasoning", "T cell")
BAD = "T cell"  # no tags


def ans(text: str) -> str:
    return format_answer("r", text)


def test_inpainting_reward_is_rwjs_of_parsed_genes() -> None:
    hidden = ["CD3D", "CD3E", "IL7R"]
    assert R.inpainting_reward(ans("CD3D CD3E IL7R"), hidden) == pytest.approx(1.0)
    # lower-case, duplicates and junk are cleaned first: -> [CD3E, CD3D, IL7R] = min 4/3, max 7/3
    assert R.inpainting_reward(ans("1. cd3e, CD3E, cd3d and IL7R"), hidden) == pytest.approx(4 / 7)
    assert R.inpainting_reward(ans("MS4A1"), hidden) == 0.0
    assert R.inpainting_reward("CD3D CD3E IL7R", hidden) == 0.0  # malformed dual reconstructs nothing
    assert R.inpainting_reward(ans("CD3D"), "cd3d") == pytest.approx(1.0)  # reference case is normalised


def test_inpainting_duality_reward_penalises_malformed_primal_only() -> None:
    hidden = ["A1", "B2"]
    assert R.inpainting_duality_reward(OK, ans("A1 B2"), hidden) == pytest.approx(1.0)
    assert R.inpainting_duality_reward(BAD, ans("A1 B2"), hidden) == -1.0
    assert R.inpainting_duality_reward(BAD, ans("A1 B2"), hidden, format_penalty=-0.5) == -0.5
    assert R.inpainting_duality_reward(OK, "garbage", hidden) == 0.0
    assert R.inpainting_duality_reward(OK, None, hidden) == 0.0


def test_categorical_duality_reward() -> None:
    primal = format_answer("r", "CD3D CD3E")
    assert R.categorical_duality_reward(primal, ans(" t CELL. "), "T cell") == 1.0
    assert R.categorical_duality_reward(primal, ans("B cell"), "T cell") == 0.0
    assert R.categorical_duality_reward(primal, ans("T cell"), "T cell", allowed=["B cell", "NK cell"]) == 0.0
    assert R.categorical_duality_reward(primal, ans("T lymphocyte"), "T cell", synonyms={"T lymphocyte": "T cell"}) == 1.0
    assert R.categorical_duality_reward("<think>r</think><answer>CD3D", ans("T cell"), "T cell") == -1.0
    assert R.categorical_duality_reward(primal, "T cell", "T cell") == 0.0


def test_primal_helpers() -> None:
    assert R.response_label(ans("b CELLS"), ["B cells", "T cells"]) == "B cells"
    assert R.response_label(BAD, ["B cells"]) is None
    assert R.response_genes(ans("cd3d, CD3E")) == ["CD3D", "CD3E"]
    assert R.response_genes(BAD) is None


def test_classification_reward_oracle() -> None:
    assert R.classification_reward(OK, "T cell") == 1.0
    assert R.classification_reward(ans("B cell"), "T cell") == 0.0
    assert R.classification_reward(BAD, "T cell") == -1.0
    assert R.classification_reward(BAD, "T cell", format_penalty=0.0) == 0.0
    assert R.classification_reward("<think>r</think>\n<answer>T cell</answer>", "T cell", strict=True) == 1.0
    assert R.classification_reward("x<think>r</think><answer>T cell</answer>", "T cell", strict=True) == -1.0


def test_generation_reward_oracle() -> None:
    assert R.generation_reward(ans("A1 B2 C3"), "A1 B2 C3") == pytest.approx(1.0)
    assert R.generation_reward(ans("A1 C3"), ["A1", "B2", "C3"]) == pytest.approx(2 / 3)
    assert R.generation_reward(BAD, ["A1"]) == -1.0


GOLD = ["NK cell", "naive B cell", "plasmablast"]
CANDS = ["plasmablast", "NK cell", "naive B cell"]


@pytest.mark.parametrize(
    ("answer", "paper", "released"),
    [
        ("NK cell | naive B cell | plasmablast", 1.0, 1.0),
        ("nk cell | Naive B cell | plasmablast", 1.0, 1.0),
        ("NK cell | plasmablast | naive B cell", 0.0, (1 / 3 + 0) / 2),
        ("plasmablast | NK cell | naive B cell", 0.0, 0.0),
        ("NK cell | naive B cell", -1.0, -1.0),  # wrong length
        ("NK cell | NK cell | plasmablast", -1.0, -1.0),  # duplicate
        ("NK cell | T cell | plasmablast", -1.0, -1.0),  # not a candidate
    ],
)
def test_cellpuzzles_reward_variants(answer: str, paper: float, released: float) -> None:
    response = ans(answer)
    assert R.cellpuzzles_reward(response, GOLD, CANDS, "paper") == pytest.approx(paper)
    assert R.cellpuzzles_reward(response, GOLD, CANDS, "released") == pytest.approx(released)
    assert R.cellpuzzles_reward(response, " | ".join(GOLD), None, "released") == pytest.approx(released)


def test_cellpuzzles_reward_format_and_variant_errors() -> None:
    assert R.cellpuzzles_reward("NK cell | naive B cell | plasmablast", GOLD, CANDS) == -1.0
    assert R.cellpuzzles_reward("NK cell | naive B cell | plasmablast", GOLD, CANDS, format_penalty=-2) == -2.0
    with pytest.raises(ValueError, match="variant"):
        R.cellpuzzles_reward(ans("x"), GOLD, CANDS, "partial")


def test_cellpuzzles_duality_reward_is_mean_per_cell_rwjs() -> None:
    primal = ans("NK cell | naive B cell | plasmablast")
    hidden = [["A1", "B2"], ["C3"], ["D4", "E5"]]
    duals = [ans("A1 B2"), ans("X9"), ans("E5 D4")]  # 1, 0, swapped pair = 1/2
    assert R.cellpuzzles_duality_reward(primal, duals, hidden, CANDS) == pytest.approx((1 + 0 + 0.5) / 3)
    assert R.cellpuzzles_duality_reward(ans("NK cell | NK cell | plasmablast"), duals, hidden, CANDS) == -1.0
    assert R.cellpuzzles_duality_reward(primal, None, hidden, CANDS) == 0.0
    with pytest.raises(ValueError):
        R.cellpuzzles_duality_reward(primal, duals[:2], hidden, CANDS)


def test_reward_settings_validation() -> None:
    assert R.RewardSettings().format_penalty == -1.0
    with pytest.raises(CellDualityError, match="cellpuzzles"):
        R.RewardSettings(cellpuzzles="batch")
    with pytest.raises(CellDualityError, match="mode"):
        R.RewardSettings(mode="both")
