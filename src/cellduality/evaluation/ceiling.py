"""The ceiling check of conditional generation, run on the SFT model before duality GRPO trains generation: can
the duality reward make its generated cells more recognisable as their condition?

On the RL generation prompts GRPO will train on (held out of SFT), with an independent judge (a k=5 nearest-
neighbour classifier on the real RL cells, in the PCA space of rank->expression inverted cells, as evaluation
scores generation):

- ``judge_accuracy_real``: the reward's own accuracy: the dual (the SFT model annotating a cell) names the type of
  the real cells;
- ``policy_accuracy``: the share of the policy's sampled cells (``samples`` per prompt at ``temperature``) the
  independent judge recognises as their condition;
- ``mean_reward``: the duality reward of those samples (scored as ``rewards.label_duals`` says: the dual's
  constrained greedy answer, or its probability of the condition);
- ``kl_optimum_accuracy``: the independent judge's accuracy under GRPO's KL-regularised optimum
  p*(y | x) ~ p_sft(y | x) exp(r(y) / beta), estimated by reweighting each prompt's samples by exp(r / beta);
- ``ceiling_gain``: ``kl_optimum_accuracy - policy_accuracy``: what the reward can add at the configured beta.
  At or below 0 the reward prefers samples the independent judge does not recognise better, so re-ranking the
  SFT model's own samples by the reward gains nothing (a warning; the gate in cellduality.training.label_signal
  reads it). It is a bound on re-ranking, not a forecast of GRPO, which can move the policy beyond the SFT
  model's samples: on the demo's three seeds it gave -0.002 to +0.010 while GRPO+duality gave -0.03 to +0.35
  (docs/duality-ablation.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellduality.evaluation.score import ExpressionSpace
from cellduality.evaluation.settings import EmbeddingSettings
from cellduality.io import atomic_path
from cellduality.tasks import prompts
from cellduality.tasks.rewards import RewardSettings, response_genes, response_label
from cellduality.tasks.schema import decode_column

log = logging.getLogger(__name__)


def kl_reweighted_accuracy(rewards: Sequence[Sequence[float]], right: Sequence[Sequence[float]],
                           beta: float) -> float:
    """Mean over prompts of sum_s w_s right_s with w = softmax(r / beta) over the prompt's samples."""
    out = []
    for r, ok in zip(rewards, right):
        r, ok = np.asarray(r, float), np.asarray(ok, float)
        if not len(r):
            continue
        z = (r - r.max()) / max(beta, 1e-12)
        w = np.exp(z) / np.exp(z).sum()
        out.append(float((w * ok).sum()))
    return float(np.mean(out)) if out else float("nan")


def generation_ceiling(model_dir: str | Path, tables: Sequence[str | Path], data: Mapping[str, Mapping[str, str]],
                       out: str | Path, *, samples: int, temperature: float, beta: float, max_prompts: int | None,
                       max_new_tokens: int, seed: int, embedding: EmbeddingSettings | None = None,
                       batch_size: int = 64, label_duals: str = "answer", constrain_to_candidates: bool = False) -> dict:
    """Measure (see the module notes) on at most ``max_prompts`` RL generation prompts of ``tables`` (the first of
    GRPO's seeded order) and write a JSON summary to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    from cellduality.evaluation.generation_metrics import knn_recognised
    from cellduality.training.datasets import rl_dataset
    from cellduality.training.decoding import generate_chat
    from cellduality.training.duality import model_dual_scorer
    from cellduality.training.setup import load_tokenizer, on_device

    rows = rl_dataset(tables, seed=seed, task_prompts={"generation": max_prompts}).to_pandas()
    embedding = embedding or EmbeddingSettings()
    tokenizer = load_tokenizer(model_dir)
    model = on_device(AutoModelForCausalLM.from_pretrained(model_dir))
    candidates = decode_column(rows, "candidates")
    metadata = [prompts.without(m, "cell_type") for m in decode_column(rows, "metadata")]

    def judge(cells: Sequence[Sequence[str] | None], index: Sequence[int]) -> list[str | None]:
        convs = [prompts.generation_dual_prompt(list(c), metadata[i], candidates[i] or None)
                 for c, i in zip(cells, index) if c]
        answers = iter(generate_chat(model, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     allowed_labels=[list(candidates[i]) for c, i in zip(cells, index) if c]))
        return [response_label(next(answers), candidates[i] or None) if c else None for c, i in zip(cells, index)]

    real_cells = [r.split() for r in rows["reference_sentence"]]
    named = judge(real_cells, range(len(rows)))
    judge_real = float(np.mean([n == y for n, y in zip(named, rows["label"])]))

    index = [i for i in range(len(rows)) for _ in range(samples)]
    conversations = [rows["prompt"].iloc[i] for i in index]  # rl_dataset decodes the prompts
    torch.manual_seed(seed)
    responses = generate_chat(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              temperature=temperature,  # as GRPO samples them: no label word in a cell
                              gene_rows=[True] * len(conversations) if constrain_to_candidates else None)
    genes = [response_genes(r) for r in responses]
    penalty = RewardSettings().format_penalty
    if label_duals == "probability":  # the dual's probability of the condition, as GRPO's frozen judge scores it
        kept = [k for k, g in enumerate(genes) if g]
        scored = model_dual_scorer(model, tokenizer, batch_size)(
            [prompts.generation_dual_prompt(list(genes[k]), metadata[index[k]], candidates[index[k]]) for k in kept],
            [list(candidates[index[k]]) for k in kept])
        rewards = [penalty if g is None else 0.0 for g in genes]
        for k, probabilities in zip(kept, scored):
            rewards[k] = probabilities.get(rows["label"].iloc[index[k]], 0.0)
    else:
        dual = judge(genes, index)
        rewards = [penalty if g is None else float(d == rows["label"].iloc[i]) for g, d, i in zip(genes, dual, index)]

    fit, space, real_e = ExpressionSpace(data).embed_references(rows["dataset"].iloc[0], rows["reference_sentence"],
                                                                embedding, seed)
    ok = [g is not None for g in genes]
    right = np.zeros(len(genes))
    if any(ok):
        generated = space.transform(fit.invert([" ".join(g) for g in genes if g is not None]).X)
        right[np.flatnonzero(ok)] = knn_recognised(real_e, rows["label"].tolist(), generated,
                                                   [rows["label"].iloc[i] for i, o in zip(index, ok) if o],
                                                   min(5, len(rows)))
    per_prompt = pd.DataFrame({"prompt": index, "reward": rewards, "right": right})
    grouped = [(g["reward"].tolist(), g["right"].tolist()) for _, g in per_prompt.groupby("prompt", sort=True)]
    policy = float(right.mean())
    optimum = kl_reweighted_accuracy([r for r, _ in grouped], [k for _, k in grouped], beta)
    summary = {"model": str(model_dir), "task": "generation", "n_prompts": len(rows), "samples": samples,
               "temperature": temperature, "beta": beta, "label_duals": label_duals, "judge_accuracy_real": judge_real,
               "policy_accuracy": policy, "mean_reward": float(np.mean(rewards)),
               "format_ok": float(np.mean(ok)), "kl_optimum_accuracy": optimum, "ceiling_gain": optimum - policy,
               "chance_rate": float(rows["label"].value_counts(normalize=True).max())}
    log.info("generation ceiling: %s", summary)
    if not optimum > policy:
        log.warning("ceiling check: at beta %g the duality reward's preferred samples are recognised as their "
                    "condition no more often (%.3f) than the policy's own samples (%.3f): re-ranking the SFT model's "
                    "samples by the reward gains nothing (GRPO may still move further)", beta, optimum, policy)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"summary": summary}, indent=1))
    return summary
