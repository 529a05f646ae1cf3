"""One GRPO rollout of a primal prompt, and the per-task functions that judge it.

:class:`Rollout` holds the primal response (parsed once) and the reward columns of the prompt's task-table
row (decoded with :mod:`cellduality.tasks.schema`). For each task, :mod:`cellduality.tasks.registry` binds:

- ``duals``: the dual prompt(s) built from the rollout's answer and the prompt's known part x_k, or None when
  the answer is unusable (no dual is run);
- ``duality_reward``: the label-free reward from the dual generator's answer(s);
- ``oracle_reward``: the ground-truth reward (the ``oracle`` mode, and a logged diagnostic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cellduality.tasks import prompts, rewards
from cellduality.tasks.parsing import parse_response
from cellduality.tasks.schema import decode_value

Messages = prompts.Messages


class Rollout:
    """One rollout's row: the primal response and the prompt's reward columns, parsed once."""

    def __init__(self, response: str, row: Mapping[str, Any], strict: bool) -> None:
        self.response = response
        self.parsed = parse_response(response, strict=strict)
        self.task = row["task"]
        self.label = row.get("label") or ""
        self.candidates = decode_value("candidates", row.get("candidates"), row_id=row.get("prompt_id"))
        self.hidden = decode_value("hidden_genes", row.get("hidden_genes"), row_id=row.get("prompt_id"))
        self.visible = decode_value("visible_genes", row.get("visible_genes"), row_id=row.get("prompt_id"))
        self.metadata = decode_value("metadata", row.get("metadata"), row_id=row.get("prompt_id"))
        self.reference = row.get("reference_sentence") or ""
        self.input_sentence = row.get("input_sentence") or ""


# ---------------------------------------------------------------- dual prompts from a rollout

def annotation_duals(r: Rollout) -> list[Messages] | None:
    label = rewards.response_label(r.parsed, r.candidates or None)
    return None if label is None else [prompts.annotation_dual_prompt(r.visible, label, len(r.hidden), r.metadata)]


def sensitivity_duals(r: Rollout) -> list[Messages] | None:
    label = rewards.response_label(r.parsed, r.candidates or None)
    drug = r.metadata.get("drug", "")
    return None if label is None else [
        prompts.sensitivity_dual_prompt(r.visible, drug, label, len(r.hidden), r.metadata)]


def generation_duals(r: Rollout) -> list[Messages] | None:
    genes = rewards.response_genes(r.parsed)
    return [prompts.generation_dual_prompt(genes, prompts.without(r.metadata, "cell_type"),
                                           r.candidates or None)] if genes else None


def perturbation_duals(r: Rollout) -> list[Messages] | None:
    genes = rewards.response_genes(r.parsed)
    return [prompts.perturbation_dual_prompt(genes, r.input_sentence.split(), r.candidates or None,
                                             r.metadata)] if genes else None


def cellpuzzles_duals(r: Rollout) -> list[Messages] | None:
    assignment = rewards.puzzle_assignment(r.parsed, r.candidates, len(r.hidden))
    if assignment is None:
        return None
    return [prompts.cellpuzzles_dual_prompt(visible, label, len(hidden), r.metadata)
            for visible, label, hidden in zip(r.visible, assignment, r.hidden)]


# ---------------------------------------------------------------- duality rewards

def inpainting_duality(r: Rollout, duals: Sequence[str] | None, settings: rewards.RewardSettings) -> float:
    """Classification tasks: RWJS of the dual's reconstruction of the hidden genes."""
    dual = duals[0] if duals else None
    return rewards.inpainting_duality_reward(r.parsed, dual, r.hidden, settings.format_penalty,
                                             settings.strict_format)


def label_duality(r: Rollout, duals: Sequence[str | Mapping[str, float]] | None,
                  settings: rewards.RewardSettings) -> float:
    """Generation: 1[the dual recovers the conditioning label] (or the dual's probability of it: a dual given as
    the probability of each candidate)."""
    dual = duals[0] if duals else None
    return rewards.categorical_duality_reward(r.parsed, dual, r.label, r.candidates or None, None,
                                              settings.format_penalty, settings.strict_format)


def drug_duality(r: Rollout, duals: Sequence[str | Mapping[str, float]] | None,
                 settings: rewards.RewardSettings) -> float:
    """Perturbation: 1[the dual recovers the drug] (or the dual's probability of it, as :func:`label_duality`)."""
    dual = duals[0] if duals else None
    return rewards.categorical_duality_reward(r.parsed, dual, r.metadata.get("drug", r.label), r.candidates or None,
                                              None, settings.format_penalty, settings.strict_format)


def cellpuzzles_duality(r: Rollout, duals: Sequence[str] | None, settings: rewards.RewardSettings) -> float:
    return rewards.cellpuzzles_duality_reward(r.parsed, duals, r.hidden, r.candidates, None,
                                              settings.format_penalty, settings.strict_format)


# ---------------------------------------------------------------- oracle rewards

def classification_oracle(r: Rollout, settings: rewards.RewardSettings) -> float:
    return rewards.classification_reward(r.parsed, r.label, r.candidates or None, None, settings.format_penalty,
                                         settings.strict_format)


def generation_oracle(r: Rollout, settings: rewards.RewardSettings) -> float:
    return rewards.generation_reward(r.parsed, r.reference, settings.format_penalty, settings.strict_format)


def cellpuzzles_oracle(r: Rollout, settings: rewards.RewardSettings) -> float:
    response = r.response if settings.cellpuzzles == "released" else r.parsed  # released: Cell-o1's own rules
    return rewards.cellpuzzles_reward(response, r.label, r.candidates, settings.cellpuzzles, None,
                                      settings.format_penalty, settings.strict_format)
