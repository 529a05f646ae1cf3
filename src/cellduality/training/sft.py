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


def example_mean_loss(logits, labels):
    """``sft.loss_averaging: examples``: the causal-LM loss of each example averaged over its own completion tokens
    (``labels`` -100 elsewhere, unshifted as the model gets them), then over the examples of the batch, so a
    one-token label answer weighs as much as a 30-gene list (TRL averages over every token of the batch)."""
    import torch.nn.functional as F

    logits = logits[:, :-1, :].float()
    target = labels[:, 1:].to(logits.device)
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                reduction="none").view(target.shape)
    counts = (target != -100).sum(dim=1)
    has_tokens = counts > 0
    if not has_tokens.any():  # a batch without completion tokens: a finite zero, as TRL does
        return per_token.sum() * 0.0
    return (per_token.sum(dim=1)[has_tokens] / counts[has_tokens]).mean()


def trainer_class(loss_averaging: str):
    """TRL's SFTTrainer, or for ``examples`` a subclass whose ``compute_loss`` is :func:`example_mean_loss` (TRL's
    advice for a custom loss: one forward pass; the Trainer divides by the gradient accumulation steps, and logs
    the loss but not TRL's token accuracy and entropy)."""
    from trl import SFTTrainer

    if loss_averaging == "tokens":
        return SFTTrainer

    class ExampleMeanSFTTrainer(SFTTrainer):
        loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer scales it for gradient accumulation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**{**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False})
            loss = example_mean_loss(outputs.logits, inputs["labels"])
            return (loss, outputs) if return_outputs else loss

    return ExampleMeanSFTTrainer


def run_sft(model_path: str, data: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
            cfg: dict[str, Any], lora: dict[str, Any], callbacks: Sequence[Any] = (),
            report: Mapping[str, Any] | None = None) -> Path:
    """Fine-tune ``model_path`` on ``data``; resume from the newest checkpoint of the same run (same model,
    data and settings) under ``checkpoint_dir``. ``report``: :class:`ReportSettings` fields (config
    ``training.report_to``, the metrics folder and run name; not part of the run's identity)."""
    from trl import SFTConfig

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
        trainer = trainer_class(s.loss_averaging)(model=model_path, args=args, train_dataset=dataset,
                                                  processing_class=tokenizer, peft_config=peft_config(lora),
                                                  callbacks=list(callbacks))
        resume = last_checkpoint(checkpoint_dir)
        log.info("SFT on %d examples from %s%s", len(dataset), model_path, f", resuming {resume}" if resume else "")
        trainer.train(resume_from_checkpoint=resume)
    save_final(trainer, out_dir)
    return Path(out_dir)
