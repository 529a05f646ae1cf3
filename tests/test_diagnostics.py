"""'True label wins' diagnostic with deterministic fake generators."""

from __future__ import annotations

import re

import pytest

from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.prompts import format_answer
from cellduality.training.label_signal import DiagnosticExample, true_label_wins

MARKERS = {"T": ["CD3D", "CD3E", "IL7R"], "B": ["MS4A1", "CD79A", "CD79B"], "NK": ["NKG7", "GNLY", "KLRD1"]}
LABELS = ["T", "B", "NK"]
FILLER = ["ACTB", "B2M", "MALAT1", "TMSB4X", "FTL"]
# 8 genes, 'top' strategy hiding 3/8 -> the hidden genes are the first three of each cell.
CONFIG = InpaintingSettings(hidden_fraction=0.375, strategy="top")


def _user(messages: list[dict[str, str]]) -> str:
    return messages[1]["content"]


def marker_generator(prompts: list[list[dict[str, str]]]) -> list[str]:
    out = []
    for messages in prompts:
        text = _user(messages)
        label = re.search(r"^Cell type: (.+)$", text, re.M).group(1)  # type: ignore[union-attr]
        n = int(re.search(r"Number of hidden genes: (\d+)", text).group(1))  # type: ignore[union-attr]
        out.append(format_answer("markers", " ".join(MARKERS[label][:n])))
    return out


def label_blind_generator(prompts: list[list[dict[str, str]]]) -> list[str]:
    return [format_answer("same", "CD3D CD3E IL7R") for _ in prompts]


def examples() -> list[DiagnosticExample]:
    cells = [
        ("c1", MARKERS["T"] + FILLER, "T"),  # T markers hidden, labelled T -> win (1 vs 0, 0)
        ("c2", MARKERS["T"] + FILLER, "B"),  # looks like T but labelled B -> loss (0 vs T's 1)
        ("c3", FILLER[:3] + FILLER[3:] + ["RPL13", "RPS27", "EEF1A1"], "NK"),  # no markers hidden -> tie at 0
        ("c4", MARKERS["B"] + FILLER, "B"),  # win
        ("c5", ["CD3E", "CD3D", "IL7R"] + FILLER, "T"),  # partial: RWJS([CD3E,CD3D,IL7R],[CD3D,CD3E,IL7R]) = 4/7
    ]
    return [DiagnosticExample(genes, label, LABELS, pid) for pid, genes, label in cells]


def test_marker_generator_counts() -> None:
    report = true_label_wins(examples(), marker_generator, CONFIG)
    assert (report.n_cells, report.wins, report.ties, report.losses) == (5, 3, 1, 1)
    assert report.win_rate == pytest.approx(0.6)
    assert report.tie_rate == pytest.approx(0.2)
    assert report.mean_true_reward == pytest.approx((1 + 0 + 0 + 1 + 4 / 7) / 5)
    # other labels: only c2's T reconstruction scores (1.0) among 10 other-label scores
    assert report.mean_other_reward == pytest.approx(1 / 10)
    assert [c["outcome"] for c in report.per_cell] == ["win", "loss", "tie", "win", "win"]
    assert report.per_cell[4]["scores"]["T"] == pytest.approx(4 / 7)
    assert report.summary()["wins"] == 3


def test_label_blind_generator_never_wins() -> None:
    report = true_label_wins(examples(), label_blind_generator, CONFIG)
    assert report.wins == 0
    assert report.ties == 5
    assert report.mean_true_reward == pytest.approx(report.mean_other_reward)


def test_every_candidate_gets_a_prompt_with_the_same_mask() -> None:
    seen: list[list[dict[str, str]]] = []

    def recording(prompts: list[list[dict[str, str]]]) -> list[str]:
        seen.extend(prompts)
        return marker_generator(prompts)

    true_label_wins(examples()[:2], recording, InpaintingSettings(), batch_size=4)  # random masks, batched
    assert len(seen) == 2 * len(LABELS)
    for cell in range(2):
        users = [_user(m) for m in seen[cell * 3 : cell * 3 + 3]]
        observed = {re.search(r"Observed genes: (.*)", u).group(1) for u in users}  # type: ignore[union-attr]
        assert len(observed) == 1
        assert {re.search(r"Cell type: (.*)", u).group(1) for u in users} == set(LABELS)  # type: ignore[union-attr]


def test_errors() -> None:
    bad = [DiagnosticExample(["A", "B"], "Mast", LABELS, "x")]
    with pytest.raises(ValueError, match="not among its candidates"):
        true_label_wins(bad, marker_generator, CONFIG)
    with pytest.raises(ValueError, match="responses"):
        true_label_wins(examples(), lambda prompts: ["x"], CONFIG)
    empty = true_label_wins([], marker_generator, CONFIG)
    assert empty.n_cells == 0 and empty.win_rate == 0.0


def test_label_signal_gate_warns_at_chance_only(tmp_path, capfd):
    import json

    from cellduality.training.label_signal import label_signal_gate

    path = tmp_path / "wins.json"
    summary = {"n_cells": 120, "wins": 12, "win_rate": 0.1, "chance_rate": 0.1}
    path.write_text(json.dumps({"summary": summary, "per_cell": []}))
    assert label_signal_gate(path) == summary
    assert "at or below chance 0.100" in capfd.readouterr().err
    path.write_text(json.dumps({"summary": {**summary, "wins": 40, "win_rate": 0.33}, "per_cell": []}))
    assert label_signal_gate(path)["win_rate"] == 0.33
    assert "cellduality warning" not in capfd.readouterr().err
    assert label_signal_gate(None) is None


def test_label_signal_gate_warns_when_the_reward_is_less_accurate_than_the_model(tmp_path, capfd):
    import json

    from cellduality.training.label_signal import label_signal_gate, policy_summary

    cells = [{"outcome": o, "policy_right": r} for o, r in
             [("win", True), ("loss", True), ("tie", True), ("win", False)]]
    assert policy_summary(cells) == {"policy_accuracy": 0.75, "win_rate_policy_right": 1 / 3,
                                     "win_rate_policy_wrong": 1.0}
    assert policy_summary(cells[:3])["win_rate_policy_wrong"] is None
    path = tmp_path / "wins.json"
    summary = {"n_cells": 4, "wins": 2, "win_rate": 0.5, "chance_rate": 0.1, **policy_summary(cells)}
    path.write_text(json.dumps({"summary": summary, "per_cell": cells}))
    label_signal_gate(path)
    assert "picks the true label on 0.500 of 4 cells, less often than the SFT model already answers it (0.750)" \
        in capfd.readouterr().err
    path.write_text(json.dumps({"summary": {**summary, "policy_accuracy": 0.5}, "per_cell": cells}))
    label_signal_gate(path)
    assert "cellduality warning" not in capfd.readouterr().err


def test_kl_optimum_trades_the_model_against_the_reward():
    from cellduality.training.label_signal import kl_optimum_accuracy

    log_prior = [[-0.1, -2.5], [-0.2, -1.8], [-1.0, -0.5]]  # the model: cell 0 and 1 -> label 0, cell 2 -> label 1
    rewards = [[0.2, 0.4], [0.1, 0.5], [0.9, 0.1]]  # the reward: label 1, label 1, label 0
    gold = [0, 1, 0]
    assert kl_optimum_accuracy(log_prior, rewards, gold, float("inf")) == pytest.approx(1 / 3)  # the model alone
    assert kl_optimum_accuracy(log_prior, rewards, gold, 0.0) == pytest.approx(2 / 3)  # the reward alone
    # beta 0.2: cell 0 keeps the model's label (-0.1 + 1 > -2.5 + 2), cells 1 and 2 follow the reward
    assert kl_optimum_accuracy(log_prior, rewards, gold, 0.2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes"):
        kl_optimum_accuracy(log_prior, rewards[:2], gold, 0.1)


def test_annotation_ceiling_per_cell_candidates_and_its_warning(tmp_path, capfd):
    """kl_optimum_summary scores each cell over its own candidates; the gate warns when the optimum does not beat
    the model's own accuracy, and says nothing of a ceiling where none was measured."""
    import json

    from cellduality.training.label_signal import kl_optimum_summary, label_signal_gate

    cells = [DiagnosticExample(genes=["CD3D"], label="T", candidates=["T", "B", "T"], prompt_id="a"),  # a repeat
             DiagnosticExample(genes=["MS4A1"], label="B", candidates=["NK", "B"], prompt_id="b")]
    per_cell = [{"scores": {"T": 0.1, "B": 0.9}}, {"scores": {"NK": 0.0, "B": 0.8}}]
    prior = [[-0.1, -3.0], [-0.1, -3.0]]  # the model prefers T, then NK
    model_only = kl_optimum_summary(per_cell, cells, prior, float("inf"), policy_accuracy=0.5)
    assert model_only == {"beta": float("inf"), "kl_optimum_accuracy": 0.5, "ceiling_gain": 0.0}
    assert kl_optimum_summary(per_cell, cells, prior, 0.0, 0.5)["kl_optimum_accuracy"] == 0.5  # reward: B, B
    assert kl_optimum_summary(per_cell, cells, prior, 0.1, 0.5)["kl_optimum_accuracy"] == 0.5
    summary = {"n_cells": 2, "win_rate": 0.9, "chance_rate": 0.5, "policy_accuracy": 0.5, "task": "annotation",
               **model_only}
    path = tmp_path / "wins.json"
    path.write_text(json.dumps({"summary": summary, "per_cell": []}))
    label_signal_gate(path)
    assert "ceiling check (annotation): at beta inf the duality reward's KL-optimum is right on 0.500" in \
        capfd.readouterr().err
    path.write_text(json.dumps({"summary": {k: v for k, v in summary.items() if "kl_" not in k}, "per_cell": []}))
    label_signal_gate(path)
    assert "ceiling" not in capfd.readouterr().err
