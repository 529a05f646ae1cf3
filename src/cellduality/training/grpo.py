"""GRPO with TRL's GRPOTrainer and the duality (or ground-truth oracle) reward.

Batch semantics (paper: G=8, train batch 512, mini-batch 32): ``train_batch_size`` completions are
generated per round (train_batch_size / G prompts), then consumed in optimizer steps of
``mini_batch_size`` completions, so one round is train_batch_size / mini_batch_size optimizer steps.
``max_steps`` counts optimizer steps, as in TRL. The KL term (``beta``) is to the starting (SFT) model.

Rollouts are decoded as evaluation decodes them (config ``evaluation.constrain_to_candidates``): label and
CellPuzzles answers name only the prompt's candidates, each once, in the answer grammar, and gene-list answers
(generation, perturbation) hold no label token (:func:`cellduality.training.decoding.answer_processors`), so a
reward is not spent on answers evaluation could not give. Without that, duality GRPO on generation learned to
start every generated cell with a label token ("B") that the frozen judge rewards (docs/duality-ablation.md).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellduality.io import atomic_path
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.schema import decode_value
from cellduality.training.datasets import rl_dataset
from cellduality.training.decoding import answer_processors
from cellduality.training.duality import (
    TaskReward,
    model_dual_generator,
    model_dual_scorer,
    policy_dual_generator,
    policy_dual_scorer,
)
from cellduality.training.label_signal import ceiling_gate, label_signal_gate
from cellduality.training.progress import progress_callback
from cellduality.training.settings import GRPOSettings, LoraSettings, ReportSettings
from cellduality.training.setup import (
    last_checkpoint,
    load_tokenizer,
    peft_config,
    precision_flags,
    report_args,
    reporting,
    run_checkpoint_dir,
    save_final,
)

log = logging.getLogger(__name__)


def grpo_config(s: GRPOSettings, checkpoint_dir: str | Path, n_processes: int = 1,
                report: ReportSettings | None = None):
    from trl import GRPOConfig

    s.check_processes(n_processes)
    extra = {"use_vllm": True, "vllm_mode": "colocate"} if s.use_vllm else {}
    return GRPOConfig(
        output_dir=str(checkpoint_dir), max_steps=s.max_steps, learning_rate=s.learning_rate,
        num_generations=s.num_generations, per_device_train_batch_size=s.mini_batch_size // n_processes,
        steps_per_generation=s.train_batch_size // s.mini_batch_size, max_completion_length=s.max_completion_length,
        temperature=s.temperature, beta=s.beta, epsilon=s.epsilon, loss_type=s.loss_type,
        scale_rewards=s.scale_rewards, logging_steps=1,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=2, seed=s.seed,
        disable_tqdm=True, **report_args(report), **precision_flags(s.gradient_checkpointing), **extra,
    )


def write_reward_curve(log_history: list[dict[str, Any]], path: str | Path) -> None:
    """One row per logged optimizer step: step, reward, its std, oracle reward, KL, loss."""
    wanted = {"reward": "reward", "reward_std": "reward_std", "oracle_reward": "oracle_reward",
              "format_ok": "format_ok", "kl": "kl", "loss": "loss", "dual_generations": "dual_generations"}
    rows = [e for e in log_history if "reward" in e]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["step", *wanted])
        for entry in rows:
            writer.writerow([entry.get("step")] + [entry.get(key, "") for key in wanted.values()])


GENE_LIST = ()  # the rollout_candidates entry of a gene-list prompt: no label may be generated


def rollout_candidates(dataset) -> dict[str, tuple[str, ...]]:
    """The candidates of each label and CellPuzzles prompt of an RL dataset, keyed by :func:`prompt_key`; gene-list
    prompts map to :data:`GENE_LIST`."""
    from cellduality.tasks.registry import get_task

    out = {}
    for prompt, task, candidates in zip(dataset["prompt"], dataset["task"], dataset["candidates"]):
        options = decode_value("candidates", candidates) if candidates else []
        kind = get_task(task).kind("primal")
        if options and kind in ("label", "assignment"):
            out[prompt_key(prompt)] = tuple(options)
        elif kind == "genes":
            out[prompt_key(prompt)] = GENE_LIST
    return out


def prompt_key(prompt) -> str:
    """A rollout prompt (chat messages or text) as the key of :func:`rollout_candidates`."""
    return prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)


def constrained_trainer(tokenizer, candidates: Mapping[str, Sequence[str]]):
    """TRL's GRPOTrainer whose rollouts of the prompts in ``candidates`` use the evaluation's answer processors
    (:func:`cellduality.training.decoding.answer_processors`); other prompts are sampled as TRL samples them."""
    from transformers import LogitsProcessorList
    from trl import GRPOTrainer

    class AnswerGrammarGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts: list):
            found = [candidates.get(prompt_key(p)) for p in prompts]
            if self.use_vllm or all(a is None for a in found):
                return super()._generate(prompts)
            genes = [a == GENE_LIST for a in found]
            allowed = [None if gene else a for a, gene in zip(found, genes)]
            model = self.accelerator.unwrap_model(self.model_wrapped)
            free = model.generate

            def generate(*args, **kwargs):
                processors = answer_processors(tokenizer, kwargs["input_ids"].shape[1], allowed_labels=allowed,
                                               unique_rows=[a is not None for a in found], gene_rows=genes)
                return free(*args, logits_processor=LogitsProcessorList(processors), **kwargs)

            model.generate = generate
            try:
                return super()._generate(prompts)
            finally:
                del model.generate

    return AnswerGrammarGRPOTrainer


def run_grpo(model_path: str, tables: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
             s: GRPOSettings, settings: RewardSettings, lora: LoraSettings, n_processes: int = 1,
             label_signal: str | Path | None = None, report: ReportSettings | None = None,
             ceiling: str | Path | None = None, constrain_to_candidates: bool = False) -> Path:
    """GRPO from ``model_path`` on the RL prompts of ``tables``; resume from ``checkpoint_dir``. With the duality
    reward, ``label_signal`` (the SFT model's true-label-wins JSON) and ``ceiling`` (the generation ceiling check's
    JSON, cellduality.evaluation.ceiling) are checked first: a warning when the reward cannot help.
    ``report``: where metrics also go (config ``training.report_to``, the metrics folder, run name);
    ``constrain_to_candidates`` (config ``evaluation.constrain_to_candidates``): label and CellPuzzles rollouts
    decoded as evaluation decodes them (see the module notes)."""
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    r = report or ReportSettings()
    checkpoint_dir = run_checkpoint_dir(checkpoint_dir, {"grpo": s.rerun_params(), "rewards": settings.params(),
                                                         "lora": lora.params(),
                                                         "constrain_to_candidates": constrain_to_candidates},
                                        [model_path, *tables], code=__name__)
    if settings.mode == "duality":
        label_signal_gate(label_signal)
        ceiling_gate(ceiling)
    dataset = rl_dataset(tables, s.max_prompts, seed=s.seed, labelled_only=settings.mode == "oracle",
                         task_prompts=s.task_prompts)
    passes = s.passes(len(dataset))
    (log.warning if passes < 2 else log.info)(
        "GRPO: %d optimizer steps of %d prompts go %.1f times over the %d RL prompts (%s)%s", s.max_steps,
        s.mini_batch_size // s.num_generations, passes, len(dataset),
        ", ".join(f"{task} {n}" for task, n in sorted(Counter(dataset["task"]).items())),
        "" if passes >= 2 else "; raise grpo.max_steps for at least two passes")
    tokenizer = load_tokenizer(model_path)
    reward = TaskReward(settings)
    candidates = rollout_candidates(dataset) if constrain_to_candidates else {}
    if candidates and s.use_vllm:
        log.warning("GRPO: grpo.use_vllm samples %d label/CellPuzzles prompts without the answer grammar that "
                    "evaluation uses", len(candidates))
    trainer_class = constrained_trainer(tokenizer, candidates) if candidates else GRPOTrainer
    watch = progress_callback(r.run_name or f"grpo_{settings.mode}", r.checkpoint_minutes)
    with reporting(r):
        trainer = trainer_class(model=model_path, reward_funcs=[reward],
                              args=grpo_config(s, checkpoint_dir, n_processes, report=r), train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config(lora),
                              callbacks=[watch])
        if settings.mode != "oracle":  # duality and its shuffled control answer duals
            dual = dict(max_new_tokens=s.dual_max_new_tokens, temperature=s.dual_temperature)
            if s.dual_model == "frozen":
                frozen = AutoModelForCausalLM.from_pretrained(model_path).to(trainer.accelerator.device).eval()
                reward.dual_generator = model_dual_generator(frozen, tokenizer, **dual)
                reward.dual_scorer = model_dual_scorer(frozen, tokenizer)
            else:
                reward.dual_generator = policy_dual_generator(trainer, **dual)
                reward.dual_scorer = policy_dual_scorer(trainer)
        resume = last_checkpoint(checkpoint_dir)
        log.info("GRPO (%s reward) on %d prompts from %s%s", settings.mode, len(dataset), model_path,
                 f", resuming {resume}" if resume else "")
        try:
            trainer.train(resume_from_checkpoint=resume)
        finally:
            watch.restore()
    save_final(trainer, out_dir)
    write_reward_curve(trainer.state.log_history, Path(out_dir) / "reward_curve.tsv")
    return Path(out_dir)
