"""Typed settings of the training stage, one class per config section (TRL's style: every field's meaning and
default are in config/schema.yaml, read through :func:`cellduality.config.setting`; cross-field checks live in
``__post_init__`` so a bad combination is one line before any model is loaded)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cellduality.config import setting, settings_from_config
from cellduality.errors import CellDualityError


@dataclass(frozen=True)
class LoraSettings:
    """Config ``model.lora.*``."""

    enabled: bool = setting("model.lora.enabled")
    r: int = setting("model.lora.r")
    alpha: float = setting("model.lora.alpha")
    dropout: float = setting("model.lora.dropout")
    use_dora: bool = setting("model.lora.use_dora")
    target_modules: str | tuple[str, ...] = setting("model.lora.target_modules")

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> LoraSettings:
        values = dict(values)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        return settings_from_config(cls, values, "model.lora")


@dataclass(frozen=True)
class SFTSettings:
    """Config ``sft.*``."""

    epochs: float = setting("sft.epochs")
    max_steps: int = setting("sft.max_steps")
    learning_rate: float = setting("sft.learning_rate")
    per_device_batch_size: int = setting("sft.per_device_batch_size")
    gradient_accumulation_steps: int = setting("sft.gradient_accumulation_steps")
    max_length: int = setting("sft.max_length")
    save_steps: int = setting("sft.save_steps")
    logging_steps: int = setting("sft.logging_steps")
    group_by_length: bool = setting("sft.group_by_length")
    task_weights: Mapping[str, int] = setting("sft.task_weights")
    held_back_tasks: tuple[str, ...] = setting("sft.held_back_tasks")
    first_phase_preview: int = setting("sft.first_phase_preview")
    second_phase_steps: int = setting("sft.second_phase_steps")
    second_phase_learning_rate: float | None = setting("sft.second_phase_learning_rate")
    loss_averaging: str = setting("sft.loss_averaging")
    gradient_checkpointing: bool = setting("sft.gradient_checkpointing")
    seed: int = setting("sft.seed")

    def __post_init__(self) -> None:
        if self.max_steps < 1 and self.max_steps != -1:
            raise CellDualityError(f"sft.max_steps must be -1 (use sft.epochs) or a positive number; got {self.max_steps}")
        if self.held_back_tasks and self.second_phase_steps < 1:
            raise CellDualityError(f"sft.held_back_tasks {list(self.held_back_tasks)} are only trained in the second "
                                   "phase: set sft.second_phase_steps > 0 (or empty sft.held_back_tasks)")

    def phases(self) -> list[tuple[str, int, float, tuple[str, ...]]]:
        """``(name, max_steps, learning_rate, tasks left out)`` of each SFT phase, in order (the first phase
        still keeps ``first_phase_preview`` primal examples of each task it leaves out)."""
        if self.second_phase_steps < 1:
            return [("phase1", self.max_steps, self.learning_rate, ())]
        second_lr = self.second_phase_learning_rate or self.learning_rate
        return [("phase1", self.max_steps, self.learning_rate, tuple(self.held_back_tasks)),
                ("phase2", self.second_phase_steps, second_lr, ())]

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> SFTSettings:
        return settings_from_config(cls, values, "sft")


@dataclass(frozen=True)
class GRPOSettings:
    """Config ``grpo.*`` (``variants`` is the workflow's business, not the trainer's).

    Batch semantics: ``train_batch_size`` completions are generated per round (``train_batch_size /
    num_generations`` prompts) and consumed in optimizer steps of ``mini_batch_size`` completions.
    """

    num_generations: int = setting("grpo.num_generations")
    train_batch_size: int = setting("grpo.train_batch_size")
    mini_batch_size: int = setting("grpo.mini_batch_size")
    max_steps: int = setting("grpo.max_steps")
    learning_rate: float = setting("grpo.learning_rate")
    beta: float = setting("grpo.beta")
    epsilon: float = setting("grpo.epsilon")
    loss_type: str = setting("grpo.loss_type")
    scale_rewards: str = setting("grpo.scale_rewards")
    temperature: float = setting("grpo.temperature")
    max_completion_length: int = setting("grpo.max_completion_length")
    max_prompts: int | None = setting("grpo.max_prompts")
    dual_model: str = setting("grpo.dual_model")
    dual_max_new_tokens: int = setting("grpo.dual_max_new_tokens")
    dual_temperature: float = setting("grpo.dual_temperature")
    save_steps: int = setting("grpo.save_steps")
    gradient_checkpointing: bool = setting("grpo.gradient_checkpointing")
    use_vllm: bool = setting("grpo.use_vllm")
    seed: int = setting("grpo.seed")

    def check_processes(self, n_processes: int) -> None:
        """The batch arithmetic for ``n_processes`` data-parallel processes (one per GPU)."""
        g, train, mini = self.num_generations, self.train_batch_size, self.mini_batch_size
        if train % g or train % mini or mini % max(1, n_processes):
            raise CellDualityError(
                f"grpo: train_batch_size ({train}) must be a multiple of num_generations ({g}) and of "
                f"mini_batch_size ({mini}), which must be a multiple of the number of processes ({n_processes})"
            )

    def __post_init__(self) -> None:
        self.check_processes(1)

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> GRPOSettings:
        return settings_from_config(cls, {k: v for k, v in values.items() if k != "variants"}, "grpo")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# config training.report_to -> the packages its trainer callback needs (any one of them)
REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


@dataclass(frozen=True)
class ReportSettings:
    """Config ``training.report_to`` and where the workflow puts the run's metrics: ``logging_dir``
    (results/logs/<report_to>/<run name>, from rules/training.smk) and ``run_name`` (e.g. sft_rep0)."""

    report_to: str = setting("training.report_to")
    logging_dir: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.report_to not in ("none", *REPORT_PACKAGES):
            raise CellDualityError(f"training.report_to must be none, tensorboard or wandb; got {self.report_to!r}")
        packages = REPORT_PACKAGES.get(self.report_to, ())
        if packages and not any(importlib.util.find_spec(name) for name in packages):
            raise CellDualityError(f"training.report_to is {self.report_to} but {packages[0]} is not installed; "
                                   f"pip install {packages[0]} (or set training.report_to: none)")

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> ReportSettings:
        return settings_from_config(cls, dict(values or {}), "training.report_to")
