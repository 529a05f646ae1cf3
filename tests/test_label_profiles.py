"""Marker knowledge learned from the training cells: label profiles, the markers teacher's data mode, the
``inpainting.markers: data`` mask set and extra CellPuzzles rounds."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from cellduality.data.label_profiles import label_profiles
from cellduality.errors import CellDualityError
from cellduality.tasks import prompts as P
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.parsing import parse_response
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import build_task_tables, cells_of_stage, data_markers
from cellduality.teacher.markers.knowledge import Knowledge
from cellduality.teacher.markers.teacher import MarkersTeacher
from cellduality.teacher.sft_data import sft_cell_profiles

# two made-up tissue cell types the shipped immune tables know nothing about
ASTRO = "GFAP AQP4 SLC1A3 ALDOC ACTB FTL TMSB4X".split()
NEURON = "SNAP25 SYT1 STMN2 GAP43 ACTB FTL TMSB4X".split()


def brain_cells(n: int = 40) -> pd.DataFrame:
    rows = []
    for i in range(n):
        genes = ASTRO if i % 2 else NEURON
        rows.append({"cell_id": f"c{i:03d}", "dataset": "brain", "split": "train" if i < n - 8 else "test",
                     "sentence": " ".join(genes[i % 3:] + genes[: i % 3]), "n_genes": len(genes),
                     "cell_type": "Astrocyte X" if i % 2 else "Neuron Y"})
    return pd.DataFrame(rows)


def test_profiles_find_discriminating_and_typical_genes():
    profiles = label_profiles([ASTRO, NEURON, ASTRO, " ".join(NEURON), ASTRO], ["A", "N", "A", "N", float("nan")])
    assert set(profiles.labels) == {"A", "N"}  # an empty label counts for common genes and vocabulary only
    a = profiles.labels["A"]
    assert a.n_cells == 2 and set(a.markers) == {"GFAP", "AQP4", "SLC1A3", "ALDOC"}
    assert a.typical[0] == "GFAP" and "SNAP25" not in a.typical  # absent genes are not typical
    assert set(profiles.labels["N"].markers) == {"SNAP25", "SYT1", "STMN2", "GAP43"}
    assert profiles.vocabulary == frozenset(ASTRO + NEURON)
    assert {"ACTB", "FTL"} <= set(profiles.common[:3]) and "TMSB4X" in profiles.common  # in every cell
    assert profiles.marker_union() == frozenset(ASTRO[:4] + NEURON[:4])
    with pytest.raises(CellDualityError, match="2 sentences but 1 labels"):
        label_profiles([ASTRO, NEURON], ["A"])


def test_teacher_learns_unknown_labels_and_writes_only_measured_genes():
    cells = brain_cells()
    data = sft_cell_profiles(cells)
    assert set(data.labels) == {"Astrocyte X", "Neuron Y"}
    shipped = MarkersTeacher(Knowledge.load())
    taught = MarkersTeacher(Knowledge.load().with_data(data, "data"))
    msgs = P.annotation_prompt(ASTRO, {}, ["Neuron Y", "Astrocyte X"])
    full = taught.respond(msgs, "p", 0, 0.0)
    assert parse_response(full).answer == "Astrocyte X"
    assert "no marker reference" not in full and "no marker reference" in shipped.respond(msgs, "p", 0, 0.0)
    vocabulary = set(ASTRO + NEURON)
    for index in range(5):
        gen = parse_response(taught.respond(P.generation_prompt("Neuron Y", 6, {}), "g", index, 0.7)).answer.split()
        assert gen and set(gen) <= vocabulary and len(set(gen) & set(NEURON[:4])) >= 2
        hidden = parse_response(taught.respond(P.annotation_dual_prompt(ASTRO[4:], "Astrocyte X", 3, {}), "d",
                                               index, 0.7)).answer.split()
        assert set(hidden) <= vocabulary and not set(hidden) & set(ASTRO[4:])
    # the knowledge digest names the data, so response caches never mix teachers of different cells
    other = sft_cell_profiles(brain_cells(20))
    assert Knowledge.load().with_data(data).digest != Knowledge.load().with_data(other).digest
    with pytest.raises(CellDualityError, match="teacher.knowledge"):
        Knowledge.load().with_data(data, "everything")


def test_teacher_profiles_use_sft_cells_only():
    cells = brain_cells()
    tables = TaskTableSettings(rl_fraction=0.5)
    sft = cells_of_stage(cells, "sft", tables)
    assert 0 < len(sft) < (cells["split"] == "train").sum() and set(sft["split"]) == {"train"}
    relabelled = cells.copy()
    outside = ~relabelled["cell_id"].isin(sft["cell_id"])
    relabelled.loc[outside, "cell_type"] = "Secret"  # RL and test labels never reach the teacher
    assert sft_cell_profiles(relabelled, tables) == sft_cell_profiles(cells, tables)


def test_data_marker_mask_is_one_set_learned_from_sft_cells():
    cells = brain_cells()
    inpainting = InpaintingSettings(strategy="markers", markers="data", hidden_fraction=0.3)
    table = build_task_tables(cells, ["annotation"], inpainting=inpainting)
    marker_set = set(ASTRO[:4] + NEURON[:4])
    for row in table[table["direction"] == "primal"].itertuples():
        hidden = json.loads(row.hidden_genes)
        assert hidden and set(hidden) <= marker_set  # 2 hidden of 7: always marker genes, whatever the label
    records = [{"stage": "sft", "genes": ASTRO, "cell_type": "A"}, {"stage": "rl", "genes": NEURON, "cell_type": "N"}]
    assert set(data_markers(records)) == set(ASTRO)  # RL cells' labels are not used
    assert InpaintingSettings.from_params({"markers": "data", "strategy": "markers"}).markers == "data"


def test_cellpuzzles_train_rounds_add_puzzles_but_test_cells_form_one_pass():
    cells = brain_cells(80)
    one = build_task_tables(cells, ["cellpuzzles"], cellpuzzles=CellPuzzlesSettings(batch_size=2))
    four = build_task_tables(cells, ["cellpuzzles"], cellpuzzles=CellPuzzlesSettings(batch_size=2, train_rounds=4))
    primal = lambda t, stage: t[(t["direction"] == "primal") & (t["stage"] == stage)]
    for stage in ("sft", "rl"):
        assert len(primal(four, stage)) > 2 * len(primal(one, stage))
        assert primal(four, stage)["prompt_id"].is_unique
        batches = [frozenset(json.loads(ids)) for ids in primal(four, stage)["cell_ids"]]
        assert len(set(batches)) == len(batches)
    assert primal(four, "eval").reset_index(drop=True).equals(primal(one, "eval").reset_index(drop=True))
    assert set(primal(one, "sft")["prompt_id"]) <= set(primal(four, "sft")["prompt_id"])  # round 0 unchanged
    dual_cells = [json.loads(ids)[0] for ids in four.loc[(four["direction"] == "dual") & (four["stage"] == "sft"),
                                                         "cell_ids"]]
    puzzle_cells = set().union(*(json.loads(ids) for ids in primal(four, "sft")["cell_ids"]))
    assert sorted(dual_cells) == sorted(puzzle_cells)  # one inpainting dual per cell, not one per puzzle
    with pytest.raises(CellDualityError, match="train_rounds"):
        CellPuzzlesSettings(train_rounds=0)


def test_cellpuzzles_duals_per_cell_gives_each_cell_that_many_masks():
    cells = brain_cells(80)
    settings = CellPuzzlesSettings(batch_size=2, train_rounds=4, duals_per_cell=3)
    table = build_task_tables(cells, ["cellpuzzles"], cellpuzzles=settings)
    duals = table[(table["direction"] == "dual") & (table["stage"] == "sft")]
    per_cell = duals.groupby(duals["cell_ids"].map(lambda ids: json.loads(ids)[0]))
    primal = table[(table["direction"] == "primal") & (table["stage"] == "sft")]
    puzzles_per_cell = Counter(cell for ids in primal["cell_ids"] for cell in json.loads(ids))
    assert per_cell.size().to_dict() == {cell: min(n, 3) for cell, n in puzzles_per_cell.items()}
    assert (per_cell.size() == 3).mean() > 0.5
    puzzles = duals["prompt_id"].str.rsplit("#", n=1).str[0]
    assert all(puzzles[group.index].is_unique for _, group in per_cell)  # each from another puzzle, own mask
    assert duals["answer"].nunique() > len(per_cell)
    none = build_task_tables(cells, ["cellpuzzles"], cellpuzzles=settings.replace(duals_per_cell=0))
    assert not ((none["direction"] == "dual").any())
    assert CellPuzzlesSettings.from_config({"cellpuzzles": {"duals_per_cell": 2}}).duals_per_cell == 2
    with pytest.raises(CellDualityError, match="duals_per_cell"):
        CellPuzzlesSettings(duals_per_cell=-1)


def test_cellpuzzles_eval_rounds_evaluate_more_test_cells_in_new_puzzles():
    cells = brain_cells(80)
    puzzles = CellPuzzlesSettings(batch_size=2)
    one = build_task_tables(cells, ["cellpuzzles"], cellpuzzles=puzzles)
    four = build_task_tables(cells, ["cellpuzzles"], cellpuzzles=puzzles.replace(eval_rounds=4))
    primal = lambda t, stage: t[(t["direction"] == "primal") & (t["stage"] == stage)]
    assert len(primal(four, "eval")) > 2 * len(primal(one, "eval"))
    assert primal(four, "eval")["prompt_id"].is_unique
    batches = [frozenset(json.loads(ids)) for ids in primal(four, "eval")["cell_ids"]]
    assert len(set(batches)) == len(batches)
    test_cells = lambda t: set().union(*(json.loads(ids) for ids in primal(t, "eval")["cell_ids"]))
    assert test_cells(one) <= test_cells(four)
    assert test_cells(four).isdisjoint(set().union(*(json.loads(i) for i in primal(four, "sft")["cell_ids"])))
    for stage in ("sft", "rl"):  # only the test puzzles change
        assert primal(four, stage).reset_index(drop=True).equals(primal(one, stage).reset_index(drop=True))
    with pytest.raises(CellDualityError, match="eval_rounds"):
        CellPuzzlesSettings(eval_rounds=0)
