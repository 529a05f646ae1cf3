"""GRPO reward callables: complementary-task duality rewards (label-free) and the ground-truth oracle.

For each rollout of a primal prompt the dual prompt is built from the rollout's answer and the prompt's
known part x_k (SPEC table), answered by a dual generator (the live policy by default, or a frozen model),
and scored by reconstruction fidelity. Dual prompts are deduplicated before generation: the G rollouts of
one prompt that give the same answer share one dual generation (greedy by default), so they get the
same reward. The oracle reward is also computed in duality mode and logged (never optimised) as a
diagnostic of how well the duality reward tracks correctness.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from cellduality.tasks import prompts, rewards
from cellduality.tasks.parsing import parse_response

Messages = list[dict[str, str]]
DualGenerator = Callable[[list[Messages]], list[str]]


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return str(completion)


def _loads(value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    return json.loads(value) if isinstance(value, str) else value


class RolloutContext:
    """One rollout's row: the primal response and the prompt's reward columns, parsed once."""

    def __init__(self, response: str, row: dict[str, Any], strict: bool) -> None:
        self.response = response
        self.parsed = parse_response(response, strict=strict)
        self.task = row["task"]
        self.label = row.get("label") or ""
        self.candidates = _loads(row.get("candidates"), [])
        self.hidden = _loads(row.get("hidden_genes"), [])
        self.visible = _loads(row.get("visible_genes"), [])
        self.metadata = _loads(row.get("metadata"), {})
        self.reference = row.get("reference_sentence") or ""
        self.input_sentence = row.get("input_sentence") or ""


def dual_prompts(ctx: RolloutContext, strict: bool = False) -> list[Messages] | None:
    """The dual prompt(s) of one rollout, or None when the primal answer is unusable (no dual is run)."""
    if not ctx.parsed.format_ok:
        return None
    if ctx.task == "annotation":
        label = rewards.response_label(ctx.parsed, ctx.candidates or None)
        return None if label is None else [prompts.annotation_dual_prompt(ctx.visible, label, len(ctx.hidden), ctx.metadata)]
    if ctx.task == "sensitivity":
        label = rewards.response_label(ctx.parsed, ctx.candidates or None)
        drug = ctx.metadata.get("drug", "")
        return None if label is None else [
            prompts.sensitivity_dual_prompt(ctx.visible, drug, label, len(ctx.hidden), ctx.metadata)]
    if ctx.task == "generation":
        genes = rewards.response_genes(ctx.parsed)
        return [prompts.generation_dual_prompt(genes, prompts.without(ctx.metadata, "cell_type"),
                                               ctx.candidates or None)] if genes else None
    if ctx.task == "perturbation":
        genes = rewards.response_genes(ctx.parsed)
        return [prompts.perturbation_dual_prompt(genes, ctx.input_sentence.split(), ctx.candidates or None,
                                                 ctx.metadata)] if genes else None
    if ctx.task == "cellpuzzles":
        assignment = rewards.puzzle_assignment(ctx.parsed, ctx.candidates, len(ctx.hidden))
        if assignment is None:
            return None
        return [prompts.cellpuzzles_dual_prompt(visible, label, len(hidden), ctx.metadata)
                for visible, label, hidden in zip(ctx.visible, assignment, ctx.hidden)]
    raise ValueError(f"unknown task {ctx.task!r}")


def duality_reward(ctx: RolloutContext, duals: Sequence[str] | None, settings: rewards.RewardSettings) -> float:
    penalty, strict = settings.format_penalty, settings.strict_format
    dual = duals[0] if duals else None
    if ctx.task in ("annotation", "sensitivity"):
        return rewards.inpainting_duality_reward(ctx.parsed, dual, ctx.hidden, penalty, strict)
    if ctx.task in ("generation", "perturbation"):
        true = ctx.label if ctx.task == "generation" else ctx.metadata.get("drug", ctx.label)
        return rewards.categorical_duality_reward(ctx.parsed, dual, true, ctx.candidates or None, None, penalty, strict)
    return rewards.cellpuzzles_duality_reward(ctx.parsed, duals, ctx.hidden, ctx.candidates, None, penalty, strict)


def oracle_reward(ctx: RolloutContext, settings: rewards.RewardSettings) -> float:
    penalty, strict = settings.format_penalty, settings.strict_format
    if ctx.task in ("annotation", "sensitivity"):
        return rewards.classification_reward(ctx.parsed, ctx.label, ctx.candidates or None, None, penalty, strict)
    if ctx.task in ("generation", "perturbation"):
        return rewards.generation_reward(ctx.parsed, ctx.reference, penalty, strict)
    return rewards.cellpuzzles_reward(ctx.parsed, ctx.label, ctx.candidates, settings.cellpuzzles, None, penalty,
                                      strict)


class TaskReward:
    """A TRL reward function (``reward_funcs=[TaskReward(...)]``) for every task of the mixed RL dataset."""

    def __init__(self, settings: rewards.RewardSettings, dual_generator: DualGenerator | None = None) -> None:
        self.settings = settings
        self.dual_generator = dual_generator
        self.__name__ = f"{settings.mode}_reward"
        self.last_stats: dict[str, float] = {}

    def __call__(self, prompts: list, completions: list, task: list[str], log_metric=None, **columns) -> list[float]:
        rows = [{"task": t, **{k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == len(task)}}
                for i, t in enumerate(task)]
        contexts = [RolloutContext(completion_text(c), row, self.settings.strict_format)
                    for c, row in zip(completions, rows)]
        oracle = [oracle_reward(ctx, self.settings) for ctx in contexts]
        stats = {"oracle_reward": sum(oracle) / len(oracle),
                 "format_ok": sum(ctx.parsed.format_ok for ctx in contexts) / len(contexts)}
        if self.settings.mode == "oracle":
            result = oracle
        else:
            result, stats["dual_generations"] = self._duality(contexts)
        stats["reward"] = sum(result) / len(result)
        self.last_stats = stats
        if log_metric is not None:
            for name, value in stats.items():
                log_metric(name, float(value))
        return result

    def _duality(self, contexts: list[RolloutContext]) -> tuple[list[float], int]:
        if self.dual_generator is None:
            raise RuntimeError("duality rewards need a dual generator (attach the trainer or a frozen model)")
        requests = [dual_prompts(ctx, self.settings.strict_format) for ctx in contexts]
        unique: dict[str, Messages] = {}
        for group in requests:
            for messages in group or []:
                unique.setdefault(json.dumps(messages, sort_keys=True), messages)
        keys = list(unique)
        replies = dict(zip(keys, self.dual_generator([unique[k] for k in keys]))) if keys else {}
        result = []
        for ctx, group in zip(contexts, requests):
            duals = None if group is None else [replies[json.dumps(m, sort_keys=True)] for m in group]
            result.append(duality_reward(ctx, duals, self.settings))
        return result, len(keys)


def policy_dual_generator(trainer, max_new_tokens: int, temperature: float = 0.0,
                          batch_size: int = 16) -> DualGenerator:
    """Dual answers from the live policy being trained (unwrapped for generation, no gradients)."""
    from trl.models import unwrap_model_for_generation

    from cellduality.training.generation import generate_chat

    def generate(conversations: list[Messages]) -> list[str]:
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            return generate_chat(model, trainer.processing_class, conversations, max_new_tokens=max_new_tokens,
                                 temperature=temperature, batch_size=batch_size)

    return generate


def model_dual_generator(model, tokenizer, max_new_tokens: int, temperature: float = 0.0,
                         batch_size: int = 16) -> DualGenerator:
    """Dual answers from a fixed model (e.g. the frozen SFT model)."""
    from cellduality.training.generation import generate_chat

    def generate(conversations: list[Messages]) -> list[str]:
        return generate_chat(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                             temperature=temperature, batch_size=batch_size)

    return generate
