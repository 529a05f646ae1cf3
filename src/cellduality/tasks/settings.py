"""The config sections of the task tables: ``tasks`` (which datasets feed each task), ``task_tables`` (the
SFT/RL/eval partition, caps and prompt options) and ``cellpuzzles`` (how puzzles are drawn). The other two
sections of the stage live with their code: ``inpainting`` (:class:`cellduality.tasks.inpainting.InpaintingSettings`)
and ``rewards`` (:class:`cellduality.tasks.rewards.RewardSettings`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cellduality.config import Settings, setting
from cellduality.errors import CellDualityError

STAGES = ("sft", "rl", "eval")  # the stages of a task table's rows


@dataclass(frozen=True)
class TaskSettings(Settings):
    """Config ``tasks``: the catalog datasets that feed each task (empty: the task is not built)."""

    SECTION: ClassVar[str] = "tasks"

    annotation: tuple[str, ...] = setting("tasks.annotation")
    generation: tuple[str, ...] = setting("tasks.generation")
    sensitivity: tuple[str, ...] = setting("tasks.sensitivity")
    perturbation: tuple[str, ...] = setting("tasks.perturbation")
    cellpuzzles: tuple[str, ...] = setting("tasks.cellpuzzles")

    def configured(self) -> dict[str, list[str]]:
        """Task -> its datasets, for the tasks that have any (sorted by task name, as :meth:`params`)."""
        return {task: names for task, names in self.params().items() if names}


@dataclass(frozen=True)
class TaskTableSettings(Settings):
    """Config ``task_tables.*``: the SFT/RL/eval partition, caps and prompt options of every task table."""

    SECTION: ClassVar[str] = "task_tables"

    seed: int = setting("task_tables.seed")
    rl_fraction: float = setting("task_tables.rl_fraction")
    max_cells_sft: int | None = setting("task_tables.max_cells_sft")
    max_cells_rl: int | None = setting("task_tables.max_cells_rl")
    max_cells_eval: int | None = setting("task_tables.max_cells_eval")
    annotation_candidates: bool = setting("task_tables.annotation_candidates")
    control_values: tuple[str, ...] = setting("task_tables.control_values")

    def __post_init__(self) -> None:
        if not 0.0 <= self.rl_fraction <= 1.0:
            raise CellDualityError(f"task_tables.rl_fraction must be in [0, 1]; got {self.rl_fraction}")
        for stage in STAGES:
            limit = self.max_cells(stage)
            if limit is not None and limit < 1:
                raise CellDualityError(f"task_tables.max_cells_{stage} must be at least 1 or null; got {limit}")

    def max_cells(self, stage: str) -> int | None:
        return {"sft": self.max_cells_sft, "rl": self.max_cells_rl, "eval": self.max_cells_eval}[stage]


@dataclass(frozen=True)
class CellPuzzlesSettings(Settings):
    """Config ``cellpuzzles.*``: how CellPuzzles batches are drawn."""

    SECTION: ClassVar[str] = "cellpuzzles"

    batch_size: int = setting("cellpuzzles.batch_size")
    train_rounds: int = setting("cellpuzzles.train_rounds")
    eval_rounds: int = setting("cellpuzzles.eval_rounds")
    duals_per_cell: int = setting("cellpuzzles.duals_per_cell")

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise CellDualityError(f"cellpuzzles.batch_size must be at least 2; got {self.batch_size}")
        for key, rounds in (("train_rounds", self.train_rounds), ("eval_rounds", self.eval_rounds)):
            if rounds < 1:
                raise CellDualityError(f"cellpuzzles.{key} must be at least 1; got {rounds}")
        if self.duals_per_cell < 0:
            raise CellDualityError(f"cellpuzzles.duals_per_cell must be 0 or more; got {self.duals_per_cell}")

    def rounds(self, stage: str) -> int:
        """Passes over the cells of ``stage`` (eval_rounds for eval, train_rounds for sft and rl)."""
        return self.eval_rounds if stage == "eval" else self.train_rounds
