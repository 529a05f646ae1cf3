"""SFT cold start with TRL's SFTTrainer on the accepted teacher examples (primal + dual)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellduality.training.datasets import sft_dataset
from cellduality.training.settings import SFTSettings
from cellduality.training.setup import (
    last_checkpoint,
    load_tokenizer,
    peft_config,
    precision_flags,
    run_checkpoint_dir,
    save_final,
)

log = logging.getLogger(__name__)


def run_sft(model_path: str, data: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
            cfg: dict[str, Any], lora: dict[str, Any], callbacks: Sequence[Any] = ()) -> Path:
    """Fine-tune ``model_path`` on ``data``; resume from the newest checkpoint of the same run (same model,
    data and settings) under ``checkpoint_dir``."""
    from trl import SFTConfig, SFTTrainer

    s = SFTSettings.from_config(cfg)
    checkpoint_dir = run_checkpoint_dir(checkpoint_dir, {"sft": cfg, "lora": lora}, [model_path, *data])
    dataset = sft_dataset(data, seed=s.seed, task_weights=s.task_weights)
    args = SFTConfig(
        output_dir=str(checkpoint_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        learning_rate=s.learning_rate, per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, max_length=s.max_length,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=2, logging_steps=s.logging_steps,
        report_to="none", seed=s.seed, completion_only_loss=True, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
        **precision_flags(s.gradient_checkpointing),
    )
    tokenizer = load_tokenizer(model_path)
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config(lora), callbacks=list(callbacks))
    resume = last_checkpoint(checkpoint_dir)
    log.info("SFT on %d examples from %s%s", len(dataset), model_path, f", resuming {resume}" if resume else "")
    trainer.train(resume_from_checkpoint=resume)
    save_final(trainer, out_dir)
    return Path(out_dir)
