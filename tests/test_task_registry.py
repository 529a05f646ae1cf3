"""The task registry: built-in entries, lookups, and a toy task picked up by every consumer unchanged."""

from __future__ import annotations

import pandas as pd
import pytest

from cellduality.errors import CellDualityError
from cellduality.evaluation.predict import parse_prediction
from cellduality.evaluation.score import confusion_matrices, score_predictions
from cellduality.tasks import prompts, rollouts
from cellduality.tasks.prompts import format_answer, join_genes
from cellduality.tasks.registry import (
    ANSWER_KINDS,
    METRICS,
    TASK_REGISTRY,
    TaskSpec,
    get_task,
    register_task,
    task_names,
    tasks_with,
    unregister_task,
)
from cellduality.tasks.rewards import RewardSettings, response_label
from cellduality.tasks.rows import prompt_id
from cellduality.tasks.schema import decode_rows, read_task_table
from cellduality.tasks.settings import TaskTableSettings
from cellduality.tasks.tables import available_tasks, build_task_tables, write_task_tables
from cellduality.teacher.filtering import FilterSettings, answer_kind, judge
from cellduality.training.duality import TaskReward

BUILTIN = ("annotation", "generation", "sensitivity", "perturbation", "cellpuzzles")


def test_builtin_tasks_are_registered_in_order_with_consistent_facts():
    assert task_names()[: len(BUILTIN)] == BUILTIN
    for name in BUILTIN:
        spec = get_task(name)
        assert spec.name == name and spec.primal_kind in ANSWER_KINDS and spec.dual_kind in ANSWER_KINDS
        assert spec.metric in METRICS and spec.label_column
        assert spec.duals and spec.duality_reward and spec.oracle_reward  # every built-in task supports GRPO
    assert [answer_kind(t, d) for t in BUILTIN for d in ("primal", "dual")] == [
        "label", "genes", "genes", "label", "label", "genes", "genes", "label", "assignment", "genes"]
    assert tasks_with(metric="classification")[:2] == ("annotation", "sensitivity")
    assert get_task("sensitivity").baseline_onehot == ("drug",)


def test_builtin_teacher_handlers_exist():
    from cellduality.teacher.markers.teacher import MarkersTeacher

    for name in BUILTIN:
        assert all(MarkersTeacher.handles(h) for h in get_task(name).teacher), name


def test_unknown_task_is_one_line_listing_the_known_ones():
    with pytest.raises(CellDualityError) as err:
        get_task("anotation")
    message = str(err.value)
    assert "\n" not in message and "'anotation'" in message and all(t in message for t in BUILTIN)
    with pytest.raises(CellDualityError, match="already registered"):
        register_task(get_task("annotation"))
    with pytest.raises(CellDualityError, match="primal_kind"):
        TaskSpec(name="x", columns=(), label_column="y", primal_kind="text", dual_kind="genes",
                 metric="classification", build_rows=lambda *a: None, primal_prompt=prompts.annotation_prompt,
                 dual_prompt=prompts.annotation_dual_prompt)


# ---------------------------------------------------------------- a toy task, declared only here

SEXES_PROMPT = "Cell: {genes}\n\nIs this cell from a female or a male donor? Choose from:\n{candidates}"


def sex_prompt(genes, metadata, candidates):
    user = SEXES_PROMPT.format(genes=join_genes(genes), candidates="\n".join(candidates))
    context = prompts.context_sentence(prompts.without(metadata, "sex"))
    if context:
        user = f"Context: {context}\n\n{user}"
    system = "You are an expert in single-cell biology. " + prompts.FORMAT_INSTRUCTION
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def sex_dual_prompt(visible, sex, n_hidden, metadata):
    return prompts.inpainting_prompt([f"Donor sex: {sex}"], visible, n_hidden, prompts.without(metadata, "sex"))


def sex_rows(ctx, recs, stage, specs):
    (spec,) = specs
    sexes = ctx.label_set("sex")
    masker = ctx.masker(stage)
    for rec in recs:
        if rec["sex"] is None:
            continue
        ds, genes, meta = rec["dataset"], rec["genes"], rec["metadata"]
        pid = prompt_id(spec.name, "primal", stage, ds, rec["cell_id"])
        mask = masker.mask(genes, pid)
        common = dict(task=spec.name, stage=stage, rec=rec, label=rec["sex"], candidates=sexes[ds], mask=mask)
        ctx.out.add(direction="primal", prompt_id=pid, prompt=spec.primal_prompt(genes, meta, sexes[ds]),
                    answer=rec["sex"], **common)
        if stage != "rl":
            ctx.out.add(direction="dual", prompt_id=prompt_id(spec.name, "dual", stage, ds, rec["cell_id"]),
                        prompt=spec.dual_prompt(mask.visible, rec["sex"], mask.n_hidden, meta),
                        answer=join_genes(mask.hidden), **common)


def sex_duals(r):
    sex = response_label(r.parsed, r.candidates or None)
    return None if sex is None else [sex_dual_prompt(r.visible, sex, len(r.hidden), r.metadata)]


@pytest.fixture
def toy_sex():
    spec = register_task(TaskSpec(
        name="toy_sex", columns=("sex",), label_column="sex", primal_kind="label", dual_kind="genes",
        metric="classification", build_rows=sex_rows, primal_prompt=sex_prompt, dual_prompt=sex_dual_prompt,
        duals=sex_duals, duality_reward=rollouts.inpainting_duality, oracle_reward=rollouts.classification_oracle,
    ))
    yield spec
    unregister_task("toy_sex")
    assert "toy_sex" not in TASK_REGISTRY


def cells() -> pd.DataFrame:
    genes = ["XIST", "RPS4Y1", "CD3E", "MS4A1", "LYZ", "ACTB", "B2M", "FTL"]
    rows = []
    for i in range(24):
        sex = "female" if i % 2 else "male"
        sentence = " ".join(["XIST" if sex == "female" else "RPS4Y1"] + genes[2 + i % 4:] + genes[2: 2 + i % 4])
        rows.append({"cell_id": f"c{i:02d}", "dataset": "toy", "split": ("train", "train", "test")[i % 3],
                     "sentence": sentence, "sex": sex, "tissue": "blood", "cell_type": "T" if i % 4 else "B"})
    return pd.DataFrame(rows)


def test_toy_task_gets_task_table_rows(toy_sex, tmp_path):
    assert "toy_sex" in task_names() and available_tasks(["sex"]) == ["toy_sex"]
    path = tmp_path / "toy.parquet"
    table = write_task_tables(cells(), path, ["toy_sex"], tables=TaskTableSettings(seed=2))
    rows = read_task_table(path)
    assert set(table["task"]) == {"toy_sex"} and len(rows) == len(table) > 0
    primal = [r for r in rows if r.direction == "primal" and r.stage != "rl"]
    dual = [r for r in rows if r.direction == "dual"]
    assert primal and dual and not any(r.stage == "rl" for r in dual)
    for r in primal:
        assert r.candidates == ["female", "male"] and r.answer == r.label
        assert "female or a male" in r.prompt[1]["content"] and "The cell is from a" not in r.prompt[1]["content"]
        assert r.metadata["sex"] == r.label and r.hidden_genes and r.visible_genes and len(r.cell_ids) == 1
    assert all("Donor sex: " in r.prompt[1]["content"] for r in dual)
    # the built-in tasks of the same table are unaffected and still built alongside
    both = build_task_tables(cells(), ["annotation", "toy_sex"], tables=TaskTableSettings(seed=2))
    assert list(dict.fromkeys(both["task"])) == ["annotation", "toy_sex"]
    alone = build_task_tables(cells(), ["annotation"], tables=TaskTableSettings(seed=2))
    pd.testing.assert_frame_equal(both[both.task == "annotation"].reset_index(drop=True), alone)


def test_toy_task_is_parsed_scored_and_filtered(toy_sex):
    table = build_task_tables(cells(), ["toy_sex"], tables=TaskTableSettings(seed=2))
    assert parse_prediction("toy_sex", format_answer("XIST is high.", "Female"), ["female", "male"]) == (True, "female")
    assert parse_prediction("toy_sex", "no tags", ["female", "male"]) == (False, None)

    evaluated = table[(table.stage == "eval") & (table.direction == "primal")].reset_index(drop=True)
    pred = evaluated[["prompt_id", "task", "dataset", "split", "label", "candidates", "reference_sentence"]].copy()
    pred.insert(0, "model", "m")
    pred["prediction"] = ["female"] * len(pred)
    scores = score_predictions(pred, [], {})
    by_metric = dict(zip(scores["metric"], scores["value"]))
    assert set(scores["task"]) == {"toy_sex"}
    assert by_metric["accuracy"] == pytest.approx((pred["label"] == "female").mean())
    assert ("m", "toy_sex", "toy") in confusion_matrices(pred)

    row = next(r for r in decode_rows(table) if r.direction == "primal" and r.stage == "sft")
    verdict = judge(row, format_answer("XIST.", row.label), FilterSettings())
    wrong = judge(row, format_answer("RPS4Y1.", "female" if row.label == "male" else "male"), FilterSettings())
    assert verdict.passed and not wrong.passed and wrong.reason.startswith("wrong label")
    dual = next(r for r in decode_rows(table) if r.direction == "dual")
    assert judge(dual, format_answer("", dual.answer), FilterSettings()).score == 1.0


def test_toy_task_gets_grpo_rewards(toy_sex):
    table = build_task_tables(cells(), ["toy_sex"], tables=TaskTableSettings(seed=2))
    rl = table[table.stage == "rl"].head(2)
    columns = {c: rl[c].tolist() for c in ("label", "candidates", "hidden_genes", "visible_genes", "metadata")}
    completions = [format_answer("", label) for label in rl["label"]]
    oracle = TaskReward(RewardSettings(mode="oracle"))
    assert oracle(prompts=[None] * 2, completions=completions, task=["toy_sex"] * 2, **columns) == [1.0, 1.0]
    seen = []
    duality = TaskReward(RewardSettings(mode="duality"), lambda convs: seen.extend(convs) or ["x"] * len(convs))
    assert duality(prompts=[None] * 2, completions=completions, task=["toy_sex"] * 2, **columns) == [0.0, 0.0]
    assert all("Donor sex: " in c[1]["content"] for c in seen)


def test_toy_task_is_gone_after_the_fixture():
    assert "toy_sex" not in task_names()
    with pytest.raises(CellDualityError, match="unknown task 'toy_sex'"):
        get_task("toy_sex")
