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
from pathlib import Path
from typing import Any

import pandas as pd

from cellduality.data.label_profiles import label_profiles
from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.seeding import stable_sample, stable_uniform
from cellduality.tasks.inpainting import DATA_MARKERS, InpaintingSettings
from cellduality.tasks.prompts import CONTEXT_KEYS, is_present
from cellduality.tasks.registry import TASK_REGISTRY, get_task, task_names
from cellduality.tasks.rows import BuildContext, cellpuzzles_batches
from cellduality.tasks.schema import ROW_COLUMNS
from cellduality.tasks.settings import STAGES, CellPuzzlesSettings, TaskTableSettings

REQUIRED_COLUMNS = ("cell_id", "dataset", "split", "sentence")
SPLITS = ("train", "test", "ood", "adapt")  # adapt: a role adapt dataset's unlabelled RL cells
OUTPUT_COLUMNS = ROW_COLUMNS
__all__ = ["OUTPUT_COLUMNS", "REQUIRED_COLUMNS", "SPLITS", "STAGES", "available_tasks", "build_task_tables",
           "cellpuzzles_batches", "cells_of_stage", "check_task_inputs", "check_task_prompts", "data_markers",
           "write_task_tables"]


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


def _stage_of(row: Mapping[str, Any], tables: TaskTableSettings) -> str:
    if row["split"] == "adapt":
        return "rl"
    if row["split"] != "train":
        return "eval"
    u = stable_uniform("rl-cells", tables.seed, row["dataset"], row["cell_id"])
    return "rl" if u < tables.rl_fraction else "sft"


def cells_of_stage(cells: pd.DataFrame, stage: str, tables: TaskTableSettings | None = None) -> pd.DataFrame:
    """The rows of a cell-sentence table whose cells the task tables put in ``stage`` (sft, rl or eval)."""
    tables = tables or TaskTableSettings()
    table = _validate(cells)
    keep = [_stage_of(row, tables) == stage for row in table[["dataset", "cell_id", "split"]].to_dict("records")]
    return table[keep]


def _limit(records: list[dict[str, Any]], stage: str, tables: TaskTableSettings) -> list[dict[str, Any]]:
    """At most ``max_cells(stage)`` records per split, chosen by seed, kept in table order."""
    limit = tables.max_cells(stage)
    if limit is None:
        return records
    keep: set[int] = set()
    by_split: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_split[rec["split"]].append(i)
    for split, idx in by_split.items():
        keep.update(stable_sample(idx, limit, "limit", tables.seed, stage, split))
    return [rec for i, rec in enumerate(records) if i in keep]


# ---------------------------------------------------------------- public API

def available_tasks(columns: Iterable[str], tasks: Iterable[str] | None = None) -> list[str]:
    """The tasks (default: all registered) whose required columns are all present."""
    cols = set(columns)
    return [t for t in (task_names() if tasks is None else tasks) if all(c in cols for c in get_task(t).columns)]


def _label_keys() -> tuple[str, ...]:
    """Record keys: every registered task's columns and label column."""
    return tuple(dict.fromkeys(c for s in TASK_REGISTRY.values() for c in (*s.columns, s.label_column)))


def build_task_tables(cells: pd.DataFrame, tasks: Iterable[str] | None = None, *,
                      tables: TaskTableSettings | None = None, inpainting: InpaintingSettings | None = None,
                      cellpuzzles: CellPuzzlesSettings | None = None, top_k: int | None = None,
                      candidates: Sequence[str] | None = None) -> pd.DataFrame:
    """All prompt rows for the ``tasks`` (default: every registered task) the table supports (see module
    docstring). Rows are built per stage, task by task in registration order; tasks sharing a row builder
    (annotation, generation) interleave. The settings are the config sections ``task_tables``, ``inpainting``
    and ``cellpuzzles`` (absent: schema defaults); ``top_k`` (``cell_sentence.top_k``) cuts every sentence to
    its first genes (None: whole sentences). ``candidates``: the cell types offered in annotation prompts
    instead of the table's own (a role adapt dataset offers the label set of its ``adapt_from`` dataset).
    Cells of split ``adapt`` lose their labels here: they reach the RL stage as unlabelled annotation prompts
    only."""
    tasks = task_names() if tasks is None else tuple(get_task(t).name for t in tasks)
    tables = tables or TaskTableSettings()
    inpainting = inpainting or InpaintingSettings()
    if top_k is not None and top_k < 1:
        raise CellDualityError(f"cell_sentence.top_k must be positive; got {top_k}")
    table = _validate(cells)
    built = set(available_tasks(table.columns, tasks))
    if (table["split"] == "adapt").any() and "annotation" in tasks:
        built.add("annotation")  # an unlabelled adapt dataset needs no label column
    label_keys = _label_keys()
    records: list[dict[str, Any]] = []
    for row in table.to_dict("records"):
        genes = str(row["sentence"]).split()
        if top_k is not None:
            genes = genes[:top_k]
        if not genes:
            continue
        rec = {"cell_id": row["cell_id"], "dataset": row["dataset"], "split": row["split"], "genes": genes,
               "metadata": _metadata(row)}
        rec.update({k: None if row["split"] == "adapt" else _text(row, k) for k in label_keys})
        rec["stage"] = _stage_of(rec, tables)
        records.append(rec)
    if inpainting.markers == DATA_MARKERS:
        inpainting = inpainting.replace(markers=data_markers(records))
    builders: dict[Any, list] = {}
    for spec in TASK_REGISTRY.values():
        if spec.name in built:
            builders.setdefault(spec.build_rows, []).append(spec)
    ctx = BuildContext(records, tables, inpainting, cellpuzzles or CellPuzzlesSettings(), candidates)
    for stage in STAGES:
        recs = _limit([r for r in records if r["stage"] == stage], stage, tables)
        for build, specs in builders.items():
            build(ctx, recs, stage, specs)
    return pd.DataFrame(ctx.out.rows, columns=list(OUTPUT_COLUMNS))


def check_task_inputs(cells: pd.DataFrame, tasks: Iterable[str], source: object = "cell-sentence table") -> None:
    """Fail early, in one line, where a configured task cannot be built or learned from these cells: a label
    column it needs is missing or empty, or a classification task's training cells (a role ood dataset's cells)
    hold fewer than two classes (nothing to classify; the baselines would fail only at the end of the run)."""
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
            held_out = (labelled["split"] == "ood").all()  # role ood: classes among the held-out cells
            learned = labelled if held_out else labelled[labelled["split"] == "train"]
            classes = sorted(set(learned[spec.label_column].astype(str)))
            if len(classes) < 2:
                cells_named = "held-out" if held_out else "training"
                raise CellDualityError(f"{source}: task {task} needs at least 2 {spec.label_column} classes among "
                                       f"the {cells_named} cells, found {len(classes)} "
                                       f"({', '.join(classes) or 'none'}); "
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
    """Every configured task has SFT and evaluation prompts, a held-out (role ood) dataset evaluation prompts
    (else one line saying why there are none)."""
    for task in tasks:
        rows = table[(table["task"] == task) & (table["direction"] == "primal")]
        if (rows["split"] == "adapt").any():  # role adapt: unlabelled RL prompts, evaluation where labelled
            continue
        held_out = len(rows) and (rows["split"] == "ood").all()  # role ood: evaluation prompts only
        for stage, split in (("sft", "train"), ("eval", "test")):
            if not (rows["stage"] == stage).any() and not (held_out and stage == "sft"):
                raise CellDualityError(f"{source}: task {task} has no {stage} prompts (too few labelled cells in "
                                       f"the {split} split); add cells or lower task_tables.rl_fraction / "
                                       "splits.test_fraction")


def write_task_tables(cells: pd.DataFrame | str | Path, path: str | Path, tasks: Iterable[str] | None = None, *,
                      tables: TaskTableSettings | None = None, inpainting: InpaintingSettings | None = None,
                      cellpuzzles: CellPuzzlesSettings | None = None, top_k: int | None = None,
                      required: Iterable[str] = (), candidates_from: str | Path | None = None) -> pd.DataFrame:
    """:func:`build_task_tables` from a DataFrame or Parquet path, written to ``path`` as Parquet. The
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
    result = build_task_tables(frame, tasks, tables=tables, inpainting=inpainting, cellpuzzles=cellpuzzles,
                               top_k=top_k, candidates=candidates)
    check_task_prompts(result, required, source)
    with atomic_path(path) as tmp:
        result.to_parquet(tmp, index=False)
    return result
