"""Reward functions: duality, oracle, CellPuzzles variants, format penalty."""

from __future__ import annotations

import random
import re

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
        ("NK cell | T cell | plasmablast", -1.0, (2 / 3 + 0) / 2),  # not a candidate: released just scores it
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


def _cell_o1_reference(solution: str, ground_truth: str) -> float:
    """Independent restatement of Cell-o1's released compute_score (ncbi-nlp/cell-o1), for agreement tests."""
    lines = solution.splitlines()
    cand = ""
    for line in lines:
        if "<answer>" in line:
            cand = line.split("<answer>", 1)[1].strip()
            if cand.endswith("</answer>"):
                cand = cand.replace("</answer>", "").strip()
            break
    if not cand:
        cand = next((line.strip() for line in lines if "|" in line), "")
    if any(solution.count(t) != 1 for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return -1
    if not re.match(r"^<think>.*?</think>\n<answer>.*?</answer>$", solution, re.DOTALL) or "|" not in cand:
        return -1
    gold = [x.strip() for x in ground_truth.split("|") if x.strip()]
    items = [x.strip() for x in cand.split("|") if x.strip()]
    if not gold or len(gold) != len(items) or len(set(items)) != len(items):
        return -1
    right = sum(items[i].lower() == gold[i].lower() for i in range(len(gold)))
    return (right / len(gold) + (right == len(gold))) / 2


def test_released_variant_agrees_with_cell_o1_on_random_cases() -> None:
    rng = random.Random(0)
    labels = ["NK cell", "naive B cell", "plasmablast", "CD4-positive T cell", "CD4_positive T cell", "nk CELL"]
    shapes = ["<think>{t}</think>\n<answer>{a}</answer>", "<think>{t}</think><answer>{a}</answer>",
              "x<think>{t}</think>\n<answer>{a}</answer>", "<think>{t}</think>\n<answer>\n{a}\n</answer>",
              "<think>{t}</think>\n<answer>{a}</answer>\n", "<think>{t}</think>\n\n<answer>{a}</answer>",
              "<think>{t}</think>\n<answer>{a}</answer><answer>x</answer>", "{a}"]
    for _ in range(20_000):
        gold = rng.sample(labels[:4], 3)
        items = [rng.choice(labels) if rng.random() < 0.3 else g for g in rng.sample(gold, 3)]
        if rng.random() < 0.1:
            items = items[:2]
        sep = rng.choice([" | ", "|", " |", " | \n"])
        answer = sep.join(items)
        think = rng.choice(["r", "a | b", "", "line1\nline2"])
        text = rng.choice(shapes).format(t=think, a=answer)
        expected = _cell_o1_reference(text, " | ".join(gold))
        assert R.cellpuzzles_reward(text, gold, None, "released") == pytest.approx(expected), text
        assert R.released_cellpuzzles_score(text, " | ".join(gold)) == pytest.approx(expected)
