"""Per-task prompt/answer tables built from a cell-sentence table.

Input: one row per cell with ``cell_id, dataset, split (train/test/ood), sentence`` and, where present, label
columns ``cell_type, drug, sensitivity, condition, pair_id`` and metadata ``tissue, disease, sex, age, donor,
dose, time``. Output: one row per prompt (:data:`OUTPUT_COLUMNS`, typed by :class:`~cellduality.tasks.schema.TaskRow`);
list-valued columns are JSON strings. Which tasks exist, the columns each needs and the function that builds its
rows come from :mod:`cellduality.tasks.registry` (row builders: :mod:`cellduality.tasks.rows`).

Stages: ``sft`` (labelled train cells: primal and dual rows with answers), ``rl`` (the other train cells, held
out of SFT, fresh masks, primal rows only, ``answer`` empty and the label kept only in ``label`` for the
oracle reward and diagnostics), ``eval`` (test and ood cells: primal and dual rows with answers).
A task is built only where its columns are present. Perturbation pairs a treated cell with the first control
cell (``condition`` in ``control_values``) sharing its ``dataset`` and ``pair_id``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cellduality.config import setting, settings_from_config
from cellduality.data.label_profiles import label_profiles
from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.seeding import stable_sample, stable_uniform
from cellduality.tasks.inpainting import InpaintingConfig
from cellduality.tasks.prompts import CONTEXT_KEYS, is_present
from cellduality.tasks.registry import TASK_REGISTRY, get_task, task_names
from cellduality.tasks.rows import BuildContext, cellpuzzles_batches
from cellduality.tasks.schema import ROW_COLUMNS

REQUIRED_COLUMNS = ("cell_id", "dataset", "split", "sentence")
SPLITS = ("train", "test", "ood", "adapt")  # adapt: a role adapt dataset's unlabelled RL cells
STAGES = ("sft", "rl", "eval")
OUTPUT_COLUMNS = ROW_COLUMNS
DATA_MARKERS = "data"  # inpainting.markers: learn the marker set from the SFT cells
__all__ = ["OUTPUT_COLUMNS", "REQUIRED_COLUMNS", "SPLITS", "STAGES", "TaskTableParams", "available_tasks",
           "build_task_tables", "cellpuzzles_batches", "cells_of_stage", "check_task_inputs", "check_task_prompts",
           "data_markers", "write_task_tables"]


@dataclass(frozen=True)
class TaskTableParams:
    """Settings (config keys of the same names; see :meth:`from_dict`)."""

    tasks: tuple[str, ...] = field(default_factory=task_names)
    top_k: int | None = None
    hidden_fraction: float = setting("inpainting.hidden_fraction")
    strategy: str = setting("inpainting.strategy")
    markers: tuple[str, ...] | str | None = setting("inpainting.markers")  # "data": derived per table
    seed: int = setting("task_tables.seed")
    rl_fraction: float = setting("task_tables.rl_fraction")
    max_cells_sft: int | None = setting("task_tables.max_cells_sft")
    max_cells_rl: int | None = setting("task_tables.max_cells_rl")
    max_cells_eval: int | None = setting("task_tables.max_cells_eval")
    cellpuzzles_n: int = setting("cellpuzzles.batch_size")
    cellpuzzles_rounds: int = setting("cellpuzzles.train_rounds")
    cellpuzzles_eval_rounds: int = setting("cellpuzzles.eval_rounds")
    cellpuzzles_duals: int = setting("cellpuzzles.duals_per_cell")
    annotation_candidates: bool = setting("task_tables.annotation_candidates")
    control_values: tuple[str, ...] = setting("task_tables.control_values")

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_REGISTRY]
        if unknown:
            raise CellDualityError(f"tasks: unknown task(s) {unknown}; choose from {', '.join(task_names())}")
        if not 0.0 <= self.rl_fraction <= 1.0:
            raise CellDualityError(f"task_tables.rl_fraction must be in [0, 1]; got {self.rl_fraction}")
        if self.cellpuzzles_n < 2:
            raise CellDualityError(f"cellpuzzles.batch_size must be at least 2; got {self.cellpuzzles_n}")
        for key, rounds in (("train_rounds", self.cellpuzzles_rounds), ("eval_rounds", self.cellpuzzles_eval_rounds)):
            if rounds < 1:
                raise CellDualityError(f"cellpuzzles.{key} must be at least 1; got {rounds}")
        if self.cellpuzzles_duals < 0:
            raise CellDualityError(f"cellpuzzles.duals_per_cell must be 0 or more; got {self.cellpuzzles_duals}")
        if self.top_k is not None and self.top_k < 1:
            raise CellDualityError(f"cell_sentence.top_k must be positive; got {self.top_k}")
        self.inpainting("sft")  # validates fraction / strategy / markers

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TaskTableParams:
        """Build from a flat mapping of field names (unknown keys are an error)."""
        kwargs = dict(values)
        for key in ("tasks", "markers", "control_values"):
            if kwargs.get(key) is not None and kwargs[key] != DATA_MARKERS:
                kwargs[key] = tuple(kwargs[key])
        return settings_from_config(cls, kwargs, "task-table")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TaskTableParams:
        """Build from the pipeline config: ``task_tables.*``, ``inpainting.{hidden_fraction,strategy,markers}``,
        ``cellpuzzles.{batch_size,train_rounds,eval_rounds,duals_per_cell}`` and ``cell_sentence.top_k`` (absent
        sections keep the defaults)."""
        values: dict[str, Any] = dict(config.get("task_tables") or {})
        inpainting = config.get("inpainting") or {}
        values.update({k: inpainting[k] for k in ("hidden_fraction", "strategy", "markers") if k in inpainting})
        puzzles = config.get("cellpuzzles") or {}
        for key, name in (("batch_size", "cellpuzzles_n"), ("train_rounds", "cellpuzzles_rounds"),
                          ("eval_rounds", "cellpuzzles_eval_rounds"), ("duals_per_cell", "cellpuzzles_duals")):
            if key in puzzles:
                values[name] = puzzles[key]
        if "top_k" in (config.get("cell_sentence") or {}):
            values.setdefault("top_k", config["cell_sentence"]["top_k"])
        return cls.from_dict(values)

    def inpainting(self, stage: str) -> InpaintingConfig:
        """Mask settings; the salt differs per stage and seed, so RL masks are fresh."""
        if self.markers == DATA_MARKERS:  # resolved by build_task_tables; checked here with a stand-in set
            return InpaintingConfig(self.hidden_fraction, self.strategy, f"{self.seed}:{stage}", frozenset())
        markers = None if self.markers is None else frozenset(self.markers)
        return InpaintingConfig(self.hidden_fraction, self.strategy, f"{self.seed}:{stage}", markers)

    def max_cells(self, stage: str) -> int | None:
        return {"sft": self.max_cells_sft, "rl": self.max_cells_rl, "eval": self.max_cells_eval}[stage]


# ---------------------------------------------------------------- input handling

def _validate(cells: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in cells.columns]
    if missing:
        raise CellDualityError(f"cell-sentence table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}")
    bad = sorted(set(cells["split"].astype(str)) - set(SPLITS))
    if bad:
        raise CellDualityError(f"cell-sentence table has split value(s) {bad}; allowed: {list(SPLITS)}")
    dup = cells.duplicated(["dataset", "cell_id"])
    if dup.any():
        first = cells.loc[dup, ["dataset", "cell_id"]].iloc[0].tolist()
        raise CellDualityError(f"cell-sentence table repeats cell_id {first[1]!r} in dataset {first[0]!r}")
    out = cells.copy()
    out["cell_id"] = out["cell_id"].astype(str)
    out["dataset"] = out["dataset"].astype(str)
    out["split"] = out["split"].astype(str)
    return out.sort_values(["dataset", "cell_id"], kind="mergesort").reset_index(drop=True)


def _value(row: Mapping[str, Any], key: str) -> Any:
    value = row.get(key)
    if not is_present(value):
        return None
    if hasattr(value, "item"):  # numpy scalar -> python
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _text(row: Mapping[str, Any], key: str) -> str | None:
    value = _value(row, key)
    return None if value is None else " ".join(str(value).split())


def _metadata(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k in CONTEXT_KEYS if (v := _value(row, k)) is not None}


def data_markers(records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """``inpainting.markers: data``: every cell type's discriminating genes among the SFT-stage cells
    (:meth:`cellduality.data.label_profiles.DataProfiles.marker_union`): one gene set for all cells and
    stages, learned from training cells only, so a mask built from it reveals no cell's label."""
    sft = [r for r in records if r["stage"] == "sft" and r.get("cell_type")]
    profiles = label_profiles([r["genes"] for r in sft], [r["cell_type"] for r in sft])
    return tuple(sorted(profiles.marker_union()))


def _stage_of(row: Mapping[str, Any], params: TaskTableParams) -> str:
    if row["split"] == "adapt":
        return "rl"
    if row["split"] != "train":
        return "eval"
    u = stable_uniform("rl-cells", params.seed, row["dataset"], row["cell_id"])
    return "rl" if u < params.rl_fraction else "sft"


def cells_of_stage(cells: pd.DataFrame, stage: str, params: TaskTableParams | None = None) -> pd.DataFrame:
    """The rows of a cell-sentence table whose cells the task tables put in ``stage`` (sft, rl or eval)."""
    params = params or TaskTableParams()
    table = _validate(cells)
    keep = [_stage_of(row, params) == stage for row in table[["dataset", "cell_id", "split"]].to_dict("records")]
    return table[keep]


def _limit(records: list[dict[str, Any]], stage: str, params: TaskTableParams) -> list[dict[str, Any]]:
    """At most ``max_cells(stage)`` records per split, chosen by seed, kept in table order."""
    limit = params.max_cells(stage)
    if limit is None:
        return records
    keep: set[int] = set()
    by_split: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_split[rec["split"]].append(i)
    for split, idx in by_split.items():
        keep.update(stable_sample(idx, limit, "limit", params.seed, stage, split))
    return [rec for i, rec in enumerate(records) if i in keep]


# ---------------------------------------------------------------- public API

def available_tasks(columns: Iterable[str], tasks: Iterable[str] | None = None) -> list[str]:
    """The tasks (default: all registered) whose required columns are all present."""
    cols = set(columns)
    return [t for t in (task_names() if tasks is None else tasks) if all(c in cols for c in get_task(t).columns)]


def _label_keys() -> tuple[str, ...]:
    """Record keys: every registered task's columns and label column."""
    return tuple(dict.fromkeys(c for s in TASK_REGISTRY.values() for c in (*s.columns, s.label_column)))


def build_task_tables(cells: pd.DataFrame, params: TaskTableParams | None = None,
                      candidates: Sequence[str] | None = None) -> pd.DataFrame:
    """All prompt rows for the tasks the table supports (see module docstring). Rows are built per stage,
    task by task in registration order; tasks sharing a row builder (annotation, generation) interleave.
    ``candidates``: the cell types offered in annotation prompts instead of the table's own (a role adapt
    dataset offers the label set of its ``adapt_from`` dataset). Cells of split ``adapt`` lose their labels
    here: they reach the RL stage as unlabelled annotation prompts only."""
    params = params or TaskTableParams()
    table = _validate(cells)
    tasks = set(available_tasks(table.columns, params.tasks))
    if (table["split"] == "adapt").any() and "annotation" in params.tasks:
        tasks.add("annotation")  # an unlabelled adapt dataset needs no label column
    label_keys = _label_keys()
    records: list[dict[str, Any]] = []
    for row in table.to_dict("records"):
        genes = str(row["sentence"]).split()
        if params.top_k is not None:
            genes = genes[: params.top_k]
        if not genes:
            continue
        rec = {"cell_id": row["cell_id"], "dataset": row["dataset"], "split": row["split"], "genes": genes,
               "metadata": _metadata(row)}
        rec.update({k: None if row["split"] == "adapt" else _text(row, k) for k in label_keys})
        rec["stage"] = _stage_of(rec, params)
        records.append(rec)
    if params.markers == DATA_MARKERS:
        params = replace(params, markers=data_markers(records))
    builders: dict[Any, list] = {}
    for spec in TASK_REGISTRY.values():
        if spec.name in tasks:
            builders.setdefault(spec.build_rows, []).append(spec)
    ctx = BuildContext(params, records, candidates)
    for stage in STAGES:
        recs = _limit([r for r in records if r["stage"] == stage], stage, params)
        for build, specs in builders.items():
            build(ctx, recs, stage, specs)
    return pd.DataFrame(ctx.out.rows, columns=list(OUTPUT_COLUMNS))


def check_task_inputs(cells: pd.DataFrame, tasks: Iterable[str], source: object = "cell-sentence table") -> None:
    """Fail early, in one line, where a configured task cannot be built or learned from these cells: a label
    column it needs is missing or empty, or a classification task's training cells hold fewer than two
    classes (nothing to classify; the baselines would fail only at the end of the run)."""
    if (cells["split"] == "adapt").any() and not (cells["split"] == "train").any():
        return  # a role adapt dataset: its labels, where it has any, are only for evaluation
    for task in tasks:
        spec = get_task(task)
        missing = [c for c in spec.columns if c not in cells.columns]
        if missing:
            raise CellDualityError(f"{source}: task {task} needs column(s) {missing}, which the dataset does not map; "
                                   f"add them under datasets.<name>.labels or remove the dataset from tasks.{task}")
        labelled = cells[[is_present(v) for v in cells[spec.label_column]]]
        if labelled.empty:
            raise CellDualityError(f"{source}: task {task}: no cell has a {spec.label_column}; check the dataset's "
                                   f"labels mapping or remove it from tasks.{task}")
        if spec.metric in ("classification", "cellpuzzles"):
            classes = sorted(set(labelled.loc[labelled["split"] == "train", spec.label_column].astype(str)))
            if len(classes) < 2:
                raise CellDualityError(f"{source}: task {task} needs at least 2 {spec.label_column} classes among "
                                       f"the training cells, found {len(classes)} ({', '.join(classes) or 'none'}); "
                                       f"use a dataset with several classes or remove it from tasks.{task}")


PAIRING_COLUMNS = ("condition", "pair_id")  # what a catalog entry's pairing (cellduality.data.pairing) sets


def check_catalog(config: Mapping[str, Any], source: object = "config") -> None:
    """When the workflow starts: every dataset listed under a task maps the label columns that task needs
    (``labels``, or ``pairing`` for condition / pair_id), so a run cannot end with an empty task table."""
    for task, names in config.get("tasks", {}).items():
        spec = get_task(task)
        for name in names or ():
            ds = config["datasets"][name]
            if ds.get("role") == "adapt":
                if task != "annotation":
                    raise CellDualityError(f"{source}: dataset {name} has role adapt, which serves tasks.annotation "
                                           f"only; remove it from tasks.{task}")
                if ds.get("adapt_from") not in names:
                    raise CellDualityError(f"{source}: datasets.{name}.adapt_from ({ds.get('adapt_from')}) must be "
                                           "listed under tasks.annotation too (the model learns its labels there)")
                continue
            present = set(ds.get("labels", {})) | (set(PAIRING_COLUMNS) if ds.get("pairing", {}).get("control") else set())
            missing = [c for c in spec.columns if c not in present]
            if missing:
                raise CellDualityError(f"{source}: dataset {name} cannot serve task {task}: it maps no {missing} "
                                       f"column(s); add them under datasets.{name}.labels (condition/pair_id: or a "
                                       f"pairing), or remove {name} from tasks.{task}")


def check_task_prompts(table: pd.DataFrame, tasks: Iterable[str], source: object = "task table") -> None:
    """Every configured task has SFT and evaluation prompts (else one line saying why there are none)."""
    for task in tasks:
        rows = table[(table["task"] == task) & (table["direction"] == "primal")]
        if (rows["split"] == "adapt").any():  # role adapt: unlabelled RL prompts, evaluation where labelled
            continue
        for stage, split in (("sft", "train"), ("eval", "test")):
            if not (rows["stage"] == stage).any():
                raise CellDualityError(f"{source}: task {task} has no {stage} prompts (too few labelled cells in "
                                       f"the {split} split); add cells or lower task_tables.rl_fraction / "
                                       "splits.test_fraction")


def write_task_tables(cells: pd.DataFrame | str | Path, path: str | Path, params: TaskTableParams | None = None,
                      *, required: Iterable[str] = (), candidates_from: str | Path | None = None) -> pd.DataFrame:
    """Build the tables from a DataFrame or Parquet path and write them to ``path`` as Parquet. The
    ``required`` tasks (the configured ones) must be buildable and yield prompts: otherwise one line, and no
    file (:func:`check_task_inputs`, :func:`check_task_prompts`). ``candidates_from``: the cell-sentence table
    whose cell types the annotation prompts offer (a role adapt dataset's ``adapt_from``)."""
    frame = pd.read_parquet(cells) if isinstance(cells, (str, Path)) else cells
    source = cells if isinstance(cells, (str, Path)) else "cell-sentence table"
    required = tuple(required)
    check_task_inputs(frame, required, source)
    candidates = None
    if candidates_from is not None:
        labels = pd.read_parquet(candidates_from, columns=["cell_type"])["cell_type"]
        candidates = sorted({str(v) for v in labels if is_present(v)})
    result = build_task_tables(frame, params, candidates)
    check_task_prompts(result, required, source)
    with atomic_path(path) as tmp:
        result.to_parquet(tmp, index=False)
    return result
