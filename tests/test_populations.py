"""Generation evaluated as populations (samples per prompt, distinct cells per condition), the per-task RL prompt
mix and the shuffled-condition reward (the ablation's negative control)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import make_task_row

from cellduality.evaluation.score import distinct_cells
from cellduality.tasks import prompts
from cellduality.tasks.schema import rows_frame
from cellduality.training.datasets import rl_dataset
from cellduality.training.duality import shuffle_conditions

GENES = [f"GENE{i}" for i in range(30)]
TYPES = ["T cell", "B cell", "Monocyte"]


def table(stage: str = "eval") -> pd.DataFrame:
    rows = []
    for i in range(6):
        label = TYPES[i % 3]
        cell = GENES[i:i + 8]
        rows.append(make_task_row(prompt_id=f"annotation:primal:{stage}:d:c{i}", stage=stage, split="test",
                                  prompt=prompts.annotation_prompt(cell, {}, TYPES), answer=label, label=label,
                                  candidates=TYPES, cell_ids=[f"c{i}"], input_sentence=" ".join(cell)))
        rows.append(make_task_row(prompt_id=f"generation:primal:{stage}:d:c{i}", task="generation", stage=stage,
                                  split="test", prompt=prompts.generation_prompt(label, 8, {}), label=label,
                                  answer=" ".join(cell), reference_sentence=" ".join(cell), candidates=TYPES,
                                  cell_ids=[f"c{i}"], hidden_genes=cell[4:], visible_genes=cell[:4]))
    return rows_frame(rows)


def test_gene_list_answers_are_sampled_and_labels_stay_greedy(tmp_path):
    pytest.importorskip("trl")
    from cellduality.evaluation.predict import predict
    from cellduality.evaluation.settings import EvaluationSettings
    from cellduality.training.settings import EmbeddedModelSettings
    from cellduality.training.tiny_model import build_tiny_model

    path = tmp_path / "tasks.parquet"
    table().to_parquet(path)
    pd.DataFrame({"sentence": [" ".join(GENES)]}).to_parquet(tmp_path / "sentences.parquet")
    build_tiny_model([tmp_path / "sentences.parquet"], [path], tmp_path / "base",
                     EmbeddedModelSettings(vocab_size=300, hidden_size=16, intermediate_size=32, num_layers=1,
                                           num_heads=2))
    settings = EvaluationSettings(max_new_tokens=12, samples_per_prompt=3, sample_temperature=1.0, seed=0)
    first = predict(str(tmp_path / "base"), [path], tmp_path / "p1.parquet", settings)
    counts = first.groupby(["task", "prompt_id"]).size()
    assert set(counts["generation"]) == {3} and set(counts["annotation"]) == {1}
    assert sorted(first.loc[first.task == "generation", "sample"].unique()) == [0, 1, 2]
    again = predict(str(tmp_path / "base"), [path], tmp_path / "p2.parquet", settings)
    assert first["response"].tolist() == again["response"].tolist()  # seeded: the same samples on one machine
    samples = first[first.task == "generation"].groupby("prompt_id")["response"].nunique()
    assert (samples > 1).any()  # sampled, not three copies of a greedy answer


def test_distinct_cells_per_condition():
    ok = pd.DataFrame({"label": ["T", "T", "T", "B", "B"], "prediction": ["A B", "A B", "C D", "E F", "G H"]})
    scores = distinct_cells(ok)
    assert scores["distinct_cells"] == 4 and scores["distinct_fraction"] == pytest.approx(0.8)
    assert scores["distinct_cells[T]"] == 2 and scores["distinct_cells[B]"] == 2


def test_a_prompts_samples_share_one_real_cell_in_the_knn_reference(tmp_path, monkeypatch):
    """Three samples of each prompt: the kNN classifier is fit on each real cell once (n_real = prompts)."""
    from cellduality.evaluation import score

    seen = {}

    def fake_generation_scores(real, real_labels, generated, generated_labels, seed):
        seen.update(n_real=len(real_labels), n_generated=len(generated_labels))
        return {}

    class Fit:
        genes = GENES

        def invert(self, sentences):
            import numpy as np

            class Inverted:
                X = np.array([[float(g in s.split()) for g in GENES] for s in sentences])
                n_genes_used = X.sum(axis=1)
                n_unknown = n_repeated = np.zeros(len(sentences))
            return Inverted

    class Space(score.ExpressionSpace):
        def __init__(self):
            super().__init__({})

        def fit(self, dataset):
            return Fit()

    monkeypatch.setattr(score, "generation_scores", fake_generation_scores)
    rows = table()
    gen = rows[rows.task == "generation"]
    pred = gen.loc[gen.index.repeat(3)].assign(prediction=lambda f: f["answer"], model="m")
    scores = score._generative_scores("generation", pred, Space(), score.EmbeddingSettings(n_components=2), 0)
    assert seen == {"n_real": 6, "n_generated": 18} and scores["distinct_cells"] == 6
    assert scores["unknown_word_fraction"] == 0


def test_rl_prompt_mix_per_task(tmp_path):
    path = tmp_path / "tasks.parquet"
    table("rl").to_parquet(path)
    only_generation = rl_dataset([path], task_prompts={"generation": None})
    assert set(only_generation["task"]) == {"generation"} and len(only_generation) == 6
    mixed = rl_dataset([path], task_prompts={"generation": 2, "annotation": 1})
    assert sorted(mixed["task"]) == ["annotation", "generation", "generation"]
    assert len(rl_dataset([path])) == 12  # empty mix: every task


def test_shuffled_conditions_keep_groups_and_carry_no_information():
    rows = [{"task": "generation", "prompt_id": f"p{i}", "label": TYPES[i % 3], "hidden_genes": json.dumps([f"g{i}"]),
             "metadata": "{}"} for i in range(6) for _ in range(4)]  # 6 prompts x G=4 rollouts
    shuffled = shuffle_conditions(rows, seed=1)
    by_prompt = {}
    for row in shuffled:
        by_prompt.setdefault(row["prompt_id"], set()).add(row["hidden_genes"])
    assert all(len(v) == 1 for v in by_prompt.values())  # one condition per group
    assert all(by_prompt[f"p{i}"] != {json.dumps([f"g{i}"])} for i in range(6))  # never the prompt's own
    assert sorted(v.pop() for v in by_prompt.values()) == sorted(json.dumps([f"g{i}"]) for i in range(6))
    assert shuffle_conditions(rows, seed=1) == shuffled and rows[0]["hidden_genes"] == json.dumps(["g0"])
    alone = [{"task": "generation", "prompt_id": "p0", "label": "T cell"}]
    assert shuffle_conditions(alone, seed=0) == alone


def test_kl_reweighted_accuracy_follows_the_reward_as_beta_shrinks():
    from cellduality.evaluation.ceiling import kl_reweighted_accuracy

    rewards = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    right = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]  # the reward agrees with the judge on one prompt
    assert kl_reweighted_accuracy(rewards, right, beta=1e6) == pytest.approx(0.25)  # the policy's own samples
    assert kl_reweighted_accuracy(rewards, right, beta=1e-6) == pytest.approx(0.5)  # the reward's favourites
    assert 0.25 < kl_reweighted_accuracy(rewards, right, beta=1.0) < 0.5


def test_ceiling_gate_warns_when_the_reward_cannot_help(tmp_path, caplog):
    from cellduality.training.label_signal import ceiling_gate

    path = tmp_path / "ceiling.json"
    summary = {"task": "generation", "beta": 0.01, "kl_optimum_accuracy": 0.40, "policy_accuracy": 0.44}
    path.write_text(json.dumps({"summary": summary}))
    with caplog.at_level("WARNING"):
        assert ceiling_gate(path) == summary
    assert "re-weighting the SFT model by the reward gains nothing" in caplog.text
    caplog.clear()
    path.write_text(json.dumps({"summary": {**summary, "kl_optimum_accuracy": 0.6}}))
    with caplog.at_level("WARNING"):
        ceiling_gate(path)
    assert "not expected" not in caplog.text and ceiling_gate(None) is None
