"""Which label-free generation reward tracks an independent judge? A pilot on one SFT model, before any GRPO.

    python benchmarks/experiments/generation_reward_views.py --results results [--rep 0] [--samples 8]
        [--prompts 120] [--views 4] [--keep 0.5] [--beta 0.01] [--seed 0]

On the RL generation prompts GRPO trains on (GRPO's seeded order, the first ``--prompts``), the SFT model samples
``--samples`` cells per prompt at temperature 1.0. Each sampled cell is judged twice:

- by the independent judge evaluation uses: a k=5 nearest-neighbour classifier on the real RL cells in the PCA
  space of rank->expression inverted cells (``right``: recognised as the prompt's condition);
- by each candidate duality reward, all label-free (the frozen SFT model annotates the generated cell; only the
  prompt's own condition is compared):

  ``greedy``   1[the judge's greedy answer, constrained to the candidates, is the condition] (the paper's reward);
  ``prob``     the judge's probability of the condition, renormalised over the candidates;
  ``views``    the mean of ``prob`` over ``--views`` views of the cell, each keeping a random ``--keep`` share of
               its genes in rank order (seeded by prompt and view, so a prompt's samples share the views). A cell
               that carries a few of the condition's marker genes in a generic profile convinces the judge only
               in the views that keep those genes; a cell whose whole profile is of the type, in every view;
  ``oracle``   for reference, the positive control's reward (uses the label: RWJS to a real cell of the condition).

Printed per reward: AUC of the reward against ``right`` over all samples and within prompts (mean over prompts
with both outcomes: what GRPO's group-relative advantage sees), the share of prompts whose samples get different
rewards (groups with spread), and the independent judge's accuracy under GRPO's KL-regularised optimum at
``--beta`` (re-ranking each prompt's samples by exp(r / beta)) against the policy's own.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from cellduality.evaluation.ceiling import kl_reweighted_accuracy
from cellduality.evaluation.generation_metrics import knn_recognised
from cellduality.evaluation.score import ExpressionSpace
from cellduality.evaluation.settings import EmbeddingSettings
from cellduality.tasks import prompts
from cellduality.tasks.rewards import generation_reward, response_genes, response_label
from cellduality.tasks.schema import decode_column


def auc(scores, labels) -> float:
    """Probability that a random right sample outscores a random wrong one (ties count half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def view(genes: list[str], keep: float, key: str) -> list[str]:
    rng = random.Random(key)
    n = max(1, round(len(genes) * keep))
    return [genes[i] for i in sorted(rng.sample(range(len(genes)), n))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--rep", type=int, default=0)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="pbmc68k")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from cellduality.training.datasets import rl_dataset
    from cellduality.training.decoding import generate_chat
    from cellduality.training.duality import model_dual_scorer
    from cellduality.training.setup import load_tokenizer

    started = time.time()
    results = Path(args.results)
    model_dir = results / "models" / "sft" / f"rep{args.rep}"
    rows = rl_dataset([results / "tasks" / "generation" / f"{args.dataset}.parquet"], seed=args.seed,
                      task_prompts={"generation": args.prompts}).to_pandas()
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    candidates = decode_column(rows, "candidates")
    metadata = [prompts.without(m, "cell_type") for m in decode_column(rows, "metadata")]
    labels = rows["label"].tolist()

    index = [i for i in range(len(rows)) for _ in range(args.samples)]
    torch.manual_seed(args.seed)
    responses = generate_chat(model, tokenizer, [rows["prompt"].iloc[i] for i in index], max_new_tokens=64,
                              batch_size=64, temperature=1.0)
    genes = [response_genes(r) for r in responses]
    ok = [g is not None and len(g) > 0 for g in genes]
    kept = [k for k, o in enumerate(ok) if o]

    score = model_dual_scorer(model, tokenizer, batch_size=64)  # GRPO's frozen judge with label_duals: probability

    def probability(cells: list[list[str]], at: list[int]) -> np.ndarray:
        """The judge's probability of each sample's condition, renormalised over the prompt's candidates."""
        scored = score([prompts.generation_dual_prompt(c, metadata[index[k]], candidates[index[k]])
                        for c, k in zip(cells, at)], [list(candidates[index[k]]) for k in at])
        return np.array([p.get(labels[index[k]], 0.0) for p, k in zip(scored, at)])

    convs = [prompts.generation_dual_prompt(genes[k], metadata[index[k]], candidates[index[k]]) for k in kept]
    answers = generate_chat(model, tokenizer, convs, max_new_tokens=64, batch_size=64,
                            allowed_labels=[list(candidates[index[k]]) for k in kept])
    reward = {"greedy": np.full(len(index), -1.0), "prob": np.full(len(index), -1.0),
              "views": np.full(len(index), -1.0)}
    for k, a in zip(kept, answers):
        reward["greedy"][k] = float(response_label(a, candidates[index[k]]) == labels[index[k]])
    reward["prob"][kept] = probability([genes[k] for k in kept], kept)
    per_view = [probability([view(genes[k], args.keep, f"{rows['prompt_id'].iloc[index[k]]}:{v}") for k in kept], kept)
                for v in range(args.views)]
    reward["views"][kept] = np.mean(per_view, axis=0)
    # the positive control's reward (uses the ground truth: a reference, not a candidate)
    reward["oracle"] = np.array([generation_reward(r, rows["reference_sentence"].iloc[i]) for r, i in zip(responses, index)])

    fit, space, real_e = ExpressionSpace({args.dataset: {
        "h5ad": str(results / "processed" / f"{args.dataset}.h5ad"),
        "sentences": str(results / "cell_sentences" / f"{args.dataset}.parquet")}}).embed_references(
        args.dataset, rows["reference_sentence"], EmbeddingSettings(), args.seed)
    right = np.zeros(len(index))
    generated = space.transform(fit.invert([" ".join(genes[k]) for k in kept]).X)
    right[kept] = knn_recognised(real_e, labels, generated, [labels[index[k]] for k in kept], 5)

    # judge on real cells, for reference: the reward's own accuracy
    real = [r.split() for r in rows["reference_sentence"]]
    real_convs = [prompts.generation_dual_prompt(real[i], metadata[i], candidates[i]) for i in range(len(rows))]
    real_named = generate_chat(model, tokenizer, real_convs, max_new_tokens=64, batch_size=64,
                               allowed_labels=[list(c) for c in candidates])
    judge_real = float(np.mean([response_label(a, candidates[i]) == labels[i] for i, a in enumerate(real_named)]))

    by_prompt = {}
    for k, i in enumerate(index):
        by_prompt.setdefault(i, []).append(k)
    policy = float(right.mean())
    figures = {"model": str(model_dir), "prompts": len(rows), "samples": args.samples, "format_ok": float(np.mean(ok)),
               "judge_accuracy_real": judge_real, "policy_accuracy": policy,
               "majority_share": float(rows["label"].value_counts(normalize=True).max()), "rewards": {}}
    print(f"{model_dir}: {len(rows)} prompts x {args.samples} samples, format ok {np.mean(ok):.3f}, judge accuracy "
          f"on real cells {judge_real:.3f}, policy accuracy (kNN judge) {policy:.3f}")
    print("reward   mean   AUC(all)  AUC(within prompts, n)  groups with spread  KL-optimum acc  gain")
    for name, r in reward.items():
        within = [auc(r[ks], right[ks]) for ks in by_prompt.values() if 0 < right[ks].sum() < len(ks)]
        spread = float(np.mean([np.ptp(r[ks]) > 1e-9 for ks in by_prompt.values()]))
        optimum = kl_reweighted_accuracy([r[ks] for ks in by_prompt.values()], [right[ks] for ks in by_prompt.values()],
                                         args.beta)
        figures["rewards"][name] = {"mean": float(r.mean()), "auc_all": auc(r[kept], right[kept]),
                                    "auc_within": float(np.nanmean(within)), "n_within": len(within),
                                    "spread": spread, "kl_optimum_accuracy": optimum, "gain": optimum - policy}
        f = figures["rewards"][name]
        print(f"{name:7s} {f['mean']:6.3f}  {f['auc_all']:7.3f}  {f['auc_within']:7.3f} ({len(within):3d})"
              f"          {spread:6.3f}            {optimum:6.3f}       {optimum - policy:+.3f}")
    print(f"{time.time() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
