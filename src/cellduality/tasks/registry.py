"""The task registry: what a task (and its dual) is, declared once.

Every stage looks a task up here instead of keeping its own list: the task-table builder (required columns,
row builder, prompt builders), teacher filtering (answer kind of each direction), GRPO (dual prompts from a
rollout, duality and oracle rewards), evaluation (response parser, metric family, baseline label column)
and the markers teacher (handler names). A new task is one :func:`register_task` call; nothing else needs
editing for it to get task-table rows, SFT filtering and evaluation scores.

Answer kinds (:data:`ANSWER_KINDS`): ``label`` (one of the row's candidates), ``genes`` (a ranked gene list),
``assignment`` (CellPuzzles: one candidate per cell, ``' | '``-joined). Metric families (:data:`METRICS`):
``classification`` (accuracy, macro-F1), ``cellpuzzles`` (cell / batch accuracy), ``generation`` and
``perturbation`` (generated cells vs real ones in expression space).

Imports only the ground floor and other :mod:`cellduality.tasks` modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.tasks import prompts, rollouts, rows
from cellduality.tasks.parsing import ParsedResponse, parse_response
from cellduality.tasks.rewards import RewardSettings, puzzle_assignment, response_genes, response_label
from cellduality.tasks.rollouts import Rollout

DIRECTIONS = ("primal", "dual")
ANSWER_KINDS = ("label", "genes", "assignment")
METRICS = ("classification", "cellpuzzles", "generation", "perturbation")

Messages = prompts.Messages
RowBuilder = Callable[[rows.BuildContext, list[dict[str, Any]], str, Sequence["TaskSpec"]], None]
RolloutDuals = Callable[[Rollout], "list[Messages] | None"]
DualityReward = Callable[[Rollout, "Sequence[str] | None", RewardSettings], float]
OracleReward = Callable[[Rollout, RewardSettings], float]


# ---------------------------------------------------------------- answer parsers (by answer kind)

def label_answer(parsed: ParsedResponse, candidates: Sequence[str]) -> str | None:
    """The answer mapped onto the candidates (any label when there are none)."""
    return response_label(parsed, candidates or None)


def genes_answer(parsed: ParsedResponse, candidates: Sequence[str]) -> str | None:
    """The answer's genes, space-joined (None when there are none)."""
    genes = response_genes(parsed)
    return " ".join(genes) if genes else None


def assignment_answer(parsed: ParsedResponse, candidates: Sequence[str]) -> str | None:
    """One candidate per cell (Cell-o1 rules), ``' | '``-joined."""
    assignment = puzzle_assignment(parsed, candidates, len(candidates))
    return None if assignment is None else " | ".join(assignment)


ANSWER_PARSERS: Mapping[str, Callable[[ParsedResponse, Sequence[str]], str | None]] = {
    "label": label_answer, "genes": genes_answer, "assignment": assignment_answer,
}


# ---------------------------------------------------------------- the entry

@dataclass(frozen=True)
class TaskSpec:
    """One task and its dual.

    - ``name``: the task's name (wildcard, ``task`` column, prompt-id prefix);
    - ``columns``: cell-table columns the task needs (it is built only where all are present);
    - ``label_column``: the cell-table column the primal row's ``label`` comes from (classification
      baselines predict it; generation baselines group train cells by it);
    - ``primal_kind`` / ``dual_kind``: answer kind of each direction (:data:`ANSWER_KINDS`);
    - ``metric``: metric family of the primal predictions (:data:`METRICS`);
    - ``build_rows``: the row builder (:mod:`cellduality.tasks.rows`); tasks sharing one builder interleave;
    - ``primal_prompt`` / ``dual_prompt``: the prompt builders the row builder uses;
    - ``duals`` / ``duality_reward`` / ``oracle_reward``: GRPO functions (:mod:`cellduality.tasks.rollouts`);
      None where the task has no RL support;
    - ``parse_answer``: primal response -> prediction; defaults to the parser of ``primal_kind``;
    - ``baseline_onehot``: cell-table columns one-hot encoded next to expression by classification baselines;
    - ``teacher``: the markers teacher's handler for (primal, dual) prompts (``""``: none).
    """

    name: str
    columns: tuple[str, ...]
    label_column: str
    primal_kind: str
    dual_kind: str
    metric: str
    build_rows: RowBuilder
    primal_prompt: Callable[..., Messages]
    dual_prompt: Callable[..., Messages]
    duals: RolloutDuals | None = None
    duality_reward: DualityReward | None = None
    oracle_reward: OracleReward | None = None
    parse_answer: Callable[[ParsedResponse, Sequence[str]], str | None] | None = None
    baseline_onehot: tuple[str, ...] = ()
    teacher: tuple[str, str] = ("", "")
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ":#/ "):
            raise CellDualityError(f"task name {self.name!r} must be non-empty without ':', '#', '/' or spaces")
        for what, kind in (("primal_kind", self.primal_kind), ("dual_kind", self.dual_kind)):
            if kind not in ANSWER_KINDS:
                raise CellDualityError(f"task {self.name}: {what} {kind!r} is not one of {', '.join(ANSWER_KINDS)}")
        if self.metric not in METRICS:
            raise CellDualityError(f"task {self.name}: metric {self.metric!r} is not one of {', '.join(METRICS)}")
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "baseline_onehot", tuple(self.baseline_onehot))
        if self.parse_answer is None:
            object.__setattr__(self, "parse_answer", ANSWER_PARSERS[self.primal_kind])

    def kind(self, direction: str) -> str:
        """Answer kind of ``direction`` (primal / dual)."""
        if direction == "primal":
            return self.primal_kind
        if direction == "dual":
            return self.dual_kind
        raise CellDualityError(f"task {self.name}: direction {direction!r} is not one of {', '.join(DIRECTIONS)}")

    def parse_prediction(self, response: str, candidates: Sequence[str]) -> tuple[bool, str | None]:
        """(format OK, the primal answer); the answer is None for a format error or an unusable answer."""
        parsed = parse_response(response)
        if not parsed.format_ok:
            return False, None
        return True, self.parse_answer(parsed, candidates)

    def _rl(self, what: str) -> Any:
        value = getattr(self, what)
        if value is None:
            raise CellDualityError(f"task {self.name} has no {what.replace('_', ' ')} for GRPO; register it with one")
        return value

    def rollout_duals(self, rollout: Rollout) -> list[Messages] | None:
        return self._rl("duals")(rollout)

    def rollout_duality_reward(self, rollout: Rollout, duals: Sequence[str] | None, settings: RewardSettings) -> float:
        return self._rl("duality_reward")(rollout, duals, settings)

    def rollout_oracle_reward(self, rollout: Rollout, settings: RewardSettings) -> float:
        return self._rl("oracle_reward")(rollout, settings)


# ---------------------------------------------------------------- the registry

TASK_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add ``spec`` (a second task of the same name is an error unless ``replace``)."""
    if spec.name in TASK_REGISTRY and not replace:
        raise CellDualityError(f"task {spec.name!r} is already registered; pass replace=True to redefine it")
    TASK_REGISTRY[spec.name] = spec
    return spec


def unregister_task(name: str) -> TaskSpec:
    """Remove and return the task ``name``."""
    spec = get_task(name)
    del TASK_REGISTRY[name]
    return spec


def task_names() -> tuple[str, ...]:
    """Registered task names, in registration order (the order rows are built in)."""
    return tuple(TASK_REGISTRY)


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return TASK_REGISTRY[name]
    except (KeyError, TypeError):
        raise CellDualityError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None


def tasks_with(*, metric: str | None = None, primal_kind: str | None = None) -> tuple[str, ...]:
    """Names of the registered tasks with the given metric family and/or primal answer kind."""
    return tuple(s.name for s in TASK_REGISTRY.values()
                 if (metric is None or s.metric == metric) and (primal_kind is None or s.primal_kind == primal_kind))


# ---------------------------------------------------------------- the built-in tasks

for _spec in (
    TaskSpec(
        name="annotation", columns=("cell_type",), label_column="cell_type", primal_kind="label", dual_kind="genes",
        metric="classification", build_rows=rows.identity_rows, primal_prompt=prompts.annotation_prompt,
        dual_prompt=prompts.annotation_dual_prompt, duals=rollouts.annotation_duals,
        duality_reward=rollouts.inpainting_duality, oracle_reward=rollouts.classification_oracle,
        teacher=("annotation", "inpainting"),
        description="cell -> cell type; dual: hidden genes given the visible ones and the type",
    ),
    TaskSpec(
        name="generation", columns=("cell_type",), label_column="cell_type", primal_kind="genes", dual_kind="label",
        metric="generation", build_rows=rows.identity_rows, primal_prompt=prompts.generation_prompt,
        dual_prompt=prompts.generation_dual_prompt, duals=rollouts.generation_duals,
        duality_reward=rollouts.label_duality, oracle_reward=rollouts.generation_oracle,
        teacher=("generation", "annotation"),
        description="cell type -> cell sentence; dual: annotation of the generated cell",
    ),
    TaskSpec(
        name="sensitivity", columns=("drug", "sensitivity"), label_column="sensitivity", primal_kind="label",
        dual_kind="genes", metric="classification", build_rows=rows.sensitivity_rows,
        primal_prompt=prompts.sensitivity_prompt, dual_prompt=prompts.sensitivity_dual_prompt,
        duals=rollouts.sensitivity_duals, duality_reward=rollouts.inpainting_duality,
        oracle_reward=rollouts.classification_oracle, baseline_onehot=("drug",),
        teacher=("sensitivity", "inpainting"),
        description="(cell, drug) -> sensitive / resistant; dual: hidden genes given drug and response",
    ),
    TaskSpec(
        name="perturbation", columns=("drug", "condition", "pair_id"), label_column="drug", primal_kind="genes",
        dual_kind="label", metric="perturbation", build_rows=rows.perturbation_rows,
        primal_prompt=prompts.perturbation_prompt, dual_prompt=prompts.perturbation_dual_prompt,
        duals=rollouts.perturbation_duals, duality_reward=rollouts.drug_duality,
        oracle_reward=rollouts.generation_oracle, teacher=("perturbation", "perturbation_dual"),
        description="(control cell, drug) -> treated cell; dual: (treated, control) -> drug",
    ),
    TaskSpec(
        name="cellpuzzles", columns=("cell_type",), label_column="cell_type", primal_kind="assignment",
        dual_kind="genes", metric="cellpuzzles", build_rows=rows.cellpuzzles_rows,
        primal_prompt=prompts.cellpuzzles_prompt, dual_prompt=prompts.cellpuzzles_dual_prompt,
        duals=rollouts.cellpuzzles_duals, duality_reward=rollouts.cellpuzzles_duality,
        oracle_reward=rollouts.cellpuzzles_oracle, teacher=("cellpuzzles", "inpainting"),
        description="N cells + N types -> one-to-one assignment (Cell-o1); dual: per-cell inpainting",
    ),
):
    register_task(_spec)
del _spec
