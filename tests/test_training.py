"""The training stage on the embedded tiny model: tokenizer contract, rewards, SFT (+resume) and GRPO."""

import json
import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_task_row

from cellduality.config import load_config
from cellduality.errors import CellDualityError
from cellduality.evaluation.settings import EvaluationSettings
from cellduality.tasks import prompts
from cellduality.tasks.prompts import format_answer
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.schema import decode_column, rows_frame
from cellduality.training.duality import TaskReward
from cellduality.training.settings import (
    EmbeddedModelSettings,
    GRPOSettings,
    LoraSettings,
    ReportSettings,
    SFTSettings,
)

pytest.importorskip("trl")

GENES = [f"GENE{i}" for i in range(40)] + ["CD3E", "CD14", "MS4A1"]
TYPES = ["T cell", "B cell", "Monocyte"]


def task_rows(n=24):
    """A small annotation task table (sft + rl rows) in the task-table layout."""
    rows = []
    for i in range(n):
        label = TYPES[i % 3]
        genes = [["CD3E", "MS4A1", "CD14"][i % 3]] + GENES[i % 10: i % 10 + 11]
        visible, hidden = genes[:9], genes[9:]
        stage = "sft" if i < n // 2 else "rl"
        rows.append(make_task_row(
            prompt_id=f"annotation:primal:{stage}:d:c{i}", task="annotation", direction="primal", dataset="d",
            split="train", stage=stage, prompt=prompts.annotation_prompt(genes, {}, TYPES),
            answer=label if stage == "sft" else "", label=label, candidates=TYPES, hidden_genes=hidden,
            visible_genes=visible, input_sentence=" ".join(genes), cell_ids=[f"c{i}"],
        ))
    return rows_frame(rows)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from cellduality.training.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("train")
    tasks = root / "tasks.parquet"
    task_rows().to_parquet(tasks)
    sentences = root / "sentences.parquet"
    pd.DataFrame({"sentence": [" ".join(GENES)]}).to_parquet(sentences)
    build_tiny_model([sentences], [tasks], root / "base", TINY)
    table = pd.read_parquet(tasks)
    sft = table[table.stage == "sft"].copy()
    sft["completion"] = [format_answer("The markers point to it.", a) for a in sft.answer]
    sft["accepted"] = True
    sft.to_parquet(root / "sft.parquet")
    return root


def test_tokenizer_contract(workspace):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workspace / "base")
    ids = tok(" CD3E MS4A1", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == [" CD3E", " MS4A1"]  # one token per gene
    text = "<think>x</think><answer>B cell</answer>"
    assert tok.decode(tok(text + tok.eos_token, add_special_tokens=False).input_ids, skip_special_tokens=True) == text
    messages = [{"role": "user", "content": "Cell: CD3E"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": text}], tokenize=False)
    assert full.startswith(prompt) and full.rstrip().endswith(tok.eos_token)


def _columns(table):
    return {c: table[c].tolist() for c in ("label", "candidates", "hidden_genes", "visible_genes",
                                           "reference_sentence", "input_sentence", "metadata")}


def test_duality_reward_dedups_dual_prompts_and_scores_reconstruction():
    table = task_rows(6).iloc[:2]
    rows = pd.concat([table.iloc[[0]]] * 3 + [table.iloc[[1]]], ignore_index=True)
    hidden = decode_column(rows, "hidden_genes")
    hidden0, hidden1 = hidden[0], hidden[3]
    seen = []

    def dual(conversations):
        seen.extend(conversations)
        # reconstruct perfectly only when the dual prompt names the true type of cell 0 ("T cell")
        return [format_answer("", " ".join(hidden0)) if "T cell" in c[-1]["content"] else
                format_answer("", "NOTAGENE") for c in conversations]

    completions = [format_answer("", "T cell"), format_answer("", "T cell"), "no tags at all",
                   format_answer("", "B cell")]
    reward = TaskReward(RewardSettings(mode="duality"), dual)
    logged = {}
    out = reward(prompts=[None] * 4, completions=[[{"role": "assistant", "content": c}] for c in completions],
                 task=["annotation"] * 4, log_metric=logged.__setitem__, **_columns(rows))
    assert out == [1.0, 1.0, -1.0, 0.0]
    assert len(seen) == 2  # the two identical "T cell" rollouts share one dual generation
    assert logged["dual_generations"] == 2 and logged["oracle_reward"] == pytest.approx((1 + 1 - 1 + 1) / 4)
    assert hidden1  # the B cell row has hidden genes but a wrong reconstruction
    oracle = TaskReward(RewardSettings(mode="oracle"))
    assert oracle(prompts=[None] * 4, completions=completions, task=["annotation"] * 4,
                  **_columns(rows)) == [1.0, 1.0, -1.0, 1.0]


def _generation_rows(labels):
    return rows_frame([make_task_row(
        prompt_id=f"generation:primal:rl:d:c{i}", task="generation", stage="rl", label=label, candidates=TYPES,
        prompt=prompts.generation_prompt(label, 2), reference_sentence="CD3E GENE1")
        for i, label in enumerate(labels)])


def test_label_duals_probability_scores_the_dual_instead_of_generating_it():
    rows = _generation_rows(["T cell", "T cell", "T cell", "B cell"])
    t_like = {"T cell": 0.7, "B cell": 0.2, "Monocyte": 0.1}
    other = {"T cell": 0.1, "B cell": 0.6, "Monocyte": 0.3}
    scored = []

    def scorer(conversations, candidates):
        scored.extend(zip(conversations, candidates))
        return [dict(t_like if "CD3E" in c[-1]["content"] else other) for c in conversations]

    def generator(conversations):
        raise AssertionError("a scored dual is not generated")

    completions = [format_answer("", "CD3E GENE1"), format_answer("", "CD3E GENE1"), "no tags",
                   format_answer("", "MS4A1 GENE2")]
    columns = _columns(rows)
    reward = TaskReward(RewardSettings(mode="duality", label_duals="probability"), generator, scorer)
    logged = {}
    assert reward(prompts=[None] * 4, completions=completions, task=["generation"] * 4,
                  log_metric=logged.__setitem__, **columns) == [0.7, 0.7, -1.0, 0.6]
    assert len(scored) == 2 and all(list(c) == TYPES for _, c in scored)  # one score per distinct dual prompt
    assert logged["dual_generations"] == 2
    # the negative control scores the same probabilities against another prompt's condition
    shuffled = TaskReward(RewardSettings(mode="shuffled", label_duals="probability"), generator, scorer)
    rows2 = _generation_rows(["T cell", "B cell"])
    assert shuffled(prompts=[None] * 2, completions=[completions[0], completions[3]], task=["generation"] * 2,
                    prompt_id=rows2["prompt_id"].tolist(), **_columns(rows2)) == [0.2, 0.1]
    # the paper's reward (answer) generates the dual and scores its answer
    answered = TaskReward(RewardSettings(mode="duality"), lambda convs: [format_answer("", "T cell")] * len(convs),
                          lambda *a: pytest.fail("an answered dual is not scored"))
    assert answered(prompts=[None] * 4, completions=completions, task=["generation"] * 4, **columns) == \
        [1.0, 1.0, -1.0, 0.0]
    with pytest.raises(CellDualityError, match="rewards.label_duals must be one of answer, probability"):
        RewardSettings(label_duals="soft")


def test_model_dual_scorer_gives_the_candidates_a_distribution(workspace):
    from transformers import AutoModelForCausalLM

    from cellduality.training.duality import model_dual_scorer
    from cellduality.training.setup import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(workspace / "base")
    model.train()
    scorer = model_dual_scorer(model, load_tokenizer(workspace / "base"))
    conversation = prompts.generation_dual_prompt(["CD3E", "GENE1"], {}, TYPES)
    first, = scorer([conversation], [TYPES])
    assert set(first) == set(TYPES) and sum(first.values()) == pytest.approx(1.0)
    assert model.training  # scored in eval mode, left as it was
    two = scorer([conversation, conversation], [TYPES, TYPES[:2]])
    assert two[0] == pytest.approx(first)
    assert set(two[1]) == set(TYPES[:2]) and sum(two[1].values()) == pytest.approx(1.0)
    # renormalised over a smaller candidate set: the same odds between the labels it keeps
    assert two[1]["T cell"] / two[1]["B cell"] == pytest.approx(first["T cell"] / first["B cell"], rel=1e-4)


SFT_CFG = SFTSettings(seed=0, epochs=1, max_steps=4, learning_rate=1e-3, per_device_batch_size=4,
                      gradient_accumulation_steps=1, max_length=512, save_steps=2, logging_steps=1,
                      gradient_checkpointing=False)
NO_LORA = LoraSettings(enabled=False)
TINY = EmbeddedModelSettings(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
GRPO_CFG = GRPOSettings(num_generations=2, train_batch_size=4, mini_batch_size=4, max_steps=2, learning_rate=1e-4,
                        beta=0.04, epsilon=0.2, temperature=1.0, max_completion_length=16, max_prompts=8,
                        dual_model="policy", dual_max_new_tokens=12, dual_temperature=0.0, save_steps=1,
                        use_vllm=False, seed=0, gradient_checkpointing=False)


def test_sft_resumes_after_interruption_and_not_across_changed_inputs(workspace):
    from transformers import TrainerCallback

    from cellduality.training.sft import run_sft

    class Interrupt(Exception):
        pass

    class KillAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Interrupt  # the job dies right after checkpoint-2 was written

    class StepCounter(TrainerCallback):
        steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            StepCounter.steps.append(state.global_step)

    ckpt = workspace / "sft_ckpt"
    with pytest.raises(Interrupt):
        run_sft(str(workspace / "base"), [workspace / "sft.parquet"], workspace / "sft", ckpt, SFT_CFG, NO_LORA,
                callbacks=[KillAfterFirstSave()])
    assert len(list(ckpt.glob("*/checkpoint-2"))) == 1
    run_sft(str(workspace / "base"), [workspace / "sft.parquet"], workspace / "sft", ckpt, SFT_CFG, NO_LORA,
            callbacks=[StepCounter()])
    assert StepCounter.steps == [3, 4]  # steps 1-2 came from the checkpoint, not recomputed
    history = json.loads((workspace / "sft" / "log_history.json").read_text())
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4]
    assert (workspace / "sft" / "model.safetensors").exists()

    # other data: a fresh run, never a resume from the old run's checkpoint
    changed = pd.read_parquet(workspace / "sft.parquet").head(8)
    changed.to_parquet(workspace / "sft_changed.parquet")
    StepCounter.steps = []
    run_sft(str(workspace / "base"), [workspace / "sft_changed.parquet"], workspace / "sft_changed", ckpt, SFT_CFG,
            NO_LORA, callbacks=[StepCounter()])
    assert StepCounter.steps == [1, 2, 3, 4]
    assert len(list(ckpt.glob("*/checkpoint-4"))) == 2


@pytest.mark.parametrize("mode", ["duality", "oracle"])
def test_short_grpo_run(workspace, mode):
    from cellduality.training.grpo import run_grpo

    model = workspace / "sft" if (workspace / "sft").exists() else workspace / "base"
    out = workspace / f"grpo_{mode}"
    run_grpo(str(model), [workspace / "tasks.parquet"], out, workspace / f"ckpt_{mode}", GRPO_CFG,
             RewardSettings(mode=mode), NO_LORA)
    curve = pd.read_csv(out / "reward_curve.tsv", sep="\t")
    assert curve["step"].tolist() == [1, 2]
    assert curve["reward"].between(-1, 1).all() and curve["oracle_reward"].between(-1, 1).all()
    assert (out / "model.safetensors").exists()
    assert len(list(Path(workspace / f"ckpt_{mode}").glob("*/checkpoint-2"))) == 1


def test_sft_reports_to_tensorboard(workspace, tmp_path):
    """training.report_to: tensorboard: event files with the train/loss scalar of every logged step in the run's
    folder (results/logs/tensorboard/<run name> in the workflow); the environment is left as it was."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cellduality.training.grpo import grpo_config
    from cellduality.training.settings import ReportSettings
    from cellduality.training.sft import run_sft

    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    logs = tmp_path / "logs" / "tensorboard" / "sft_rep0"
    report = ReportSettings(report_to="tensorboard", logging_dir=str(logs), run_name="sft_rep0")
    run_sft(str(workspace / "base"), [workspace / "sft.parquet"], tmp_path / "sft", tmp_path / "ckpt",
            SFT_CFG.replace(max_steps=2, save_steps=100), NO_LORA, report=report)
    assert len(list(logs.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(logs))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert os.environ.get("TENSORBOARD_LOGGING_DIR") == before
    args = grpo_config(GRPOSettings(num_generations=2, train_batch_size=4, mini_batch_size=4), tmp_path,
                       report=report)
    assert list(args.report_to) == ["tensorboard"] and args.run_name == "sft_rep0"


def test_wandb_without_the_package_is_one_line(workspace, tmp_path, monkeypatch):
    from cellduality.errors import CellDualityError
    from cellduality.training.settings import TrainingSettings

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(CellDualityError, match="training.report_to is wandb but wandb is not installed; "
                                               "pip install wandb") as err:
        TrainingSettings.from_config({"training": {"report_to": "wandb"}})  # when the workflow starts
    assert "\n" not in str(err.value)
    with pytest.raises(CellDualityError, match="wandb is not installed"):  # and when a job rebuilds its run's folder
        ReportSettings.from_params({"report_to": "wandb", "logging_dir": str(tmp_path / "wandb"), "run_name": "x"})


def test_wandb_runs_offline_in_the_run_folder_unless_the_environment_says_otherwise(monkeypatch):
    from importlib.machinery import ModuleSpec

    from cellduality.training.settings import ReportSettings
    from cellduality.training.setup import report_env

    fake = types.ModuleType("wandb")
    fake.__spec__ = ModuleSpec("wandb", None)
    monkeypatch.setitem(sys.modules, "wandb", fake)  # installed, as far as the check can tell
    report = ReportSettings(report_to="wandb", logging_dir="results/logs/wandb/sft_rep0", run_name="sft_rep0")
    assert report_env(report, {}) == {"WANDB_MODE": "offline", "WANDB_PROJECT": "cellduality",
                                      "WANDB_DIR": "results/logs/wandb/sft_rep0"}
    mine = {"WANDB_MODE": "online", "WANDB_PROJECT": "atlas", "WANDB_DIR": "/scratch/wandb", "WANDB_API_KEY": "k3y"}
    assert report_env(report, mine) == {"WANDB_MODE": "online", "WANDB_PROJECT": "atlas"}  # the key is not touched
    assert report_env(ReportSettings(), {}) == {} and ReportSettings().report_to == "none"


def test_unloadable_model_is_a_one_line_error(tmp_path):
    from cellduality.errors import CellDualityError
    from cellduality.training.setup import load_tokenizer

    with pytest.raises(CellDualityError) as err:
        load_tokenizer(tmp_path / "no-such-model")
    assert "no-such-model: cannot be loaded" in str(err.value) and "\n" not in str(err.value)


def test_grpo_objective_settings_reach_trl(tmp_path):
    """config/paper.yaml's per-sequence objective: loss_type grpo, group-scaled advantages, KL to the SFT model."""

    from cellduality.errors import CellDualityError
    from cellduality.training.grpo import grpo_config

    paper = GRPOSettings.from_config(load_config(Path(__file__).resolve().parents[1] / "config" / "paper.yaml"))
    args = grpo_config(paper, tmp_path, n_processes=8)
    assert (args.loss_type, args.scale_rewards, args.beta) == ("grpo", "group", 0.04)
    assert args.per_device_train_batch_size == 32 // 8 and args.steps_per_generation == 512 // 32
    with pytest.raises(CellDualityError, match="multiple of the number of processes"):
        grpo_config(paper, tmp_path, n_processes=3)


def test_generation_keeps_answer_items_distinct():
    """UniqueAnswerItems bans an item token (either spelling) the reply already holds, and nothing else."""
    import torch

    from cellduality.training.decoding import UniqueAnswerItems

    groups = {5: 0, 6: 0, 7: 1}  # tokens 5 and 6 spell one item (bare and space-led), 7 another
    proc = UniqueAnswerItems(groups, prompt_length=2)
    ids = torch.tensor([[1, 5, 6, 9], [1, 7, 2, 3]])  # row 0's prompt holds item 0: prompts do not count
    scores = proc(ids, torch.zeros(2, 10))
    assert torch.isinf(scores[0, [5, 6]]).all() and not torch.isinf(scores[0, 7])  # generated 6 -> both spellings
    assert not torch.isinf(scores[1]).any()  # row 1 generated only non-item tokens
    assert torch.equal(proc(ids[:, :2], torch.zeros(2, 10)), torch.zeros(2, 10))  # nothing generated yet


def test_generation_lets_reasoning_repeat_answer_items():
    """With an <answer> token, only items after it count: the reasoning may name what the answer names."""
    import torch

    from cellduality.training.decoding import UniqueAnswerItems

    proc = UniqueAnswerItems({5: 0, 6: 0, 7: 1}, prompt_length=1, answer_token=3)
    ids = torch.tensor([[1, 5, 7, 3, 7], [1, 5, 7, 9, 9]])  # row 0: item 0 and 1 in reasoning, item 1 in answer
    scores = proc(ids, torch.zeros(2, 10))
    assert torch.isinf(scores[0, 7]) and not torch.isinf(scores[0, [5, 6]]).any()
    assert not torch.isinf(scores[1]).any()  # no <answer> yet: nothing is banned


def test_label_answer_grammar_keeps_answers_to_labels_joined_by_the_separator():
    """After <answer> (3) or the separator (8) only labels (5, 6, 7); after a label the separator or </answer>
    (4), only </answer> once as many labels as candidates are named; reasoning and rows without candidates free."""
    import torch

    from cellduality.training.decoding import LabelAnswerGrammar

    proc = LabelAnswerGrammar({5: "A", 6: "B", 7: "C"}, [["A", "B"], ["A", "B"], ["A", "B"], None, ["A", "B"]],
                              prompt_length=1, open_token=3, close_token=4, separator=8)
    ids = torch.tensor([[1, 9, 9, 9, 3],  # just opened: labels only
                        [1, 9, 3, 5, 8],  # after the separator: labels only
                        [1, 3, 5, 8, 6],  # two labels of two candidates: </answer> only
                        [1, 9, 3, 5, 8],  # no candidates: free
                        [1, 9, 9, 9, 9]])  # reasoning: free
    scores = proc(ids, torch.zeros(5, 10))
    allowed = [set(torch.nonzero(~torch.isinf(row)).flatten().tolist()) for row in scores]
    assert allowed[:3] == [{5, 6, 7}, {5, 6, 7}, {4}]
    assert allowed[3] == allowed[4] == set(range(10))
    one = proc(torch.tensor([[1, 3, 5]] * 5), torch.zeros(5, 10))
    assert set(torch.nonzero(~torch.isinf(one[0])).flatten().tolist()) == {4, 8}  # one of two named: go on or close


def test_candidate_constrained_decoding_names_only_candidates(workspace):
    from transformers import AutoModelForCausalLM

    from cellduality.training.decoding import generate_chat, label_item_tokens
    from cellduality.training.setup import load_tokenizer

    tokenizer = load_tokenizer(str(workspace / "base"))
    assert set(label_item_tokens(tokenizer).values()) == set(TYPES)
    model = AutoModelForCausalLM.from_pretrained(str(workspace / "base"))  # untrained: says anything
    conversations = [prompts.annotation_prompt(["CD3E", "GENE1"], {}, TYPES)] * 6
    allowed = [["B cell"], ["Monocyte"], None, ["B cell"], ["Monocyte"], None]
    free = generate_chat(model, tokenizer, conversations, max_new_tokens=30, temperature=1.0, batch_size=3)
    constrained = generate_chat(model, tokenizer, conversations, max_new_tokens=30, temperature=1.0, batch_size=3,
                                allowed_labels=allowed)
    for reply, ok in zip(constrained, allowed):
        named = {t for t in TYPES if t in reply}
        if ok is not None:
            assert named <= set(ok), reply
            answer = reply.split("<answer>")[-1] if "<answer>" in reply else None
            if answer is not None and "</answer>" in answer:  # the grammar: one candidate label, then closed
                assert answer.split("</answer>")[0].strip() in ok, reply
    assert any(t in reply for reply in free for t in TYPES)


def test_gene_list_replies_hold_no_label_token(workspace):
    """gene_rows: a generated cell cannot contain a cell type (GRPO on generation once learned to start every cell
    with a label token its judge rewarded); other rows are unchanged."""
    from transformers import AutoModelForCausalLM

    from cellduality.training.decoding import answer_processors, generate_chat, label_item_tokens
    from cellduality.training.setup import load_tokenizer

    tokenizer = load_tokenizer(str(workspace / "base"))
    labels = label_item_tokens(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(workspace / "base"))  # untrained: says anything
    conversations = [prompts.generation_prompt("T cell", 8)] * 8
    free = generate_chat(model, tokenizer, conversations, max_new_tokens=40, temperature=1.0, batch_size=4)
    genes = generate_chat(model, tokenizer, conversations, max_new_tokens=40, temperature=1.0, batch_size=4,
                          gene_rows=[True] * 8)
    assert any(t in reply for reply in free for t in TYPES)
    assert not any(t in reply for reply in genes for t in TYPES), genes
    import torch

    processors = answer_processors(tokenizer, 3, gene_rows=[True, False])
    scores = torch.zeros(2, len(tokenizer))
    for processor in processors:
        scores = processor(torch.zeros(2, 3, dtype=torch.long), scores)
    assert torch.isinf(scores[0, list(labels)]).all() and not torch.isinf(scores[1]).any()
    assert len(answer_processors(tokenizer, 3, gene_rows=[False, False])) == 1  # unique items only, as without


def _train_in(folder: Path, source: Path) -> dict:
    """Build the tiny model, SFT, duality GRPO and predict in ``folder``: what a run of the training stage keeps."""
    from safetensors.numpy import load_file

    from cellduality.evaluation.predict import predict
    from cellduality.training.grpo import run_grpo
    from cellduality.training.sft import run_sft
    from cellduality.training.tiny_model import build_tiny_model

    folder.mkdir(parents=True)
    for name in ("tasks.parquet", "sft.parquet", "sentences.parquet"):
        (folder / name).write_bytes((source / name).read_bytes())
    build_tiny_model([folder / "sentences.parquet"], [folder / "tasks.parquet"], folder / "base", TINY)
    run_sft(str(folder / "base"), [folder / "sft.parquet"], folder / "sft", folder / "ckpt", SFT_CFG, NO_LORA)
    run_grpo(str(folder / "sft"), [folder / "tasks.parquet"], folder / "grpo", folder / "ckpt_grpo",
             GRPO_CFG.replace(learning_rate=1e-3), RewardSettings(mode="duality"), NO_LORA)
    rows = pd.read_parquet(folder / "tasks.parquet")
    rows.loc[rows.stage == "rl", "stage"] = "eval"  # the unseen half answers as eval prompts
    rows.to_parquet(folder / "eval.parquet")
    predictions = predict(str(folder / "grpo"), [folder / "eval.parquet"], folder / "predictions.parquet",
                          EvaluationSettings(max_prompts_per_table=None, max_new_tokens=24))
    return {
        "sft_history": json.loads((folder / "sft" / "log_history.json").read_text()),
        "reward_curve": pd.read_csv(folder / "grpo" / "reward_curve.tsv", sep="\t"),
        "weights": load_file(folder / "grpo" / "model.safetensors"),
        "responses": predictions["response"].tolist(),
    }


DETERMINISM_ATOL = 1e-6  # README "Reproducibility audits": training metrics agree to this, in absolute value


def test_training_is_deterministic_across_folders(workspace, tmp_path):
    """Same config and seed in two folders (different path lengths): the SFT loss curve, the GRPO reward curve
    and the final weights agree within DETERMINISM_ATOL, and greedy predictions are identical."""
    import numpy as np

    a = _train_in(tmp_path / "a", workspace)
    b = _train_in(tmp_path / "second folder" / "b", workspace)
    losses = [[e["loss"] for e in run["sft_history"] if "loss" in e] for run in (a, b)]
    assert len(losses[0]) == SFT_CFG.max_steps
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=DETERMINISM_ATOL)
    numeric = a["reward_curve"].select_dtypes("number").columns
    assert len(a["reward_curve"]) == 2
    np.testing.assert_allclose(a["reward_curve"][numeric], b["reward_curve"][numeric], rtol=0, atol=DETERMINISM_ATOL)
    assert a["weights"].keys() == b["weights"].keys()
    for name, tensor in a["weights"].items():
        np.testing.assert_allclose(tensor, b["weights"][name], rtol=0, atol=DETERMINISM_ATOL, err_msg=name)
    assert a["responses"] == b["responses"] and len(a["responses"]) == 12


def test_example_mean_loss_weighs_every_example_the_same():
    """sft.loss_averaging: examples: the mean over examples of each example's own completion-token mean, against
    cross-entropies computed by hand; TRL's token mean would weigh the 3-token answer three times the 1-token one."""
    import math

    import torch

    from cellduality.training.sft import example_mean_loss

    vocab = 5
    logits = torch.log_softmax(torch.randn(2, 5, vocab, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([[-100, -100, -100, 2, -100], [-100, 1, 4, 3, -100]])  # 1 and 3 completion tokens

    def ce(row, pos):  # label at position pos is predicted by the logits at pos - 1
        return -logits[row, pos - 1, labels[row, pos]].item()

    first, second = ce(0, 3), (ce(1, 1) + ce(1, 2) + ce(1, 3)) / 3
    assert math.isclose(example_mean_loss(logits, labels).item(), (first + second) / 2, rel_tol=1e-5)
    token_mean = (ce(0, 3) + ce(1, 1) + ce(1, 2) + ce(1, 3)) / 4
    assert not math.isclose((first + second) / 2, token_mean, rel_tol=1e-3)
    empty = torch.full_like(labels, -100)
    assert example_mean_loss(logits, empty).item() == 0.0


def test_example_mean_loss_from_completion_logits_only_matches_full_logits(workspace):
    """The SFT subclass asks the model for the logits of completion positions only (logits_to_keep mask): same
    loss and gradients as from the full logits, including a row without completion tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from cellduality.training.sft import example_mean_loss, example_mean_loss_at, predicting_positions

    model = AutoModelForCausalLM.from_pretrained(workspace / "base")
    ids = torch.randint(5, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    labels[0, 9:] = ids[0, 9:]
    labels[1, 4:7] = ids[1, 4:7]  # a completion followed by padding
    keep = predicting_positions(labels)
    assert keep.sum() == 6 and keep[0, 8] and not keep[0, 11] and keep[1, 3] and not keep[2].any()
    full = example_mean_loss(model(input_ids=ids).logits, labels)
    full.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=ids, logits_to_keep=keep).logits
    assert logits.shape == (6, model.config.vocab_size)
    kept = example_mean_loss_at(logits, labels, keep)
    kept.backward()
    assert torch.allclose(full, kept, atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters()))
    empty = torch.full_like(labels, -100)
    nothing = predicting_positions(empty)
    assert example_mean_loss_at(model(input_ids=ids, logits_to_keep=nothing).logits, empty, nothing).item() == 0.0


def test_sft_with_example_averaging_trains(workspace, tmp_path):
    """The loss reaches SFTTrainer and is scaled for gradient accumulation: the first step's logged loss over 4
    examples is the same as one batch of 4 or as 2 accumulated micro-batches of 2; the weights change."""
    from safetensors.torch import load_file

    from cellduality.training.sft import run_sft

    first_losses = []
    for batch, accumulation in ((4, 1), (2, 2)):
        out = tmp_path / f"sft{batch}"
        run_sft(str(workspace / "base"), [workspace / "sft.parquet"], out, tmp_path / f"ckpt{batch}",
                SFT_CFG.replace(max_steps=2, loss_averaging="examples", per_device_batch_size=batch,
                                gradient_accumulation_steps=accumulation), NO_LORA)
        history = json.loads((out / "log_history.json").read_text())
        first_losses.append([entry["loss"] for entry in history if "loss" in entry][0])
    assert first_losses[0] == pytest.approx(first_losses[1], rel=1e-3)
    before, after = load_file(workspace / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)


def test_sft_second_phase_adds_held_back_tasks_and_resumes_after_the_first(workspace, tmp_path, caplog):
    """``sft.held_back_tasks``: phase 1 trains without them, phase 2 continues from phase 1's model on every
    task; a rerun after a crash in phase 2 does not retrain phase 1; the log history keeps both phases."""
    from transformers import TrainerCallback

    from cellduality.errors import CellDualityError
    from cellduality.training.sft import run_sft

    with pytest.raises(CellDualityError, match="second_phase_steps"):
        SFT_CFG.replace(held_back_tasks=["cellpuzzles"])
    data = pd.read_parquet(workspace / "sft.parquet")
    data.loc[data.index[::3], "task"] = "cellpuzzles"  # 4 of the 12 examples
    data.to_parquet(tmp_path / "two_tasks.parquet")
    cfg = SFT_CFG.replace(max_steps=2, held_back_tasks=["cellpuzzles"], second_phase_steps=4,
                          second_phase_learning_rate=5e-4, first_phase_preview=1)

    class Interrupt(Exception):
        pass

    class KillInPhaseTwo(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if "phase2" in args.output_dir:
                raise Interrupt

    class Steps(TrainerCallback):
        seen: list[tuple[str, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            Steps.seen.append((Path(args.output_dir).name, state.global_step))

    out, ckpt = tmp_path / "sft", tmp_path / "ckpt"
    with caplog.at_level("INFO", logger="cellduality.training.sft"), pytest.raises(Interrupt):
        run_sft(str(workspace / "base"), [tmp_path / "two_tasks.parquet"], out, ckpt, cfg, NO_LORA,
                callbacks=[KillInPhaseTwo(), Steps()])
    assert "SFT on 9 examples" in caplog.text  # phase 1: the 8 annotation examples and 1 puzzle as a preview
    assert "SFT on 12 examples" in caplog.text  # phase 2: all of them
    assert Steps.seen == [("phase1", 1), ("phase1", 2), ("phase2", 1), ("phase2", 2)]
    assert not out.exists()
    (phase1,) = ckpt.glob("*/phase1/final")
    Steps.seen = []
    with caplog.at_level("INFO", logger="cellduality.training.sft"):
        run_sft(str(workspace / "base"), [tmp_path / "two_tasks.parquet"], out, ckpt, cfg, NO_LORA,
                callbacks=[Steps()])
    assert "SFT phase1 already trained" in caplog.text
    assert Steps.seen == [("phase2", 3), ("phase2", 4)]  # phase 1 kept, phase 2 resumed from its checkpoint
    history = json.loads((out / "log_history.json").read_text())
    assert [(e["phase"], e["step"]) for e in history if "loss" in e] == [
        ("phase1", 1), ("phase1", 2), ("phase2", 1), ("phase2", 2), ("phase2", 3), ("phase2", 4)]
    assert max(e["learning_rate"] for e in history if e["phase"] == "phase2" and "learning_rate" in e) <= 5e-4
    assert (out / "model.safetensors").exists()


def test_grpo_rollouts_of_label_prompts_name_only_their_candidates(workspace, tmp_path, monkeypatch):
    """With evaluation.constrain_to_candidates, GRPO samples label and CellPuzzles answers as evaluation decodes
    them: an untrained model, free, names any cell type; constrained, only the prompt's candidates."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from cellduality.training import grpo
    from cellduality.training.datasets import rl_dataset
    from cellduality.training.grpo import constrained_trainer, grpo_config, prompt_key, rollout_candidates
    from cellduality.training.setup import load_tokenizer

    built, original = [], grpo.answer_processors
    monkeypatch.setattr(grpo, "answer_processors", lambda *a, **k: built.append(k) or original(*a, **k))

    dataset = rl_dataset([workspace / "tasks.parquet"], 8, seed=0)
    assert set(rollout_candidates(dataset).values()) == {tuple(TYPES)}  # every annotation prompt, as in the table
    generation = Dataset.from_dict({"prompt": ["make a T cell"], "task": ["generation"], "candidates": [""]})
    assert rollout_candidates(generation) == {"make a T cell": grpo.GENE_LIST}  # gene lists: no label token
    only_b = {prompt_key(p): ("B cell",) for p in dataset["prompt"]}
    tokenizer = load_tokenizer(str(workspace / "base"))
    args = grpo_config(GRPO_CFG.replace(max_completion_length=40), tmp_path)
    prompts = [p for p in dataset["prompt"] for _ in range(2)]
    named = {}
    for name, trainer_class in (("free", GRPOTrainer), ("constrained", constrained_trainer(tokenizer, only_b))):
        trainer = trainer_class(model=str(workspace / "base"), reward_funcs=[lambda completions, **_: [0.0] *
                                len(completions)], args=args, train_dataset=dataset, processing_class=tokenizer)
        completions = trainer._generate(prompts)[3]
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        named[name] = {t for text in texts for t in TYPES if t in text}
    assert named["free"] - {"B cell"}  # the untrained model names other types when free
    assert named["constrained"] <= {"B cell"}
    assert len(built) == 1 and built[0]["allowed_labels"] == [("B cell",)] * len(prompts)  # one batch


def test_candidate_log_probs_score_each_candidate_after_the_reply_prefix(workspace):
    """candidate_log_probs is the teacher-forced log-probability of each candidate's tokens after the chat prompt
    and the reply prefix (a reasoning model after its reasoning)."""
    from transformers import AutoModelForCausalLM

    from cellduality.training.decoding import (
        ANSWER_ONLY_PREFIX,
        candidate_log_probs,
        continuation_log_probs,
        reply_prefix,
    )
    from cellduality.training.setup import load_tokenizer

    tokenizer = load_tokenizer(str(workspace / "base"))
    model = AutoModelForCausalLM.from_pretrained(str(workspace / "base"))
    conversations = [prompts.annotation_prompt(["CD3E", "GENE1"], {}, TYPES),
                     prompts.annotation_prompt(["CD14", "GENE2"], {}, TYPES)]
    scores = candidate_log_probs(model, tokenizer, conversations, [TYPES, TYPES[:2]])
    assert [len(row) for row in scores] == [3, 2] and all(x < 0 for row in scores for x in row)
    for conversation, row, options in zip(conversations, scores, [TYPES, TYPES[:2]]):
        context = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        alone = [continuation_log_probs(model, tokenizer, [context + ANSWER_ONLY_PREFIX], [c])[0] for c in options]
        assert row == pytest.approx(alone, rel=1e-4)  # batching and padding change nothing
    assert reply_prefix("<think>T cell markers</think>\n<answer>T cell</answer>") == \
        "<think>T cell markers</think>\n<answer>"
    after = candidate_log_probs(model, tokenizer, conversations[:1], [TYPES], ["<think>CD3E</think>\n<answer>"])
    assert after[0] != pytest.approx(scores[0])


def test_a_checkpoint_is_resumed_only_by_the_same_code(tmp_path, monkeypatch):
    """Snakemake reruns a training rule when its code changes; the rerun must train afresh, not resume the old
    run's last checkpoint (and hand back the old model)."""
    from cellduality import provenance
    from cellduality.training.setup import run_checkpoint_dir

    data = tmp_path / "data.parquet"
    data.write_bytes(b"rows")
    first = run_checkpoint_dir(tmp_path / "ck", {"lr": 1}, [data], code="cellduality.training.grpo")
    assert run_checkpoint_dir(tmp_path / "ck", {"lr": 1}, [data], code="cellduality.training.grpo") == first
    monkeypatch.setattr(provenance, "code_digest", lambda entries, shallow=(): "library code changed (1 files)")
    assert run_checkpoint_dir(tmp_path / "ck", {"lr": 1}, [data], code="cellduality.training.grpo") != first
