"""Task tables from a small synthetic cell-sentence table."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from cellduality.errors import CellDualityError
from cellduality.tasks.inpainting import InpaintingSettings, make_mask
from cellduality.tasks.parsing import parse_response
from cellduality.tasks.prompts import CELLPUZZLES_SYSTEM
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import (
    OUTPUT_COLUMNS,
    available_tasks,
    build_task_tables,
    cellpuzzles_batches,
    write_task_tables,
)

TYPES = {"Tcell": ["CD3D", "CD3E", "IL7R"], "Bcell": ["MS4A1", "CD79A", "CD79B"], "NKcell": ["NKG7", "GNLY", "KLRD1"],
         "Mono": ["LYZ", "CD14", "S100A8"]}
FILL = ["ACTB", "B2M", "MALAT1", "TMSB4X", "FTL"]


def identity_table() -> pd.DataFrame:
    rows = []
    i = 0
    for donor in ("d1", "d2"):
        for t, markers in TYPES.items():
            for k in range(6):
                split = "train" if k < 4 else ("test" if k == 4 else "ood")
                rows.append({"cell_id": f"c{i:03d}", "dataset": "toy", "split": split,
                             "sentence": " ".join(markers + FILL), "n_genes": 8, "cell_type": t,
                             "donor": donor, "tissue": "blood", "sex": "female" if donor == "d1" else "male",
                             "age": 40 if donor == "d1" else float("nan"), "disease": "normal"})
                i += 1
    return pd.DataFrame(rows)


def dynamics_table() -> pd.DataFrame:
    rows = []
    for p in range(8):
        split = "train" if p < 6 else "test"
        drug = "DrugA" if p % 2 else "DrugB"
        rows.append({"cell_id": f"pre{p}", "dataset": "dyn", "split": split, "sentence": "ACTB B2M GAPDH MYC",
                     "n_genes": 4, "drug": None, "condition": "control", "pair_id": f"p{p}", "sensitivity": None,
                     "dose": None, "time": "24 h"})
        rows.append({"cell_id": f"post{p}", "dataset": "dyn", "split": split, "sentence": "ACTB CDKN1A GAPDH MDM2",
                     "n_genes": 4, "drug": drug, "condition": "treated", "pair_id": f"p{p}",
                     "sensitivity": "sensitive" if p % 3 else "resistant", "dose": "1 uM", "time": "24 h"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def identity() -> pd.DataFrame:
    return build_task_tables(identity_table(), tables=TaskTableSettings(seed=1),
                             cellpuzzles=CellPuzzlesSettings(batch_size=3))


def test_schema_and_prompts(identity: pd.DataFrame) -> None:
    assert tuple(identity.columns) == OUTPUT_COLUMNS
    assert identity["prompt_id"].is_unique
    assert set(identity["task"]) == {"annotation", "generation", "cellpuzzles"}  # no drug columns
    for raw in identity["prompt"]:
        messages = json.loads(raw)
        assert [m["role"] for m in messages] == ["system", "user"]
    for col in ("candidates", "hidden_genes", "visible_genes", "cell_ids", "metadata"):
        identity[col].map(json.loads)  # all valid JSON


def test_stages_follow_splits_and_rl_cells_are_held_out(identity: pd.DataFrame) -> None:
    assert set(identity.loc[identity.stage == "eval", "split"]) == {"test", "ood"}
    assert set(identity.loc[identity.stage.isin(["sft", "rl"]), "split"]) == {"train"}
    single = identity[identity.task == "annotation"]
    sft_cells = {c for ids in single.loc[single.stage == "sft", "cell_ids"] for c in json.loads(ids)}
    rl_cells = {c for ids in single.loc[single.stage == "rl", "cell_ids"] for c in json.loads(ids)}
    assert sft_cells and rl_cells and not sft_cells & rl_cells
    assert len(sft_cells | rl_cells) == 32  # all train cells, split between SFT and RL


def test_rl_rows_hide_answers_but_keep_labels(identity: pd.DataFrame) -> None:
    rl = identity[identity.stage == "rl"]
    assert set(rl["direction"]) == {"primal"}
    assert (rl["answer"] == "").all()
    assert (rl["label"] != "").all()
    other = identity[identity.stage != "rl"]
    assert (other["answer"] != "").all()


def test_label_not_in_rl_annotation_prompt_without_candidates() -> None:
    table = build_task_tables(identity_table(), ["annotation"], tables=TaskTableSettings(annotation_candidates=False))
    rl = table[table.stage == "rl"]
    assert len(rl) > 0
    for prompt, label in zip(rl["prompt"], rl["label"]):
        assert label not in prompt


def test_annotation_rows_and_masks(identity: pd.DataFrame) -> None:
    sft = identity[(identity.task == "annotation") & (identity.stage == "sft")]
    primal = sft[sft.direction == "primal"].iloc[0]
    dual = sft[(sft.direction == "dual") & (sft.cell_ids == primal.cell_ids)].iloc[0]
    genes = primal.input_sentence.split()
    hidden, visible = json.loads(primal.hidden_genes), json.loads(primal.visible_genes)
    assert len(hidden) == 2 and sorted(hidden + visible) == sorted(genes)  # 8 genes * 0.25
    assert primal.answer == primal.label
    expected = make_mask(genes, primal.prompt_id, 0.25, "random", "1:sft")
    assert tuple(hidden) == expected.hidden
    assert dual.answer == " ".join(hidden)
    user = json.loads(dual.prompt)[1]["content"]
    assert f"Cell type: {primal.label}" in user and f"Number of hidden genes: {len(hidden)}" in user
    assert "Context: The cell is from a" in user
    rl = identity[(identity.task == "annotation") & (identity.stage == "rl")].iloc[0]
    fresh = make_mask(rl.input_sentence.split(), rl.prompt_id, 0.25, "random", "1:rl")
    assert tuple(json.loads(rl.hidden_genes)) == fresh.hidden


def test_generation_rows(identity: pd.DataFrame) -> None:
    gen = identity[(identity.task == "generation") & (identity.direction == "primal") & (identity.stage == "sft")]
    row = gen.iloc[0]
    assert row.answer == row.reference_sentence and len(row.answer.split()) == 8
    assert "top 8 expressed genes" in json.loads(row.prompt)[1]["content"]
    assert json.loads(row.candidates) == sorted(TYPES)


def test_cellpuzzles_batches(identity: pd.DataFrame) -> None:
    puz = identity[(identity.task == "cellpuzzles") & (identity.direction == "primal")]
    assert len(puz) > 0
    for _, row in puz.iterrows():
        gold = row.label.split(" | ")
        cands = json.loads(row.candidates)
        assert len(gold) == 3 == len(set(gold)) and sorted(cands) == sorted(gold)
        messages = json.loads(row.prompt)
        assert messages[0]["content"] == CELLPUZZLES_SYSTEM
        user = messages[1]["content"]
        assert user.startswith("Context: ") and user.endswith("\n".join(cands))
        assert "Cell 3: " in user and "Cell 4: " not in user
        assert len(json.loads(row.hidden_genes)) == 3
    table = identity_table().set_index("cell_id")
    mixed = 0
    for ids, meta in zip(puz["cell_ids"], puz["metadata"]):
        donors = table.loc[json.loads(ids), "donor"]
        if donors.nunique() > 1:  # dataset-level fallback: the context must not claim one donor
            mixed += 1
            assert "donor" not in json.loads(meta) and "sex" not in json.loads(meta)
        else:
            assert json.loads(meta)["donor"] == donors.iloc[0]
    # per stage, each donor's leftovers (< 3 types) are pooled once per dataset
    assert mixed <= puz.stage.nunique() and mixed < len(puz) / 2
    duals = identity[(identity.task == "cellpuzzles") & (identity.direction == "dual")]
    assert len(duals) == 3 * (puz.stage != "rl").sum()
    # candidates are shuffled, not always in answer order
    assert any(json.loads(c) != r.split(" | ") for c, r in zip(puz.candidates, puz.label))


def test_cellpuzzles_falls_back_to_dataset_and_uses_cells_once() -> None:
    recs = [{"cell_type": t, "dataset": "x", "metadata": {"donor": d}} for t, d in
            [("A", "d1"), ("B", "d1"), ("C", "d2"), ("A", "d2"), ("B", "d3"), ("C", "d3"), ("D", "d3")]]
    batches = cellpuzzles_batches(recs, 3, seed=0, stage="sft")
    # d3 has 3 types -> one same-donor batch; leftovers (d1: A, B; d2: C, A; d3: one) pool by dataset
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert all(len({recs[i]["cell_type"] for i in b}) == 3 for b in batches)
    assert len(batches) == 2
    assert batches == cellpuzzles_batches(recs, 3, seed=0, stage="sft")


def test_deterministic_and_order_independent() -> None:
    puzzles = CellPuzzlesSettings(batch_size=3)
    a = build_task_tables(identity_table(), tables=TaskTableSettings(seed=5), cellpuzzles=puzzles)
    b = build_task_tables(identity_table().sample(frac=1.0, random_state=3), tables=TaskTableSettings(seed=5),
                          cellpuzzles=puzzles)
    pd.testing.assert_frame_equal(a, b)
    c = build_task_tables(identity_table(), tables=TaskTableSettings(seed=6), cellpuzzles=puzzles)
    assert not a.equals(c)


def test_limits_and_top_k() -> None:
    limits = TaskTableSettings(max_cells_sft=3, max_cells_rl=2, max_cells_eval=1)
    table = build_task_tables(identity_table(), ["annotation"], tables=limits, top_k=4)
    primal = table[table.direction == "primal"]
    counts = Counter(zip(primal.stage, primal.split))
    assert counts == {("sft", "train"): 3, ("rl", "train"): 2, ("eval", "test"): 1, ("eval", "ood"): 1}
    assert all(len(s.split()) == 4 for s in primal.input_sentence)


def test_dynamics_tasks() -> None:
    table = build_task_tables(dynamics_table(), tables=TaskTableSettings(rl_fraction=0.0))
    assert set(table.task) == {"sensitivity", "perturbation"}
    pert = table[(table.task == "perturbation") & (table.stage == "sft")]
    primal = pert[pert.direction == "primal"].iloc[0]
    assert primal.input_sentence == "ACTB B2M GAPDH MYC" and primal.answer == "ACTB CDKN1A GAPDH MDM2"
    assert json.loads(primal.candidates) == ["DrugA", "DrugB"]
    assert primal.label in json.loads(primal.prompt)[1]["content"]
    dual = pert[pert.direction == "dual"].iloc[0]
    dual_user = json.loads(dual.prompt)[1]["content"]
    assert "Drug:" not in dual_user and "treated with" not in dual_user and "1 uM" in dual_user
    assert dual.answer == dual.label
    sens = table[(table.task == "sensitivity") & (table.direction == "primal")]
    assert len(sens) == 8 and set(sens.answer) == {"sensitive", "resistant"}  # treated cells only
    assert json.loads(sens.iloc[0].candidates) == ["resistant", "sensitive"]
    sens_dual = table[(table.task == "sensitivity") & (table.direction == "dual")].iloc[0]
    assert "Drug response: " in json.loads(sens_dual.prompt)[1]["content"]
    assert parse_response(f"<think>x</think><answer>{sens_dual.answer}</answer>").format_ok


def test_available_tasks() -> None:
    assert available_tasks(["cell_type"]) == ["annotation", "generation", "cellpuzzles"]
    assert available_tasks(["drug", "sensitivity"]) == ["sensitivity"]


def test_bad_input() -> None:
    table = identity_table()
    with pytest.raises(CellDualityError, match="sentence"):
        build_task_tables(table.drop(columns=["sentence"]))
    bad = table.copy()
    bad.loc[0, "split"] = "validation"
    with pytest.raises(CellDualityError, match="validation"):
        build_task_tables(bad)
    dup = pd.concat([table, table.iloc[[0]]])
    with pytest.raises(CellDualityError, match="repeats cell_id"):
        build_task_tables(dup)
    with pytest.raises(CellDualityError, match="unknown task 'toy'; known tasks: annotation"):
        build_task_tables(table, ["toy"])
    with pytest.raises(CellDualityError, match="cell_sentence.top_k must be positive; got 0"):
        build_task_tables(table, top_k=0)


def test_sections_from_pipeline_config() -> None:
    config = {
        "cell_sentence": {"top_k": 32, "chunk_size": 10},
        "inpainting": {"hidden_fraction": 0.5, "strategy": "tail"},
        "cellpuzzles": {"batch_size": 4},
        "task_tables": {"seed": 9, "max_cells_rl": 100},
        "rewards": {"format_penalty": -1.0},
    }
    inpainting = InpaintingSettings.from_config(config)
    assert (inpainting.hidden_fraction, inpainting.strategy, inpainting.markers) == (0.5, "tail", None)
    assert CellPuzzlesSettings.from_config(config) == CellPuzzlesSettings(batch_size=4)
    assert TaskTableSettings.from_config(config) == TaskTableSettings(seed=9, max_cells_rl=100)
    assert TaskTableSettings.from_config({}) == TaskTableSettings()


def test_write_parquet_roundtrip(tmp_path) -> None:
    cells = tmp_path / "cells.parquet"
    identity_table().to_parquet(cells, index=False)
    out = tmp_path / "sub" / "tasks.parquet"
    written = write_task_tables(cells, out, ["annotation"])
    pd.testing.assert_frame_equal(pd.read_parquet(out), written)


def test_configured_tasks_fail_early_with_one_line(tmp_path) -> None:
    from cellduality.tasks.tables import check_task_inputs

    identity = identity_table()

    one_type = identity.assign(cell_type="Tcell")
    with pytest.raises(CellDualityError, match="annotation needs at least 2 cell_type classes .* found 1 \\(Tcell\\)"):
        write_task_tables(one_type, tmp_path / "t.parquet", ["annotation"], required=["annotation"])
    assert not (tmp_path / "t.parquet").exists()
    check_task_inputs(one_type, ["generation"])  # one type is enough to generate cells of it
    with pytest.raises(CellDualityError, match="task sensitivity needs column\\(s\\) \\['drug', 'sensitivity'\\]"):
        check_task_inputs(identity, ["sensitivity"])
    with pytest.raises(CellDualityError, match="no cell has a cell_type"):
        check_task_inputs(identity.assign(cell_type=None), ["annotation"])
    no_test = identity[identity["split"] == "train"]
    with pytest.raises(CellDualityError, match="task annotation has no eval prompts"):
        write_task_tables(no_test, tmp_path / "t.parquet", ["annotation"], required=["annotation"])
