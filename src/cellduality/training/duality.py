"""GRPO reward callables: complementary-task duality rewards (label-free) and the ground-truth oracle.

For each rollout of a primal prompt the dual prompt is built from the rollout's answer and the prompt's
known part x_k (the task's ``duals`` in :mod:`cellduality.tasks.registry`), answered by a dual generator
(the live policy by default, or a frozen model), and scored by reconstruction fidelity (the task's
``duality_reward``). Dual prompts are deduplicated before generation: the G rollouts of
one prompt that give the same answer share one dual generation (greedy by default), so they get the
same reward. With ``rewards.label_duals: probability`` a dual that names a label (generation's type,
perturbation's drug) is scored instead of generated: the dual model's probability of each of the prompt's
candidates (a dual scorer, one teacher-forced forward pass), and the reward is the probability of the condition.
The oracle reward is also computed in duality mode and logged (never optimised) as a diagnostic of how well
the duality reward tracks correctness. The ``shuffled`` reward (the ablation's negative control) is the duality
reward scored against another prompt's condition (:func:`shuffle_conditions`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from cellduality.tasks import rewards
from cellduality.tasks.registry import get_task
from cellduality.tasks.rollouts import Rollout

Messages = list[dict[str, str]]
DualGenerator = Callable[[list[Messages]], list[str]]
# conversations and each one's candidate labels -> each one's probability of every candidate
DualScorer = Callable[[list[Messages], list[Sequence[str]]], list[dict[str, float]]]


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return str(completion)


def dual_prompts(ctx: Rollout, strict: bool = False) -> list[Messages] | None:
    """The dual prompt(s) of one rollout, or None when the primal answer is unusable (no dual is run)."""
    if not ctx.parsed.format_ok:
        return None
    return get_task(ctx.task).rollout_duals(ctx)


def duality_reward(ctx: Rollout, duals: Sequence[str] | None, settings: rewards.RewardSettings) -> float:
    return get_task(ctx.task).rollout_duality_reward(ctx, duals, settings)


def oracle_reward(ctx: Rollout, settings: rewards.RewardSettings) -> float:
    return get_task(ctx.task).rollout_oracle_reward(ctx, settings)


# what a rollout's duality reward is scored against: the condition the dual must recover
CONDITION_COLUMNS = ("label", "hidden_genes")


def shuffle_conditions(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``rows`` with each prompt's condition (:data:`CONDITION_COLUMNS`; a perturbation's drug in its metadata)
    taken from another prompt of the same task in the batch (a seeded derangement of the batch's distinct
    prompts; a task with one prompt in the batch keeps its own). The G rollouts of one prompt keep one
    condition, so the group's advantages stay comparable, but the reward no longer says anything about the
    prompt: the negative control of the ablation."""
    import random

    out = [dict(row) for row in rows]
    by_task: dict[str, list[str]] = {}
    for row in rows:
        ids = by_task.setdefault(row["task"], [])
        if row.get("prompt_id") not in ids:
            ids.append(row.get("prompt_id"))
    first = {(row["task"], row.get("prompt_id")): row for row in rows}
    for task, ids in by_task.items():
        if len(ids) < 2:
            continue
        shift = random.Random(f"{seed}:{task}:{'|'.join(map(str, ids))}").randrange(1, len(ids))
        donor = {pid: first[(task, ids[(i + shift) % len(ids)])] for i, pid in enumerate(ids)}
        for row in out:
            if row["task"] != task:
                continue
            source = donor[row.get("prompt_id")]
            row.update({c: source[c] for c in CONDITION_COLUMNS if c in source})
            if task == "perturbation" and "metadata" in source:
                metadata = json.loads(row["metadata"] or "{}")
                metadata["drug"] = json.loads(source["metadata"] or "{}").get("drug")
                row["metadata"] = json.dumps(metadata)
    return out


class TaskReward:
    """A TRL reward function (``reward_funcs=[TaskReward(...)]``) for every task of the mixed RL dataset."""

    def __init__(self, settings: rewards.RewardSettings, dual_generator: DualGenerator | None = None,
                 dual_scorer: DualScorer | None = None) -> None:
        self.settings = settings
        self.dual_generator = dual_generator
        self.dual_scorer = dual_scorer
        self.__name__ = f"{settings.mode}_reward"
        self.last_stats: dict[str, float] = {}
        self._calls = 0  # salts the shuffled reward's permutation per batch

    def __call__(self, prompts: list, completions: list, task: list[str], log_metric=None, **columns) -> list[float]:
        rows = [{"task": t, **{k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == len(task)}}
                for i, t in enumerate(task)]
        contexts = [Rollout(completion_text(c), row, self.settings.strict_format)
                    for c, row in zip(completions, rows)]
        oracle = [oracle_reward(ctx, self.settings) for ctx in contexts]  # the true condition, always
        if self.settings.mode == "shuffled":
            self._calls += 1
            contexts = [Rollout(completion_text(c), row, self.settings.strict_format)
                        for c, row in zip(completions, shuffle_conditions(rows, self._calls))]
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

    def _scored(self, ctx: Rollout) -> bool:
        """Whether ``ctx``'s dual is scored over its candidates rather than generated (``rewards.label_duals``)."""
        return (self.settings.label_duals == "probability" and bool(ctx.candidates)
                and get_task(ctx.task).dual_kind == "label")

    def _duality(self, contexts: list[Rollout]) -> tuple[list[float], int]:
        requests = [dual_prompts(ctx, self.settings.strict_format) for ctx in contexts]
        generated: dict[str, Messages] = {}
        scored: dict[str, tuple[Messages, tuple[str, ...]]] = {}
        for ctx, group in zip(contexts, requests):
            for messages in group or []:
                key = json.dumps(messages, sort_keys=True)
                if self._scored(ctx):
                    scored.setdefault(key, (messages, tuple(ctx.candidates)))
                else:
                    generated.setdefault(key, messages)
        replies: dict[str, Any] = {}
        if generated:
            if self.dual_generator is None:
                raise RuntimeError("duality rewards need a dual generator (attach the trainer or a frozen model)")
            replies.update(zip(generated, self.dual_generator(list(generated.values()))))
        if scored:
            if self.dual_scorer is None:
                raise RuntimeError("rewards.label_duals: probability needs a dual scorer (attach the trainer or a "
                                   "frozen model)")
            replies.update(zip(scored, self.dual_scorer([m for m, _ in scored.values()],
                                                        [c for _, c in scored.values()])))
        result = []
        for ctx, group in zip(contexts, requests):
            duals = None if group is None else [replies[json.dumps(m, sort_keys=True)] for m in group]
            result.append(duality_reward(ctx, duals, self.settings))
        return result, len(generated) + len(scored)


def scorer_of(model_of: Callable[[], Any], tokenizer, batch_size: int = 16) -> DualScorer:
    """A :data:`DualScorer` from a context manager factory yielding the model to score with."""
    from cellduality.training.decoding import label_probabilities

    def score(conversations: list[Messages], candidates: list[Sequence[str]]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in conversations]
        by_set: dict[tuple[str, ...], list[int]] = {}
        for i, options in enumerate(candidates):
            by_set.setdefault(tuple(options), []).append(i)
        with model_of() as model:
            was_training = model.training
            model.eval()
            try:
                for options, index in by_set.items():
                    probabilities = label_probabilities(model, tokenizer, [conversations[i] for i in index],
                                                        list(options), batch_size=batch_size)
                    for i, row in zip(index, probabilities):
                        out[i] = dict(zip(options, map(float, row)))
            finally:
                model.train(was_training)
        return out

    return score


def policy_dual_scorer(trainer, batch_size: int = 16) -> DualScorer:
    """Dual label probabilities from the live policy being trained (unwrapped, no gradients)."""
    from trl.models import unwrap_model_for_generation

    return scorer_of(lambda: unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator),
                     trainer.processing_class, batch_size)


def model_dual_scorer(model, tokenizer, batch_size: int = 16) -> DualScorer:
    """Dual label probabilities from a fixed model (e.g. the frozen SFT model)."""
    from contextlib import nullcontext

    return scorer_of(lambda: nullcontext(model), tokenizer, batch_size)


def policy_dual_generator(trainer, max_new_tokens: int, temperature: float = 0.0,
                          batch_size: int = 16) -> DualGenerator:
    """Dual answers from the live policy being trained (unwrapped for generation, no gradients)."""
    from trl.models import unwrap_model_for_generation

    from cellduality.training.decoding import generate_chat

    def generate(conversations: list[Messages]) -> list[str]:
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            return generate_chat(model, trainer.processing_class, conversations, max_new_tokens=max_new_tokens,
                                 temperature=temperature, batch_size=batch_size)

    return generate


def model_dual_generator(model, tokenizer, max_new_tokens: int, temperature: float = 0.0,
                         batch_size: int = 16) -> DualGenerator:
    """Dual answers from a fixed model (e.g. the frozen SFT model)."""
    from cellduality.training.decoding import generate_chat

    def generate(conversations: list[Messages]) -> list[str]:
        return generate_chat(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                             temperature=temperature, batch_size=batch_size)

    return generate
