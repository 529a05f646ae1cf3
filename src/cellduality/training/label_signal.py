""""True label wins": does the annotation duality reward prefer the right label, for a given model?

For every cell, the dual inpainting prompt is built once per candidate label (same mask), a generator
reconstructs the hidden genes, and each reconstruction is scored with RWJS. The cell counts as a *win* when
the true label's score is strictly the best, a *tie* when it shares the best score, a *loss* otherwise.
A win rate near 1/len(candidates) means the reward barely depends on the label, so duality GRPO cannot help.
The win rate is also the accuracy of the reward's own choice of label. :func:`true_label_wins_for_model` measures
the model's greedy answers on the same cells as well (``policy_accuracy``, and the win rates on the cells it
answers right and wrong): a reward that picks the true label less often than the model already answers it
pulls the model away from right answers on more cells than it corrects: GRPO on it is not expected to raise
annotation accuracy, and lowers it where the reward outweighs the KL term to the SFT model
(docs/duality-ablation.md).
:func:`true_label_wins` is the model-free core; :func:`true_label_wins_for_model` runs it for a trained model
on the RL cells (the cells the reward is used on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellduality.errors import warn
from cellduality.io import atomic_path
from cellduality.tasks.inpainting import InpaintingMask, InpaintingSettings
from cellduality.tasks.prompts import Messages, annotation_dual_prompt
from cellduality.tasks.registry import get_task
from cellduality.tasks.rewards import inpainting_reward
from cellduality.tasks.schema import decode_value
from cellduality.training.datasets import rl_dataset
from cellduality.training.decoding import candidate_log_probs, generate_chat, reply_prefix
from cellduality.training.settings import DiagnosticsSettings
from cellduality.training.setup import load_tokenizer, on_device

log = logging.getLogger(__name__)

Generate = Callable[[list[Messages]], Sequence[str]]


@dataclass(frozen=True)
class DiagnosticExample:
    """One cell: its gene list, true label, candidate labels and prompt id (seeds the mask)."""

    genes: Sequence[str]
    label: str
    candidates: Sequence[str]
    prompt_id: str
    metadata: Mapping[str, object] | None = None
    mask: InpaintingMask | None = None  # the RL row's own mask (what the duality reward uses); None: one from the settings


@dataclass
class TrueLabelWinsReport:
    """Counts, rates and mean rewards; ``per_cell`` holds every cell's scores by label."""

    n_cells: int
    wins: int
    ties: int
    losses: int
    mean_true_reward: float
    mean_other_reward: float
    per_cell: list[dict[str, object]] = field(default_factory=list)

    @property
    def win_rate(self) -> float:
        return self.wins / self.n_cells if self.n_cells else 0.0

    @property
    def tie_rate(self) -> float:
        return self.ties / self.n_cells if self.n_cells else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "n_cells": self.n_cells,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "win_rate": self.win_rate,
            "tie_rate": self.tie_rate,
            "mean_true_reward": self.mean_true_reward,
            "mean_other_reward": self.mean_other_reward,
        }


def true_label_wins(
    examples: Sequence[DiagnosticExample],
    generate: Generate,
    inpainting: InpaintingSettings | None = None,
    batch_size: int = 256,
) -> TrueLabelWinsReport:
    """Run the diagnostic; ``generate`` maps a list of chat-message lists to one response string each; a cell
    without a mask of its own gets one of ``inpainting`` (default: the schema's, unsalted)."""
    masker = (inpainting or InpaintingSettings()).masker()
    jobs: list[tuple[int, str, Messages]] = []
    masks = []
    for i, ex in enumerate(examples):
        if ex.label not in ex.candidates:
            raise ValueError(f"example {ex.prompt_id!r}: true label {ex.label!r} is not among its candidates")
        mask = ex.mask or masker.mask(ex.genes, ex.prompt_id)
        masks.append(mask)
        for cand in dict.fromkeys(ex.candidates):
            jobs.append((i, cand, annotation_dual_prompt(mask.visible, cand, mask.n_hidden, ex.metadata)))
    responses: list[str] = []
    for start in range(0, len(jobs), max(1, batch_size)):
        chunk = [job[2] for job in jobs[start : start + batch_size]]
        out = list(generate(chunk))
        if len(out) != len(chunk):
            raise ValueError(f"generate returned {len(out)} responses for {len(chunk)} prompts")
        responses.extend(out)
    scores: list[dict[str, float]] = [{} for _ in examples]
    for (i, cand, _), response in zip(jobs, responses):
        scores[i][cand] = inpainting_reward(response, masks[i].hidden)
    wins = ties = 0
    true_rewards: list[float] = []
    other_rewards: list[float] = []
    per_cell: list[dict[str, object]] = []
    for ex, cell_scores in zip(examples, scores):
        true_score = cell_scores[ex.label]
        others = [s for cand, s in cell_scores.items() if cand != ex.label]
        best_other = max(others, default=float("-inf"))
        outcome = "win" if true_score > best_other else "tie" if true_score == best_other else "loss"
        wins += outcome == "win"
        ties += outcome == "tie"
        true_rewards.append(true_score)
        other_rewards.extend(others)
        per_cell.append({"prompt_id": ex.prompt_id, "label": ex.label, "outcome": outcome, "scores": cell_scores})
    n = len(examples)
    return TrueLabelWinsReport(
        n_cells=n,
        wins=wins,
        ties=ties,
        losses=n - wins - ties,
        mean_true_reward=sum(true_rewards) / n if n else 0.0,
        mean_other_reward=sum(other_rewards) / len(other_rewards) if other_rewards else 0.0,
        per_cell=per_cell,
    )



def true_label_wins_for_model(model_path: str, tables: Sequence[str | Path], out: str | Path,
                              diagnostics: DiagnosticsSettings, *, seed: int, max_new_tokens: int,
                              batch_size: int = 32, beta: float | None = None) -> dict:
    """Measure on ``diagnostics.true_label_wins_cells`` RL cells (the cells the reward is used on; chosen with the
    RL prompts' ``seed``), each with the inpainting mask its task-table row holds (the mask the duality reward
    uses; dual answers of at most ``max_new_tokens``), and write a JSON summary. With ``beta`` (config
    ``grpo.beta``) also the annotation ceiling: :func:`kl_optimum_summary`."""
    from transformers import AutoModelForCausalLM

    from cellduality.training.duality import model_dual_generator

    rows = [row for row in rl_dataset(tables, diagnostics.true_label_wins_cells, seed=seed, labelled_only=True)
            if row["task"] == "annotation" and row["label"]]
    examples = [DiagnosticExample(genes=row["input_sentence"].split(), label=row["label"],
                                  candidates=decode_value("candidates", row["candidates"], row_id=row["prompt_id"]),
                                  prompt_id=row["prompt_id"],
                                  metadata=decode_value("metadata", row["metadata"], row_id=row["prompt_id"]),
                                  mask=_row_mask(row))
                for row in rows]
    tokenizer = load_tokenizer(model_path)
    model = on_device(AutoModelForCausalLM.from_pretrained(model_path))
    report = true_label_wins(examples, model_dual_generator(model, tokenizer, max_new_tokens, batch_size=batch_size),
                             batch_size=batch_size)
    answers = generate_chat(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens=max_new_tokens,
                            batch_size=batch_size, allowed_labels=[ex.candidates for ex in examples])
    right = [get_task("annotation").parse_prediction(answer, ex.candidates)[1] == ex.label
             for answer, ex in zip(answers, examples)]
    for cell, ok in zip(report.per_cell, right):
        cell["policy_right"] = ok
    summary = {"model": str(model_path), "task": "annotation", "chance_rate": _chance(examples), **report.summary(),
               **policy_summary(report.per_cell)}
    if beta is not None and examples:
        conversations = [row["prompt"] for row in rows]
        log_prior = candidate_log_probs(model, tokenizer, conversations, [_options(ex) for ex in examples],
                                        [reply_prefix(a) for a in answers], batch_size)
        summary.update(kl_optimum_summary(report.per_cell, examples, log_prior, beta, summary["policy_accuracy"]))
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"summary": summary, "per_cell": report.per_cell}, indent=1))
    return summary


def policy_summary(per_cell: Sequence[Mapping[str, object]]) -> dict[str, float | None]:
    """The model's accuracy on the diagnostic's cells (``policy_right`` per cell) and the true-label win rate on
    the cells it answers right (where the reward can only hurt) and wrong (where it can help); None: no such cell."""
    def rate(cells: list) -> float | None:
        return sum(c["outcome"] == "win" for c in cells) / len(cells) if cells else None

    right = [c for c in per_cell if c["policy_right"]]
    wrong = [c for c in per_cell if not c["policy_right"]]
    return {"policy_accuracy": len(right) / len(per_cell) if per_cell else None,
            "win_rate_policy_right": rate(right), "win_rate_policy_wrong": rate(wrong)}


def _options(example: DiagnosticExample) -> list[str]:
    return list(dict.fromkeys(example.candidates))


def kl_optimum_summary(per_cell: Sequence[Mapping[str, object]], examples: Sequence[DiagnosticExample],
                       log_prior: Sequence[Sequence[float]], beta: float, policy_accuracy: float | None) -> dict:
    """The annotation ceiling: on the diagnostic's cells, the accuracy of the most likely answer of GRPO's
    KL-regularised optimum at ``beta`` (:func:`kl_optimum_accuracy`; ``log_prior``: the SFT model's log-probability
    of each of the cell's candidates, ``per_cell``'s ``scores``: the duality reward of each) and its gain over the
    model's own answers (``policy_accuracy``). Like the generation ceiling check, a bound on what re-weighting the
    SFT model by the reward gives, not a forecast of GRPO."""
    right = []
    for cell, example, prior in zip(per_cell, examples, log_prior):
        options = _options(example)
        rewards = [float(cell["scores"][option]) for option in options]
        right.append(kl_optimum_accuracy([prior], [rewards], [options.index(example.label)], beta))
    accuracy = sum(right) / len(right) if right else float("nan")
    gain = accuracy - policy_accuracy if policy_accuracy is not None else None
    return {"beta": beta, "kl_optimum_accuracy": accuracy, "ceiling_gain": gain}


def kl_optimum_accuracy(log_prior: Sequence[Sequence[float]], rewards: Sequence[Sequence[float]],
                        gold: Sequence[int], beta: float) -> float:
    """Accuracy of the label that maximises ``log p_ref(y) + r(y) / beta`` in each row (a cell; columns: its
    candidates): the most likely answer of GRPO's KL-regularised optimum p*(y) ~ p_ref(y) exp(r(y) / beta), where
    p_ref is the SFT model and r the reward. ``beta`` inf: the SFT model's own choice; 0: the reward's."""
    import numpy as np

    prior, reward = np.asarray(log_prior, dtype=float), np.asarray(rewards, dtype=float)
    if prior.shape != reward.shape or prior.shape[0] != len(gold):
        raise ValueError(f"kl_optimum_accuracy: shapes {prior.shape}, {reward.shape} and {len(gold)} labels differ")
    if not len(gold):
        return 0.0
    objective = prior if np.isinf(beta) else reward if beta == 0 else prior + reward / beta
    return float((objective.argmax(axis=1) == np.asarray(gold)).mean())


def _row_mask(row: Mapping[str, object]) -> InpaintingMask | None:
    hidden = decode_value("hidden_genes", row["hidden_genes"], row_id=row["prompt_id"])
    visible = decode_value("visible_genes", row["visible_genes"], row_id=row["prompt_id"])
    return InpaintingMask(tuple(visible), tuple(hidden), ()) if hidden else None


def _chance(examples: Sequence[DiagnosticExample]) -> float:
    return sum(1 / len(set(ex.candidates)) for ex in examples) / len(examples) if examples else 0.0


def label_signal_gate(path: str | Path | None) -> dict | None:
    """Read the SFT model's "true label wins" summary before duality GRPO; warn (not fail) when its win rate is
    at or below chance, because then the duality reward cannot prefer the right label, or below the model's own
    accuracy on the same cells (``policy_accuracy``), because then GRPO on it is not expected to raise accuracy.
    Returns the summary."""
    if not path or not Path(path).is_file():
        return None
    summary = json.loads(Path(path).read_text())["summary"]
    rate, chance, n = summary["win_rate"], summary["chance_rate"], summary["n_cells"]
    if rate <= chance:
        message = (f"label-signal gate: the SFT model's true-label win rate is {rate:.3f} on {n} cells, at or below "
                   f"chance {chance:.3f}, so the duality reward carries no label signal and GRPO+duality is not "
                   "expected to improve annotation (train SFT longer or on more dual examples)")
        warn(message, log)
    elif summary.get("policy_accuracy") is not None and rate < summary["policy_accuracy"]:
        warn(f"label-signal gate: the duality reward picks the true label on {rate:.3f} of {n} cells, less often "
             f"than the SFT model already answers it ({summary['policy_accuracy']:.3f}), so GRPO+duality is not "
             "expected to raise annotation accuracy, and lowers it where the reward outweighs the KL term (small "
             "grpo.beta, grpo.scale_rewards: group; docs/duality-ablation.md)", log)
    else:
        log.info("label-signal gate: true-label win rate %.3f on %d cells vs chance %.3f", rate, n, chance)
    check_ceiling(summary)
    return summary


def ceiling_gate(path: str | Path | None) -> dict | None:
    """Read the generation ceiling check (cellduality.evaluation.ceiling) before duality GRPO and warn as
    :func:`check_ceiling`. Returns the summary."""
    if not path or not Path(path).is_file():
        return None
    summary = json.loads(Path(path).read_text())["summary"]
    check_ceiling(summary)
    return summary


def check_ceiling(summary: Mapping[str, object]) -> None:
    """Warn (not fail) when the accuracy of the reward's KL-optimum (``kl_optimum_accuracy``) is not above the
    policy's own (``policy_accuracy``): re-weighting the SFT model by the reward gains nothing at that beta."""
    optimum, policy = summary.get("kl_optimum_accuracy"), summary.get("policy_accuracy")
    if optimum is None or policy is None:
        return
    if not optimum > policy:
        warn(f"ceiling check ({summary['task']}): at beta {summary['beta']} the duality reward's KL-optimum is right on "
             f"{optimum:.3f}, no more often than the SFT model's own answers ({policy:.3f}): re-weighting the SFT "
             "model by the reward gains nothing; GRPO may still move further (a bound, not a forecast)", log)
    else:
        log.info("ceiling check (%s): KL-optimum %.3f vs policy %.3f", summary["task"], optimum, policy)
