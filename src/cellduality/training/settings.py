"""Typed settings of the training stage, one class per config section (``model``, ``model.embedded``,
``model.lora``, ``sft``, ``grpo``, ``diagnostics``, ``training``, ``hub``): TRL's style, every field's meaning and
default in config/schema.yaml (read through :func:`cellduality.config.setting`), cross-field checks in
``__post_init__`` so a bad combination is one line before any model is loaded. How they travel from the config
to a job: :class:`cellduality.config.Settings`."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cellduality.config import Settings, setting
from cellduality.errors import CellDualityError


@dataclass(frozen=True)
class ModelSettings(Settings):
    """Config ``model.*`` (the base model SFT starts from; its sub-sections have their own classes)."""

    SECTION: ClassVar[str] = "model"
    source: str = setting("model.source")
    revision: str | None = setting("model.revision")
    token_env: str = setting("model.token_env")

    @property
    def embedded(self) -> bool:
        return self.source == "embedded"


@dataclass(frozen=True)
class EmbeddedModelSettings(Settings):
    """Config ``model.embedded.*``: the size of the tiny Llama built locally."""

    SECTION: ClassVar[str] = "model.embedded"
    vocab_size: int = setting("model.embedded.vocab_size")
    hidden_size: int = setting("model.embedded.hidden_size")
    intermediate_size: int = setting("model.embedded.intermediate_size")
    num_layers: int = setting("model.embedded.num_layers")
    num_heads: int = setting("model.embedded.num_heads")
    max_position_embeddings: int = setting("model.embedded.max_position_embeddings")
    seed: int = setting("model.embedded.seed")

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise CellDualityError(f"model.embedded.hidden_size ({self.hidden_size}) must be divisible by "
                                   f"model.embedded.num_heads ({self.num_heads})")


@dataclass(frozen=True)
class LoraSettings(Settings):
    """Config ``model.lora.*``."""

    SECTION: ClassVar[str] = "model.lora"

    enabled: bool = setting("model.lora.enabled")
    r: int = setting("model.lora.r")
    alpha: float = setting("model.lora.alpha")
    dropout: float = setting("model.lora.dropout")
    use_dora: bool = setting("model.lora.use_dora")
    target_modules: str | tuple[str, ...] = setting("model.lora.target_modules")



@dataclass(frozen=True)
class SFTSettings(Settings):
    """Config ``sft.*``."""

    SECTION: ClassVar[str] = "sft"
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

    def replicate(self, rep: int) -> SFTSettings:
        """The settings of replicate ``rep`` (seed + rep)."""
        return self.replace(seed=self.seed + int(rep))


@dataclass(frozen=True)
class GRPOSettings(Settings):
    """Config ``grpo.*`` (``variants`` is the workflow's business: which reward variants it trains; it changes
    no trained model, so it is not recorded for reruns).

    Batch semantics: ``train_batch_size`` completions are generated per round (``train_batch_size /
    num_generations`` prompts) and consumed in optimizer steps of ``mini_batch_size`` completions.
    """

    SECTION: ClassVar[str] = "grpo"
    variants: tuple[str, ...] = setting("grpo.variants", reruns=False)
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
    task_prompts: Mapping[str, int | None] = setting("grpo.task_prompts")
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

    def passes(self, n_prompts: int) -> float:
        """How many times ``max_steps`` optimizer steps go over ``n_prompts`` RL prompts (each step consumes
        ``mini_batch_size`` completions, ``num_generations`` per prompt)."""
        return self.max_steps * self.mini_batch_size / self.num_generations / max(n_prompts, 1)

    def replicate(self, rep: int) -> GRPOSettings:
        """The settings of replicate ``rep`` (seed + rep)."""
        return self.replace(seed=self.seed + int(rep))


@dataclass(frozen=True)
class DiagnosticsSettings(Settings):
    """Config ``diagnostics.*``: the checks run on the SFT model before RL."""

    SECTION: ClassVar[str] = "diagnostics"
    true_label_wins_cells: int = setting("diagnostics.true_label_wins_cells")


# config training.report_to -> the packages its trainer callback needs (any one of them)
REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


@dataclass(frozen=True)
class TrainingSettings(Settings):
    """Config ``training.*``: where and how training jobs run (resources, launcher, replicates, metric
    reporting). None of it changes what a job makes, so none of it is recorded for reruns; ``replicates`` decides
    which jobs exist."""

    SECTION: ClassVar[str] = "training"
    gpus: int = setting("training.gpus", reruns=False)
    accelerate_config: str | None = setting("training.accelerate_config", reruns=False)
    mem_mb: int = setting("training.mem_mb", reruns=False)
    cpus_per_task: int = setting("training.cpus_per_task", reruns=False)
    runtime: int = setting("training.runtime", reruns=False)
    replicates: int = setting("training.replicates", reruns=False)
    report_to: str = setting("training.report_to", reruns=False)
    checkpoint_minutes: float = setting("training.checkpoint_minutes", reruns=False)

    def __post_init__(self) -> None:
        check_report_to(self.report_to)

    def report(self, logs_dir: str, run_name: str) -> ReportSettings:
        """How run ``run_name`` (e.g. sft_rep0) is watched: its metrics also go to
        ``<logs_dir>/<report_to>/<run_name>``, and it saves a checkpoint every ``checkpoint_minutes``."""
        folder = f"{logs_dir}/{self.report_to}/{run_name}" if self.report_to != "none" else None
        return ReportSettings(report_to=self.report_to, logging_dir=folder, run_name=run_name,
                              checkpoint_minutes=self.checkpoint_minutes)


@dataclass(frozen=True)
class HubSettings(Settings):
    """Config ``hub.*``: the optional upload of a trained model (target push_to_hub)."""

    SECTION: ClassVar[str] = "hub"
    repo_id: str | None = setting("hub.repo_id")
    private: bool = setting("hub.private")
    variant: str = setting("hub.variant")
    token_env: str = setting("hub.token_env")


def check_report_to(report_to: str) -> None:
    """``training.report_to`` names a known reporter whose package is installed (one line otherwise)."""
    if report_to not in ("none", *REPORT_PACKAGES):
        raise CellDualityError(f"training.report_to must be none, tensorboard or wandb; got {report_to!r}")
    packages = REPORT_PACKAGES.get(report_to, ())
    if packages and not any(importlib.util.find_spec(name) for name in packages):
        raise CellDualityError(f"training.report_to is {report_to} but {packages[0]} is not installed; "
                               f"pip install {packages[0]} (or set training.report_to: none)")


@dataclass(frozen=True)
class ReportSettings:
    """How one training run is watched (:meth:`TrainingSettings.report`): where its metrics also go (``report_to``,
    config ``training.report_to``; the folder ``logging_dir``; the ``run_name``, e.g. sft_rep0) and how often it
    saves a checkpoint by the clock (``checkpoint_minutes``). Not part of a run's identity."""

    report_to: str = setting("training.report_to", reruns=False)
    logging_dir: str | None = None
    run_name: str | None = None
    checkpoint_minutes: float = setting("training.checkpoint_minutes", reruns=False)

    def __post_init__(self) -> None:
        check_report_to(self.report_to)

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> ReportSettings:
        return cls(**dict(values or {}))

    def params(self) -> dict[str, Any]:
        return {"logging_dir": self.logging_dir, "report_to": self.report_to, "run_name": self.run_name,
                "checkpoint_minutes": self.checkpoint_minutes}
