"""GRPO with TRL's GRPOTrainer and the duality (or ground-truth oracle) reward.

Batch semantics (paper: G=8, train batch 512, mini-batch 32): ``train_batch_size`` completions are
generated per round (train_batch_size / G prompts), then consumed in optimizer steps of
``mini_batch_size`` completions, so one round is train_batch_size / mini_batch_size optimizer steps.
``max_steps`` counts optimizer steps, as in TRL. The KL term (``beta``) is to the starting (SFT) model.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.tasks.rewards import RewardSettings
from cellduality.training.datasets import rl_dataset
from cellduality.training.duality import TaskReward, model_dual_generator, policy_dual_generator
from cellduality.training.setup import (
    last_checkpoint,
    load_tokenizer,
    peft_config,
    precision_flags,
    run_checkpoint_dir,
    save_final,
)

log = logging.getLogger(__name__)


def grpo_config(cfg: dict[str, Any], checkpoint_dir: str | Path, n_processes: int = 1):
    from trl import GRPOConfig

    g, train_batch, mini_batch = cfg["num_generations"], cfg["train_batch_size"], cfg["mini_batch_size"]
    if train_batch % g or train_batch % mini_batch or mini_batch % n_processes:
        raise CellDualityError(
            f"grpo: train_batch_size ({train_batch}) must be a multiple of num_generations ({g}) and of "
            f"mini_batch_size ({mini_batch}), which must be a multiple of the number of processes ({n_processes})"
        )
    extra = {"use_vllm": True, "vllm_mode": "colocate"} if cfg["use_vllm"] else {}
    return GRPOConfig(
        output_dir=str(checkpoint_dir), max_steps=cfg["max_steps"], learning_rate=cfg["learning_rate"],
        num_generations=g, per_device_train_batch_size=mini_batch // n_processes,
        steps_per_generation=train_batch // mini_batch, max_completion_length=cfg["max_completion_length"],
        temperature=cfg["temperature"], beta=cfg["beta"], epsilon=cfg["epsilon"], logging_steps=1,
        save_strategy="steps", save_steps=cfg["save_steps"], save_total_limit=2, report_to="none", seed=cfg["seed"],
        disable_tqdm=True, **precision_flags(cfg["gradient_checkpointing"]), **extra,
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


def run_grpo(model_path: str, tables: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
             cfg: dict[str, Any], reward_cfg: dict[str, Any], lora: dict[str, Any], n_processes: int = 1) -> Path:
    """GRPO from ``model_path`` on the RL prompts of ``tables``; resume from ``checkpoint_dir``."""
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    checkpoint_dir = run_checkpoint_dir(checkpoint_dir, {"grpo": cfg, "rewards": reward_cfg, "lora": lora},
                                        [model_path, *tables])
    settings = RewardSettings(**reward_cfg)
    dataset = rl_dataset(tables, cfg["max_prompts"], seed=cfg["seed"])
    tokenizer = load_tokenizer(model_path)
    reward = TaskReward(settings)
    trainer = GRPOTrainer(model=model_path, reward_funcs=[reward], args=grpo_config(cfg, checkpoint_dir, n_processes),
                          train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(lora))
    if settings.mode == "duality":
        dual = dict(max_new_tokens=cfg["dual_max_new_tokens"], temperature=cfg["dual_temperature"])
        if cfg["dual_model"] == "frozen":
            frozen = AutoModelForCausalLM.from_pretrained(model_path).to(trainer.accelerator.device).eval()
            reward.dual_generator = model_dual_generator(frozen, tokenizer, **dual)
        else:
            reward.dual_generator = policy_dual_generator(trainer, **dual)
    resume = last_checkpoint(checkpoint_dir)
    log.info("GRPO (%s reward) on %d prompts from %s%s", settings.mode, len(dataset), model_path,
             f", resuming {resume}" if resume else "")
    trainer.train(resume_from_checkpoint=resume)
    save_final(trainer, out_dir)
    write_reward_curve(trainer.state.log_history, Path(out_dir) / "reward_curve.tsv")
    return Path(out_dir)
