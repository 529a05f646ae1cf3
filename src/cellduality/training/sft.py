"""SFT cold start with TRL's SFTTrainer on the accepted teacher examples (primal + dual)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellduality.io import atomic_path
from cellduality.training.datasets import sft_dataset
from cellduality.training.progress import progress_callback
from cellduality.training.settings import LoraSettings, ReportSettings, SFTSettings
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
    keep = predicting_positions(labels)
    return example_mean_loss_at(logits[keep.to(logits.device)], labels, keep)


def predicting_positions(labels):
    """``(batch, length)`` boolean mask of the positions whose logits predict a completion token (position p
    predicts token p + 1): the only logits :func:`example_mean_loss` needs."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def example_mean_loss_at(logits, labels, keep):
    """:func:`example_mean_loss` from the logits of the ``keep`` positions only (``(keep.sum(), vocab)``, in
    row-major order, as a model given ``logits_to_keep=keep`` returns them); a batch without completion tokens
    gives a finite zero, as TRL does."""
    import torch
    import torch.nn.functional as F

    counts = keep.sum(dim=1)
    if not bool(counts.any()):
        return logits.sum() * 0.0
    target = labels[:, 1:][keep[:, :-1]].to(logits.device)
    per_token = F.cross_entropy(logits.float(), target, reduction="none")
    rows = keep.nonzero()[:, 0].to(logits.device)
    sums = torch.zeros(keep.shape[0], dtype=per_token.dtype, device=logits.device).index_add(0, rows, per_token)
    has_tokens = counts.to(logits.device) > 0
    return (sums[has_tokens] / counts.to(logits.device)[has_tokens]).mean()


def trainer_class(loss_averaging: str):
    """TRL's SFTTrainer, or for ``examples`` a subclass whose ``compute_loss`` is :func:`example_mean_loss` (TRL's
    advice for a custom loss: one forward pass; the Trainer divides by the gradient accumulation steps, and logs
    the loss but not TRL's token accuracy and entropy). The subclass asks the model for the logits of the
    completion positions only (``logits_to_keep`` as a boolean mask, transformers >= 5): a CellPuzzles prompt
    of 540 tokens with a 20-token answer then projects 20 positions onto the vocabulary instead of 560. A model
    that returns other shapes gets the full logits instead."""
    from trl import SFTTrainer

    if loss_averaging == "tokens":
        return SFTTrainer

    class ExampleMeanSFTTrainer(SFTTrainer):
        loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer scales it for gradient accumulation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            features = {**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False}
            if not return_outputs:
                keep = predicting_positions(labels)
                outputs = model(**features, logits_to_keep=keep)
                if tuple(outputs.logits.shape[:-1]) == (int(keep.sum()),):
                    return example_mean_loss_at(outputs.logits, labels, keep)
            outputs = model(**features)
            loss = example_mean_loss(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

    return ExampleMeanSFTTrainer


def run_sft(model_path: str, data: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
            s: SFTSettings, lora: LoraSettings, callbacks: Sequence[Any] = (),
            report: ReportSettings | None = None) -> Path:
    """Fine-tune ``model_path`` on ``data``; resume from the newest checkpoint of the same run (same model,
    data and settings) under ``checkpoint_dir``. ``report``: where metrics also go (config
    ``training.report_to``, the metrics folder and run name; not part of the run's identity).

    With ``sft.second_phase_steps`` the run has two phases (:meth:`SFTSettings.phases`): the first leaves out
    ``sft.held_back_tasks`` and saves its model under ``checkpoint_dir/<run>/phase1/final``; the second continues
    from it on every task. A rerun skips a finished first phase; ``log_history.json`` holds both phases'
    logs, each entry tagged with its ``phase``."""
    r = report or ReportSettings()
    checkpoint_dir = run_checkpoint_dir(checkpoint_dir, {"sft": s.params(), "lora": lora.params()},
                                        [model_path, *data], code=__name__)
    phases = s.phases()
    model, history = model_path, []
    for index, (name, max_steps, learning_rate, left_out) in enumerate(phases):
        last = index == len(phases) - 1
        phase_dir = checkpoint_dir if len(phases) == 1 else checkpoint_dir / name
        final = Path(out_dir) if last else phase_dir / "final"
        if not last and (final / "log_history.json").is_file():  # written last by save_final: a finished phase
            log.info("SFT %s already trained: %s", name, final)
        else:
            dataset = sft_dataset(data, seed=s.seed, task_weights=s.task_weights, exclude_tasks=left_out,
                                  preview=s.first_phase_preview)
            trainer = _train(model, dataset, phase_dir, s, max_steps, learning_rate, lora, callbacks, r)
            save_final(trainer, final)
            if len(phases) > 1:
                log.info("SFT %s: %d examples%s", name, len(dataset),
                         f" (held back: {', '.join(left_out)}, but {s.first_phase_preview} examples of each)"
                         if left_out else "")
        if len(phases) > 1:
            history += [{**entry, "phase": name} for entry in json.loads((final / "log_history.json").read_text())]
        model = str(final)
    if len(phases) > 1:
        with atomic_path(Path(out_dir) / "log_history.json") as tmp:
            tmp.write_text(json.dumps(history, indent=1))
    return Path(out_dir)


def _train(model: str, dataset, checkpoint_dir: Path, s: SFTSettings, max_steps: int, learning_rate: float,
           lora: LoraSettings, callbacks: Sequence[Any], r: ReportSettings):
    """One SFTTrainer run of ``model`` on ``dataset``, resumed from ``checkpoint_dir``'s newest checkpoint."""
    from trl import SFTConfig

    args = SFTConfig(
        output_dir=str(checkpoint_dir), num_train_epochs=s.epochs, max_steps=max_steps,
        learning_rate=learning_rate, per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, max_length=s.max_length,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=2, logging_steps=s.logging_steps,
        seed=s.seed, **report_args(r), completion_only_loss=True, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
        **precision_flags(s.gradient_checkpointing),
    )
    tokenizer = load_tokenizer(model)
    watch = progress_callback(r.run_name or "sft", r.checkpoint_minutes)
    with reporting(r):
        trainer = trainer_class(s.loss_averaging)(model=model, args=args, train_dataset=dataset,
                                                  processing_class=tokenizer, peft_config=peft_config(lora),
                                                  callbacks=[*callbacks, watch])
        resume = last_checkpoint(checkpoint_dir)
        log.info("SFT on %d examples from %s%s", len(dataset), model, f", resuming {resume}" if resume else "")
        try:
            trainer.train(resume_from_checkpoint=resume)
        finally:
            watch.restore()
    return trainer
