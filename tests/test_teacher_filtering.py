"""Rejection sampling, rank-aware filtering, dual linking and the SFT dataset on crafted teacher outputs."""

import json

import pandas as pd
import pytest
from conftest import make_task_row

from cellduality.errors import CellDualityError
from cellduality.tasks.prompts import format_answer
from cellduality.tasks.settings import TaskTableSettings
from cellduality.tasks.tables import build_task_tables
from cellduality.teacher.filtering import FilterSettings, judge, link_duals, primal_id_of, select
from cellduality.teacher.providers import Completion, TeacherProvider
from cellduality.teacher.runner import TeacherSettings
from cellduality.teacher.sft_data import SFT_COLUMNS, build_sft_dataset, write_sft_dataset

TYPES = ["CD56+ NK", "CD19+ B", "CD14+ Monocyte"]
CELLS = {"CD19+ B": "CD79A MS4A1 CD74 HLA-DRA CD37 CD52 FTL TMSB4X", "CD56+ NK": "NKG7 GNLY GZMB PRF1 CTSW FTL CD7 B2M"}
ALL_GENES = " ".join(dict.fromkeys(" ".join(CELLS.values()).split()))


def row(task, direction, answer, candidates=TYPES, pid="t:primal:sft:d:c1"):
    return make_task_row(task=task, direction=direction, answer=answer, candidates=list(candidates), prompt_id=pid)


def ok(answer: str) -> str:
    return format_answer("Because of the markers.", answer)


@pytest.mark.parametrize("text, passed, reason", [
    (ok("CD56+ NK"), True, "accepted"),
    (ok("cd56+  nk."), True, "accepted"),  # normalised match
    (ok("CD19+ B"), False, "wrong label"),
    (ok("Hepatocyte"), False, "not a candidate"),
    ("CD56+ NK", False, "format"),
    ("<think>x</think><answer>CD56+ NK", False, "format"),
])
def test_rejection_sampling_of_labels(text, passed, reason):
    verdict = judge(row("annotation", "primal", "CD56+ NK"), text, FilterSettings())
    assert verdict.passed is passed and verdict.reason.startswith(reason) and verdict.score == float(passed)


def test_strict_format_option():
    text = "<think>x</think> <answer>CD56+ NK</answer>"  # a space instead of the newline
    r = row("annotation", "primal", "CD56+ NK")
    assert judge(r, text, FilterSettings()).passed
    assert not judge(r, text, FilterSettings(strict_format=True)).passed


def test_categorical_duals_are_exact():
    r = row("perturbation", "dual", "LPS", ["LPS", "cisplatin"])
    assert judge(r, ok("LPS"), FilterSettings()).passed
    assert not judge(r, ok("cisplatin"), FilterSettings()).passed
    assert judge(row("generation", "dual", "CD19+ B"), ok("CD19+ B"), FilterSettings()).passed


def test_rank_aware_filtering_of_gene_lists():
    ref = "CD3D IL32 LTB CCL5 NKG7 GZMA"
    r = row("generation", "primal", ref)
    near = judge(r, ok("CD3D IL32 LTB CCL5 GNLY GZMA"), FilterSettings(rwjs_threshold=0.5))
    reordered = judge(r, ok("GZMA NKG7 CCL5 LTB IL32 CD3D"), FilterSettings(rwjs_threshold=0.5))
    far = judge(r, ok("MS4A1 CD79A CD74 HLA-DRA CD37 CD52"), FilterSettings(rwjs_threshold=0.05))
    assert near.passed and near.score > 0.8
    assert not reordered.passed and reordered.score < 0.5  # same genes, wrong ranks: rank-aware
    assert not far.passed and far.score == 0.0 and far.reason.startswith("rwjs 0.000 <")
    assert judge(r, ok("cd3d, il32; ltb 1. CCL5"), FilterSettings(rwjs_threshold=0.5)).passed  # parsed gene list


def test_thresholds_per_direction_and_task():
    s = FilterSettings(rwjs_threshold=0.3, dual_rwjs_threshold=0.1,
                       per_task={"perturbation": {"rwjs_threshold": 0.6}, "sensitivity": {"dual_rwjs_threshold": 0.02}})
    assert s.threshold("primal", "generation") == 0.3 and s.threshold("dual", "annotation") == 0.1
    assert s.threshold("primal", "perturbation") == 0.6 and s.threshold("dual", "perturbation") == 0.1
    assert s.threshold("dual", "sensitivity") == 0.02
    assert FilterSettings(rwjs_threshold=0.3).threshold("dual", "annotation") == 0.3
    with pytest.raises(CellDualityError, match="unknown key"):
        FilterSettings.from_params({"per_task": {"annotation": {"threshold": 1}}})
    with pytest.raises(CellDualityError, match="unknown filtering setting"):
        FilterSettings.from_params({"rwjs_treshold": 1})


def test_cellpuzzles_needs_the_whole_batch_right():
    gold = "CD56+ NK | CD19+ B | CD14+ Monocyte"
    r = row("cellpuzzles", "primal", gold)
    assert judge(r, ok(gold), FilterSettings()).passed
    swapped = judge(r, ok("CD19+ B | CD56+ NK | CD14+ Monocyte"), FilterSettings())
    assert not swapped.passed and swapped.score == pytest.approx(1 / 3) and "1/3" in swapped.reason
    repeated = judge(r, ok("CD56+ NK | CD56+ NK | CD14+ Monocyte"), FilterSettings())
    assert not repeated.passed and "more than one" in repeated.reason


def test_primal_ids_of_dual_rows():
    assert primal_id_of("annotation:dual:sft:pbmc:AAAC-1") == "annotation:primal:sft:pbmc:AAAC-1"
    assert primal_id_of("cellpuzzles:primal:sft:pbmc:0a1b#3") == "cellpuzzles:primal:sft:pbmc:0a1b"
    primal = pd.DataFrame({"prompt_id": ["x:primal:sft:d:c1", "odd-id"], "cell_ids": ['["c1"]', '["c2"]']})
    dual = pd.DataFrame({"prompt_id": ["x:dual:sft:d:c1", "other"], "cell_ids": ['["c1"]', '["c2"]']})
    assert link_duals(primal, dual).tolist() == ["x:primal:sft:d:c1", "odd-id"]  # second by shared cell id


def test_dedupe_and_cap_per_prompt():
    frame = pd.DataFrame({"prompt_id": ["a"] * 4 + ["b"], "sample_index": [0, 1, 2, 3, 0],
                          "completion": ["x", "x", "y", "z", "x"], "passed": [True, True, True, False, True],
                          "reason": ["accepted"] * 3 + ["wrong label 'q'", "accepted"]})
    kept = select(frame.copy(), FilterSettings())
    assert kept.tolist() == [True, False, True, False, True]
    capped = frame.copy()
    assert select(capped, FilterSettings(max_accepted_per_prompt=1)).tolist() == [True, False, False, False, True]
    assert capped.loc[2, "reason"].startswith("over max_accepted_per_prompt")


class ScriptedProvider(TeacherProvider):
    """Primal: sample 0 answers CD19+ B, sample 1 CD56+ NK; dual: sample 0 overlaps the hidden genes."""

    name = "scripted"
    max_samples_per_request = 8

    def __init__(self) -> None:
        super().__init__("scripted-1")
        self.seen: list[str] = []

    async def generate(self, request, params):
        self.seen.append(request.prompt_id)
        out = []
        for i in request.sample_indices:
            if ":primal:" in request.prompt_id:
                answer = "CD19+ B" if i == 0 else "CD56+ NK"  # sample 0 right for B cells only
            else:
                answer = "HIDDEN" if i else ALL_GENES  # sample 0 contains every gene of both cell types
            out.append(Completion(format_answer(f"reasoning {i}", answer), 10, 5, "stop"))
        return out


def identity_cells() -> pd.DataFrame:
    labels = ["CD19+ B", "CD56+ NK"] * 4
    return pd.DataFrame({"cell_id": [f"c{i}" for i in range(8)], "dataset": "d", "split": "train",
                         "sentence": [CELLS[t] for t in labels], "cell_type": labels})


def test_sft_dataset_links_duals_to_accepted_primal_prompts(tmp_path):
    table = build_task_tables(identity_cells(), ["annotation"], tables=TaskTableSettings(rl_fraction=0.0))
    providers: list[ScriptedProvider] = []

    def factory() -> ScriptedProvider:
        providers.append(ScriptedProvider())
        return providers[-1]

    settings = TeacherSettings(n_samples=2, progress=False)
    out, stats = build_sft_dataset(table, settings, FilterSettings(dual_rwjs_threshold=0.01),
                                   cache_path=tmp_path / "c.sqlite", provider_factory=factory, label="annotation/d")
    assert list(out.columns) == list(SFT_COLUMNS)
    primal, dual = out[out["direction"] == "primal"], out[out["direction"] == "dual"]
    assert len(primal) == 16 and primal["accepted"].sum() == 8  # each prompt: one of two samples right
    b_cells = set(table.loc[(table["direction"] == "primal") & (table["label"] == "CD19+ B"), "prompt_id"])
    nk_cells = set(table.loc[(table["direction"] == "primal") & (table["label"] == "CD56+ NK"), "prompt_id"])
    assert set(primal.loc[primal["accepted"], "prompt_id"]) == b_cells | nk_cells
    assert set(dual["primal_prompt_id"]) == b_cells | nk_cells and len(dual) == 16
    assert stats["primal"]["acceptance_rate"] == 0.5 and stats["primal"]["prompt_coverage"] == 1.0
    first_hidden = dual["sample_index"] == 0
    assert (dual.loc[first_hidden, "score"] > 0).all() and not dual.loc[~first_hidden, "passed"].any()
    assert stats["dual"]["from_accepted_primal_prompts"] == 8
    # the 8 primal prompts are 2 distinct texts (identical cells): sampled once each, shared by the others
    assert stats["usage"]["new_samples"] == 2 * 2 + 16 and stats["usage"]["cached_samples"] == 12
    # a rerun is served from the cache: nothing is requested again
    out2, stats2 = build_sft_dataset(table, settings, FilterSettings(dual_rwjs_threshold=0.01),
                                     cache_path=tmp_path / "c.sqlite", provider_factory=factory)
    assert providers[-1].seen == [] and providers[-2].seen == [] and stats2["usage"]["cached_samples"] == 32
    assert out2["completion"].tolist() == out["completion"].tolist()


def test_duals_wait_for_accepted_primal(tmp_path):
    table = build_task_tables(identity_cells(), ["annotation"], tables=TaskTableSettings(rl_fraction=0.0))
    only_nk_wrong = table[table["label"] == "CD56+ NK"]

    class AlwaysB(ScriptedProvider):
        async def generate(self, request, params):
            return [Completion(format_answer("r", "CD19+ B"), 1, 1) for _ in request.sample_indices]

    out, stats = build_sft_dataset(only_nk_wrong, TeacherSettings(n_samples=2, progress=False), FilterSettings(),
                                   provider_factory=AlwaysB)
    assert not out["accepted"].any() and (out["direction"] == "primal").all()
    assert stats["dual"]["prompts"] == 0 and stats["primal"]["acceptance_rate"] == 0.0


def test_write_sft_dataset_outputs(tmp_path):
    table = build_task_tables(identity_cells(), ["generation"], tables=TaskTableSettings(rl_fraction=0.0))
    path = tmp_path / "task.parquet"
    table.to_parquet(path)
    stats = write_sft_dataset(path, tmp_path / "sft" / "generation" / "d.parquet",
                              tmp_path / "sft" / "generation" / "d.stats.json",
                              TeacherSettings(n_samples=2, progress=False, max_prompts=3), FilterSettings(),
                              cache_path=tmp_path / "cache.sqlite", label="generation/d")
    saved = json.loads((tmp_path / "sft" / "generation" / "d.stats.json").read_text())
    assert saved == json.loads(json.dumps(stats)) and saved["primal"]["prompts"] == 3
    frame = pd.read_parquet(tmp_path / "sft" / "generation" / "d.parquet")
    assert set(frame["provider"]) == {"markers"} and frame["prompt"].map(json.loads).map(len).eq(2).all()
    assert {"primal", "filtering", "usage", "overall"} <= set(saved)
    every = int(((table["stage"] == "sft") & (table["direction"] == "primal")).sum())
    assert every > 5
    for per_task, expected in (({"generation": 5}, 5), ({"generation": None}, every), ({"annotation": 5}, 3)):
        settings = TeacherSettings(n_samples=1, progress=False, max_prompts=3, max_prompts_per_task=per_task)
        _, stats = build_sft_dataset(table, settings, FilterSettings())
        assert stats["primal"]["prompts"] == expected, per_task  # the task's own cap, else max_prompts


def test_data_duals_cover_every_primal_prompt_without_asking_the_teacher():
    table = build_task_tables(identity_cells(), ["annotation"], tables=TaskTableSettings(rl_fraction=0.0))
    only_nk_wrong = table[table["label"] == "CD56+ NK"]

    class AlwaysB(ScriptedProvider):
        async def generate(self, request, params):
            assert ":primal:" in request.prompt_id  # duals never reach the teacher
            return [Completion(format_answer("r", "CD19+ B"), 1, 1) for _ in request.sample_indices]

    settings = TeacherSettings(n_samples=2, progress=False, dual_answers="data")
    out, stats = build_sft_dataset(only_nk_wrong, settings, FilterSettings(), provider_factory=AlwaysB)
    dual = out[out["direction"] == "dual"]
    table_duals = only_nk_wrong[only_nk_wrong["direction"] == "dual"]
    # every primal prompt's dual is an example, even though no primal sample was accepted
    assert not out.loc[out["direction"] == "primal", "accepted"].any()
    assert len(dual) == len(table_duals) == 4 and dual["accepted"].all()
    assert dual["completion"].tolist() == [format_answer("", a) for a in table_duals["answer"]]
    assert stats["dual"]["dual_answers"] == "data" and stats["dual"]["from_primal_prompts"] == 4


def test_teacher_plus_data_duals_fill_in_where_the_teacher_fails():
    table = build_task_tables(identity_cells(), ["annotation"], tables=TaskTableSettings(rl_fraction=0.0))
    nk = table[table["label"] == "CD56+ NK"]
    table_duals = nk[nk["direction"] == "dual"]
    good = set(table_duals["prompt_id"][:2])
    answers = dict(zip(table_duals["prompt_id"], table_duals["answer"]))

    class HalfRight(ScriptedProvider):
        async def generate(self, request, params):
            if ":primal:" in request.prompt_id:
                return [Completion(format_answer("r", "CD19+ B"), 1, 1) for _ in request.sample_indices]
            text = answers[request.prompt_id] if request.prompt_id in good else "ZZZ1 ZZZ2"
            return [Completion(format_answer("thinking", text), 1, 1) for _ in request.sample_indices]

    settings = TeacherSettings(n_samples=2, progress=False, dual_answers="teacher+data")
    out, stats = build_sft_dataset(nk, settings, FilterSettings(), provider_factory=HalfRight)
    accepted = out[(out["direction"] == "dual") & out["accepted"]]
    # every dual prompt has one example: the teacher's where it passed the filter, the data answer elsewhere
    assert sorted(accepted["prompt_id"]) == sorted(table_duals["prompt_id"])
    by_source = accepted.groupby("provider")["prompt_id"].apply(set).to_dict()
    assert by_source["data"] == set(table_duals["prompt_id"]) - good and by_source["scripted"] == good
    assert stats["dual"]["answered_from_data"] == 2 and stats["dual"]["from_primal_prompts"] == 4


def test_teacher_cost_cap_stops_before_any_request():
    from cellduality.errors import CellDualityError
    from cellduality.teacher.sft_data import estimate_cost

    table = build_task_tables(identity_cells(), ["annotation"], tables=TaskTableSettings(rl_fraction=0.0))
    primal = table[(table["stage"] == "sft") & (table["direction"] == "primal")]
    priced = TeacherSettings(provider="openai", n_samples=8, max_tokens=1000, price_in=2.5, price_out=10.0,
                             progress=False)
    cost = estimate_cost(primal, priced, "annotation/d")
    assert cost == pytest.approx(len(primal) * 8 * 1000 * 10.0 / 1e6, rel=0.2)  # output tokens dominate
    asked = []

    class Recording(ScriptedProvider):
        async def generate(self, request, params):
            asked.append(request.prompt_id)
            return await super().generate(request, params)

    capped = TeacherSettings(n_samples=8, max_tokens=1000, price_in=2.5, price_out=10.0, max_cost_usd=cost / 2,
                             progress=False)
    with pytest.raises(CellDualityError, match="may cost up to .* above teacher.max_cost_usd"):
        build_sft_dataset(table, capped, FilterSettings(), provider_factory=Recording)
    assert asked == []
