"""SFT cold start with TRL's SFTTrainer on the accepted teacher examples (primal + dual)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellduality.training.datasets import sft_dataset
from cellduality.training.settings import ReportSettings, SFTSettings
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


class ExampleMeanLoss:
    """``sft.loss_averaging: examples``: the causal-LM loss of each example averaged over its own completion
    tokens (``labels`` -100 elsewhere), then over the examples of the batch, so a one-token label answer weighs as
    much as a 30-gene list. ``length_power`` p weighs example i by n_i ** p (n_i: its completion tokens): 0 is
    the plain mean over examples, 1 is TRL's mean over tokens. Handed to SFTTrainer as ``compute_loss_func``
    (called with the model outputs and the unshifted labels); divided by ``accumulation_steps`` because the
    Trainer leaves that to a custom loss."""

    def __init__(self, accumulation_steps: int = 1, length_power: float = 0.0) -> None:
        self.accumulation_steps = accumulation_steps
        self.length_power = length_power

    def __call__(self, outputs, labels, num_items_in_batch=None):
        import torch.nn.functional as F

        logits = outputs.logits[:, :-1, :].float()
        target = labels[:, 1:].to(logits.device)
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                    reduction="none").view(target.shape)
        counts = (target != -100).sum(dim=1)
        has_tokens = counts > 0
        if not has_tokens.any():  # a batch without completion tokens: a finite zero, as TRL does
            return per_token.sum() * 0.0
        counts = counts[has_tokens].to(per_token.dtype)
        per_example = per_token.sum(dim=1)[has_tokens] / counts
        weights = counts ** self.length_power
        return (per_example * weights).sum() / weights.sum() / self.accumulation_steps


def run_sft(model_path: str, data: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
            cfg: dict[str, Any], lora: dict[str, Any], callbacks: Sequence[Any] = (),
            report: Mapping[str, Any] | None = None) -> Path:
    """Fine-tune ``model_path`` on ``data``; resume from the newest checkpoint of the same run (same model,
    data and settings) under ``checkpoint_dir``. ``report``: :class:`ReportSettings` fields (config
    ``training.report_to``, the metrics folder and run name; not part of the run's identity)."""
    from trl import SFTConfig, SFTTrainer

    s = SFTSettings.from_config(cfg)
    r = ReportSettings.from_config(report)  # a missing tensorboard / wandb is one line before any work
    checkpoint_dir = run_checkpoint_dir(checkpoint_dir, {"sft": cfg, "lora": lora}, [model_path, *data])
    dataset = sft_dataset(data, seed=s.seed, task_weights=s.task_weights)
    args = SFTConfig(
        output_dir=str(checkpoint_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        learning_rate=s.learning_rate, per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, max_length=s.max_length,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=2, logging_steps=s.logging_steps,
        seed=s.seed, **report_args(r), completion_only_loss=True, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
        **precision_flags(s.gradient_checkpointing),
    )
    tokenizer = load_tokenizer(model_path)
    with reporting(r):
        loss = ExampleMeanLoss(s.gradient_accumulation_steps) if s.loss_averaging == "examples" else None
        trainer = SFTTrainer(model=model_path, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config(lora), callbacks=list(callbacks), compute_loss_func=loss)
        resume = last_checkpoint(checkpoint_dir)
        log.info("SFT on %d examples from %s%s", len(dataset), model_path, f", resuming {resume}" if resume else "")
        trainer.train(resume_from_checkpoint=resume)
    save_final(trainer, out_dir)
    return Path(out_dir)
