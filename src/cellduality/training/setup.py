"""What SFT and GRPO share: device/precision flags, LoRA/DoRA, checkpoint resume, saving the final model,
metrics reporting (config ``training.report_to``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.io import atomic_path, follow_umask
from cellduality.training.settings import LoraSettings, ReportSettings

log = logging.getLogger(__name__)


def load_tokenizer(model_path: str | Path):
    """The model's tokenizer; an unloadable model is a one-line error, not a hub traceback."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CellDualityError(
            f"model {model_path}: cannot be loaded ({first}); set model.source to a local model folder or a "
            "Hugging Face id this machine can download"
        ) from None


def precision_flags(gradient_checkpointing: bool = False) -> dict[str, Any]:
    """bf16 and gradient checkpointing only on a GPU that supports them (both off on CPU)."""
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "gradient_checkpointing": gradient_checkpointing}
    return {"bf16": False, "fp16": False, "gradient_checkpointing": False, "use_cpu": True}


def on_device(model):
    """The model on the first GPU when one is visible (generation outside a trainer), else unchanged."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def peft_config(s: LoraSettings):
    """A peft LoraConfig (DoRA with ``use_dora``) or None when LoRA is disabled (config ``model.lora``)."""
    if not s.enabled:
        return None
    from peft import LoraConfig

    modules = list(s.target_modules) if isinstance(s.target_modules, tuple) else s.target_modules
    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, use_dora=s.use_dora,
                      target_modules=modules, task_type="CAUSAL_LM")


def report_args(report: ReportSettings | None) -> dict[str, Any]:
    """The TrainingArguments (SFTConfig, GRPOConfig) of config ``training.report_to``."""
    report = report or ReportSettings()
    return {"report_to": report.report_to, "run_name": report.run_name}


def report_env(report: ReportSettings, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment variables transformers' metrics callbacks read: TensorBoard event files in
    ``report.logging_dir``; W&B offline unless WANDB_MODE is set, project WANDB_PROJECT or cellduality, its files
    in ``report.logging_dir`` unless WANDB_DIR is set. API keys are never read or set here (wandb takes
    WANDB_API_KEY from the environment itself)."""
    if report.report_to == "tensorboard" and report.logging_dir:
        return {"TENSORBOARD_LOGGING_DIR": str(report.logging_dir)}
    if report.report_to == "wandb":
        env = {"WANDB_MODE": environ.get("WANDB_MODE") or "offline",
               "WANDB_PROJECT": environ.get("WANDB_PROJECT") or "cellduality"}
        if report.logging_dir and not environ.get("WANDB_DIR"):
            env["WANDB_DIR"] = str(report.logging_dir)
        return env
    return {}


@contextmanager
def reporting(report: ReportSettings) -> Iterator[None]:
    """:func:`report_env` set while the trainer is built and trains (the callbacks read it then), restored after."""
    env = report_env(report)
    folder = env.get("TENSORBOARD_LOGGING_DIR") or env.get("WANDB_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
    if report.report_to != "none":
        mode = f", mode {env['WANDB_MODE']}, project {env['WANDB_PROJECT']}" if "WANDB_MODE" in env else ""
        log.info("training metrics also go to %s (%s%s)", folder or "its default folder", report.report_to, mode)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_checkpoint_dir(root: str | Path, settings: dict[str, Any], inputs: list[str | Path],
                       code: str | None = None) -> Path:
    """``root/<fingerprint>``: checkpoints of one exact run (settings + the contents of its input files + the
    library code that trains, ``code``: the module whose imports are digested, e.g. ``cellduality.training.grpo``).

    A rerun with the same inputs and code resumes from its checkpoints; changed data, model, settings or code
    start a fresh run instead of silently resuming someone else's (Snakemake reruns a training rule when the code
    it runs changes: without the code in the fingerprint that rerun would resume the old run's last checkpoint and
    hand back the old model).
    """
    import hashlib

    from cellduality.provenance import code_digest

    if code is not None:
        settings = {**settings, "code": code_digest([code])}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                digest.update(file.name.encode())
                with open(file, "rb") as fh:
                    while block := fh.read(1 << 20):
                        digest.update(block)
    run_dir = Path(root) / digest.hexdigest()[:16]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(settings, sort_keys=True, indent=1, default=str))
    return run_dir


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin",
                "model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from (None when it is complete): the Trainer writes
    ``trainer_state.json`` after the weights, optimizer and RNG state, so a crash during saving leaves it
    missing or unreadable."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (saving was interrupted)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "trainer_state.json is unreadable"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return "no model weights"
    return None


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder to resume from (None for a fresh start). Incomplete
    folders (a crash while saving) are skipped with a warning naming them, never resumed from."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        return None
    folders = [p for p in path.glob("checkpoint-*") if p.is_dir() and p.name.removeprefix("checkpoint-").isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name.removeprefix("checkpoint-")), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        log.warning("skipping incomplete checkpoint %s: %s", folder, problem)
    return None


def save_final(trainer, out_dir: str | Path) -> None:
    """Save the trained model (LoRA merged into the weights) and tokenizer, plus the log history."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    trainer.processing_class.save_pretrained(out_dir)
    with atomic_path(out_dir / "log_history.json") as tmp:
        tmp.write_text(json.dumps(trainer.state.log_history, indent=1))
    follow_umask(out_dir)
