"""Typed settings of the evaluation stage, one class per config section (``evaluation``,
``evaluation.embedding``, ``annotate``); meanings and defaults in config/schema.yaml, how they travel from the
config to a job in :class:`cellduality.config.Settings`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cellduality.config import Settings, setting
from cellduality.errors import CellDualityError


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """Config ``evaluation.*`` (``variants`` says which models the workflow evaluates; it changes no
    prediction, so it is not recorded for reruns)."""

    SECTION: ClassVar[str] = "evaluation"
    variants: tuple[str, ...] = setting("evaluation.variants", reruns=False)
    max_prompts_per_table: int | None = setting("evaluation.max_prompts_per_table")
    max_new_tokens: int = setting("evaluation.max_new_tokens")
    batch_size: int = setting("evaluation.batch_size")
    constrain_to_candidates: bool = setting("evaluation.constrain_to_candidates")
    samples_per_prompt: int = setting("evaluation.samples_per_prompt")
    sample_temperature: float = setting("evaluation.sample_temperature")
    seed: int = setting("evaluation.seed")


@dataclass(frozen=True)
class EmbeddingSettings(Settings):
    """Config ``evaluation.embedding.*``: the space where generated cells are compared with real ones."""

    SECTION: ClassVar[str] = "evaluation.embedding"
    method: str = setting("evaluation.embedding.method")
    n_components: int = setting("evaluation.embedding.n_components")
    scgpt_checkpoint: str | None = setting("evaluation.embedding.scgpt_checkpoint")

    def __post_init__(self) -> None:
        if self.method == "scgpt" and not self.scgpt_checkpoint:
            raise CellDualityError("evaluation.embedding.method is scgpt but evaluation.embedding.scgpt_checkpoint is "
                                   "not set; point it at a local scGPT checkpoint folder")


@dataclass(frozen=True)
class AnnotateSettings(Settings):
    """Config ``annotate.*``: new cells labelled by a trained model (target ``annotations``)."""

    SECTION: ClassVar[str] = "annotate"
    inputs: Mapping[str, str] = setting("annotate.inputs")
    model: str = setting("annotate.model")
    batch_size: int = setting("annotate.batch_size")


# the ablation's arms: no RL, the duality reward, its positive control (ground truth) and its negative control
ABLATION_ARMS = ("sft", "grpo_duality", "grpo_oracle", "grpo_shuffled")


@dataclass(frozen=True)
class AblationSettings(Settings):
    """Config ``ablation.*``: the duality ablation's seeds, its pre-stated metric per task and its statistics
    (:mod:`cellduality.evaluation.ablation`)."""

    SECTION: ClassVar[str] = "ablation"
    seeds: int = setting("ablation.seeds")
    primary_metric: Mapping[str, str] = setting("ablation.primary_metric")
    guard_metrics: Mapping[str, Sequence[str]] = setting("ablation.guard_metrics")
    bootstrap: int = setting("ablation.bootstrap")
    confidence: float = setting("ablation.confidence")
    bootstrap_seed: int = setting("ablation.bootstrap_seed")
