"""Per-task prompt/answer tables built from a cell-sentence table.

Input: one row per cell with ``cell_id, dataset, split (train/test/ood), sentence`` and, where present, label
columns ``cell_type, drug, sensitivity, condition, pair_id`` and metadata ``tissue, disease, sex, age, donor,
dose, time``. Output: one row per prompt (:data:`OUTPUT_COLUMNS`); list-valued columns are JSON strings.

Stages: ``sft`` (labelled train cells: primal and dual rows with answers), ``rl`` (the other train cells, held
out of SFT, fresh masks, primal rows only, ``answer`` empty and the label kept only in ``label`` for the
oracle reward and diagnostics), ``eval`` (test and ood cells: primal and dual rows with answers).
A task is built only where its columns are present. Perturbation pairs a treated cell with the first control
cell (``condition`` in ``control_values``) sharing its ``dataset`` and ``pair_id``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.seeding import stable_sample, stable_seed, stable_shuffle, stable_uniform
from cellduality.tasks.inpainting import DEFAULT_HIDDEN_FRACTION, DEFAULT_STRATEGY, InpaintingConfig, InpaintingMask
from cellduality.tasks.prompts import (
    CELLPUZZLES_ANSWER_SEP,
    CONTEXT_KEYS,
    TASKS,
    Messages,
    annotation_dual_prompt,
    annotation_prompt,
    cellpuzzles_dual_prompt,
    cellpuzzles_prompt,
    generation_dual_prompt,
    generation_prompt,
    is_present,
    join_genes,
    perturbation_dual_prompt,
    perturbation_prompt,
    sensitivity_dual_prompt,
    sensitivity_prompt,
)

REQUIRED_COLUMNS = ("cell_id", "dataset", "split", "sentence")
SPLITS = ("train", "test", "ood")
STAGES = ("sft", "rl", "eval")
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "annotation": ("cell_type",),
    "generation": ("cell_type",),
    "sensitivity": ("drug", "sensitivity"),
    "perturbation": ("drug", "condition", "pair_id"),
    "cellpuzzles": ("cell_type",),
}
OUTPUT_COLUMNS = (
    "prompt_id", "task", "direction", "dataset", "split", "stage", "prompt", "answer", "label", "candidates",
    "hidden_genes", "visible_genes", "reference_sentence", "input_sentence", "cell_ids", "metadata",
)


@dataclass(frozen=True)
class TaskTableParams:
    """Settings (config keys of the same names; see :meth:`from_dict`)."""

    tasks: tuple[str, ...] = TASKS
    top_k: int | None = None
    hidden_fraction: float = DEFAULT_HIDDEN_FRACTION
    strategy: str = DEFAULT_STRATEGY
    markers: tuple[str, ...] | None = None
    seed: int = 0
    rl_fraction: float = 0.5
    max_cells_sft: int | None = None
    max_cells_rl: int | None = None
    max_cells_eval: int | None = None
    cellpuzzles_n: int = 5
    annotation_candidates: bool = True
    control_values: tuple[str, ...] = ("control", "ctrl", "vehicle", "dmso", "untreated")

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if not 0.0 <= self.rl_fraction <= 1.0:
            raise ValueError(f"rl_fraction must be in [0, 1]; got {self.rl_fraction}")
        if self.cellpuzzles_n < 2:
            raise ValueError(f"cellpuzzles_n must be at least 2; got {self.cellpuzzles_n}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be positive; got {self.top_k}")
        self.inpainting("sft")  # validates fraction / strategy / markers

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TaskTableParams:
        """Build from a flat mapping of field names (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown task-table setting(s) {unknown}; known: {sorted(names)}")
        kwargs = dict(values)
        for key in ("tasks", "markers", "control_values"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TaskTableParams:
        """Build from the pipeline config: ``task_tables.*``, ``inpainting.{hidden_fraction,strategy,markers}``,
        ``cellpuzzles.batch_size`` and ``cell_sentence.top_k`` (absent sections keep the defaults)."""
        values: dict[str, Any] = dict(config.get("task_tables") or {})
        inpainting = config.get("inpainting") or {}
        values.update({k: inpainting[k] for k in ("hidden_fraction", "strategy", "markers") if k in inpainting})
        if "batch_size" in (config.get("cellpuzzles") or {}):
            values["cellpuzzles_n"] = config["cellpuzzles"]["batch_size"]
        if "top_k" in (config.get("cell_sentence") or {}):
            values.setdefault("top_k", config["cell_sentence"]["top_k"])
        return cls.from_dict(values)

    def inpainting(self, stage: str) -> InpaintingConfig:
        """Mask settings; the salt differs per stage and seed, so RL masks are fresh."""
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


def _stage_of(row: Mapping[str, Any], params: TaskTableParams) -> str:
    if row["split"] != "train":
        return "eval"
    u = stable_uniform("rl-cells", params.seed, row["dataset"], row["cell_id"])
    return "rl" if u < params.rl_fraction else "sft"


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


# ---------------------------------------------------------------- row assembly

def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class _Rows:
    """Accumulates output rows with all columns filled."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(
        self,
        *,
        task: str,
        direction: str,
        stage: str,
        prompt_id: str,
        rec: Mapping[str, Any],
        prompt: Messages,
        answer: str,
        label: str,
        candidates: Sequence[str] = (),
        mask: InpaintingMask | Sequence[InpaintingMask] | None = None,
        reference: str = "",
        input_sentence: str = "",
        cell_ids: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(mask, InpaintingMask):
            hidden, visible = list(mask.hidden), list(mask.visible)
        elif mask:
            hidden, visible = [list(m.hidden) for m in mask], [list(m.visible) for m in mask]
        else:
            hidden, visible = [], []
        self.rows.append({
            "prompt_id": prompt_id,
            "task": task,
            "direction": direction,
            "dataset": rec["dataset"],
            "split": rec["split"],
            "stage": stage,
            "prompt": _dumps(prompt),
            "answer": "" if stage == "rl" else answer,
            "label": label,
            "candidates": _dumps(list(candidates)),
            "hidden_genes": _dumps(hidden),
            "visible_genes": _dumps(visible),
            "reference_sentence": reference,
            "input_sentence": input_sentence,
            "cell_ids": _dumps(list(cell_ids) or [rec["cell_id"]]),
            "metadata": _dumps(dict(metadata if metadata is not None else rec["metadata"])),
        })


def _label_sets(records: Iterable[Mapping[str, Any]], key: str, exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    skip = {e.lower() for e in exclude}
    sets: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        value = rec.get(key)
        if value is not None and value.lower() not in skip:
            sets[rec["dataset"]].add(value)
    return {ds: sorted(values) for ds, values in sets.items()}


def _pid(task: str, direction: str, stage: str, dataset: str, key: str) -> str:
    return f"{task}:{direction}:{stage}:{dataset}:{key}"


def _identity_rows(out: _Rows, recs: list[dict[str, Any]], stage: str, tasks: Sequence[str],
                   types: Mapping[str, list[str]], params: TaskTableParams) -> None:
    masker = params.inpainting(stage)
    with_dual = stage != "rl"
    for rec in recs:
        label = rec["cell_type"]
        if label is None:
            continue
        genes, meta, ds = rec["genes"], rec["metadata"], rec["dataset"]
        cands = types[ds]
        shown = cands if params.annotation_candidates else None
        sentence = join_genes(genes)
        if "annotation" in tasks:
            pid = _pid("annotation", "primal", stage, ds, rec["cell_id"])
            mask = masker.mask(genes, pid)
            common = dict(task="annotation", stage=stage, rec=rec, label=label, candidates=cands, mask=mask,
                          input_sentence=sentence)
            out.add(direction="primal", prompt_id=pid, prompt=annotation_prompt(genes, meta, shown),
                    answer=label, **common)
            if with_dual:
                out.add(direction="dual", prompt_id=_pid("annotation", "dual", stage, ds, rec["cell_id"]),
                        prompt=annotation_dual_prompt(mask.visible, label, mask.n_hidden, meta),
                        answer=join_genes(mask.hidden), **common)
        if "generation" in tasks:
            common = dict(task="generation", stage=stage, rec=rec, label=label, candidates=cands,
                          reference=sentence)
            out.add(direction="primal", prompt_id=_pid("generation", "primal", stage, ds, rec["cell_id"]),
                    prompt=generation_prompt(label, len(genes), meta), answer=sentence, **common)
            if with_dual:
                out.add(direction="dual", prompt_id=_pid("generation", "dual", stage, ds, rec["cell_id"]),
                        prompt=generation_dual_prompt(genes, meta, cands), answer=label, input_sentence=sentence,
                        **common)


def _sensitivity_rows(out: _Rows, recs: list[dict[str, Any]], stage: str,
                      labels: Mapping[str, list[str]], params: TaskTableParams) -> None:
    masker = params.inpainting(stage)
    for rec in recs:
        drug, sens = rec["drug"], rec["sensitivity"]
        if drug is None or sens is None:
            continue
        genes, meta, ds = rec["genes"], rec["metadata"], rec["dataset"]
        pid = _pid("sensitivity", "primal", stage, ds, rec["cell_id"])
        mask = masker.mask(genes, pid)
        common = dict(task="sensitivity", stage=stage, rec=rec, label=sens, candidates=labels[ds], mask=mask,
                      input_sentence=join_genes(genes))
        out.add(direction="primal", prompt_id=pid, prompt=sensitivity_prompt(genes, drug, meta, labels[ds]),
                answer=sens, **common)
        if stage != "rl":
            out.add(direction="dual", prompt_id=_pid("sensitivity", "dual", stage, ds, rec["cell_id"]),
                    prompt=sensitivity_dual_prompt(mask.visible, drug, sens, mask.n_hidden, meta),
                    answer=join_genes(mask.hidden), **common)


def _perturbation_rows(out: _Rows, recs: list[dict[str, Any]], stage: str, all_recs: list[dict[str, Any]],
                       params: TaskTableParams) -> None:
    controls = {c.lower() for c in params.control_values}

    def is_control(rec: Mapping[str, Any]) -> bool:
        return (rec["condition"] or "").lower() in controls

    pre_of: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in all_recs:
        if rec["pair_id"] is not None and is_control(rec):
            pre_of.setdefault((rec["dataset"], str(rec["pair_id"])), rec)
    drugs = _label_sets([r for r in all_recs if r["condition"] is not None and not is_control(r)], "drug",
                        params.control_values)
    for rec in recs:
        if rec["drug"] is None or rec["pair_id"] is None or rec["condition"] is None or is_control(rec):
            continue
        pre = pre_of.get((rec["dataset"], str(rec["pair_id"])))
        if pre is None:
            continue
        ds, drug, post_genes, meta = rec["dataset"], rec["drug"], rec["genes"], rec["metadata"]
        common = dict(task="perturbation", stage=stage, rec=rec, label=drug, candidates=drugs[ds],
                      reference=join_genes(post_genes), input_sentence=join_genes(pre["genes"]),
                      cell_ids=[rec["cell_id"], pre["cell_id"]])
        out.add(direction="primal", prompt_id=_pid("perturbation", "primal", stage, ds, rec["cell_id"]),
                prompt=perturbation_prompt(pre["genes"], drug, len(post_genes), meta),
                answer=join_genes(post_genes), **common)
        if stage != "rl":
            out.add(direction="dual", prompt_id=_pid("perturbation", "dual", stage, ds, rec["cell_id"]),
                    prompt=perturbation_dual_prompt(post_genes, pre["genes"], drugs[ds], meta), answer=drug,
                    **common)


# ---------------------------------------------------------------- CellPuzzles

def cellpuzzles_batches(recs: Sequence[Mapping[str, Any]], n: int, seed: int, stage: str) -> list[list[int]]:
    """Batches of ``n`` record indices with ``n`` distinct cell types: same donor where possible, else the
    same dataset; each cell is used at most once; deterministic by seed."""

    def fill(pool: Sequence[int], key: str, batches: list[list[int]]) -> list[int]:
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in pool:
            by_type[recs[i]["cell_type"]].append(i)
        queues = {t: stable_shuffle(idx, "puzzle-cells", seed, stage, key, t) for t, idx in by_type.items()}
        while True:
            available = sorted(t for t, q in queues.items() if q)
            if len(available) < n:
                return [i for q in queues.values() for i in q]
            chosen = stable_sample(available, n, "puzzle-types", seed, stage, key, len(batches))
            batches.append([queues[t].pop() for t in chosen])

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, rec in enumerate(recs):
        if rec["cell_type"] is not None:
            donor = rec["metadata"].get("donor")
            groups[(rec["dataset"], "" if donor is None else str(donor))].append(i)
    batches: list[list[int]] = []
    leftovers: dict[str, list[int]] = defaultdict(list)
    for (ds, donor), pool in sorted(groups.items()):
        if donor:
            leftovers[ds].extend(fill(pool, f"{ds}:donor:{donor}", batches))
        else:
            leftovers[ds].extend(pool)
    for ds, pool in sorted(leftovers.items()):
        fill(sorted(pool), f"{ds}:dataset", batches)
    return batches


def _shared_metadata(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = recs[0]["metadata"]
    return {k: v for k, v in first.items() if all(r["metadata"].get(k) == v for r in recs[1:])}


def _cellpuzzles_rows(out: _Rows, recs: list[dict[str, Any]], stage: str, params: TaskTableParams) -> None:
    masker = params.inpainting(stage)
    for batch in cellpuzzles_batches(recs, params.cellpuzzles_n, params.seed, stage):
        cells = [recs[i] for i in batch]
        ids = [c["cell_id"] for c in cells]
        ds = cells[0]["dataset"]
        key = f"{stable_seed(*ids):016x}"
        pid = _pid("cellpuzzles", "primal", stage, ds, key)
        gold = [c["cell_type"] for c in cells]
        candidates = stable_shuffle(gold, "puzzle-candidates", params.seed, pid)
        meta = _shared_metadata(cells)
        masks = [masker.mask(c["genes"], f"{pid}#{j}") for j, c in enumerate(cells)]
        label = CELLPUZZLES_ANSWER_SEP.join(gold)
        out.add(task="cellpuzzles", direction="primal", stage=stage, prompt_id=pid, rec=cells[0],
                prompt=cellpuzzles_prompt([c["genes"] for c in cells], candidates, meta), answer=label,
                label=label, candidates=candidates, mask=masks, cell_ids=ids, metadata=meta)
        if stage == "rl":
            continue
        for j, (cell, mask) in enumerate(zip(cells, masks)):
            out.add(task="cellpuzzles", direction="dual", stage=stage, prompt_id=f"{pid}#{j}", rec=cell,
                    prompt=cellpuzzles_dual_prompt(mask.visible, cell["cell_type"], mask.n_hidden, meta),
                    answer=join_genes(mask.hidden), label=cell["cell_type"], candidates=candidates, mask=mask,
                    input_sentence=join_genes(cell["genes"]), cell_ids=[cell["cell_id"]], metadata=meta)


# ---------------------------------------------------------------- public API

def available_tasks(columns: Iterable[str], tasks: Iterable[str] = TASKS) -> list[str]:
    """The tasks whose label columns are all present."""
    cols = set(columns)
    return [t for t in tasks if all(c in cols for c in TASK_COLUMNS[t])]


def build_task_tables(cells: pd.DataFrame, params: TaskTableParams | None = None) -> pd.DataFrame:
    """All prompt rows for the tasks the table supports (see module docstring)."""
    params = params or TaskTableParams()
    table = _validate(cells)
    tasks = available_tasks(table.columns, params.tasks)
    label_keys = ("cell_type", "drug", "sensitivity", "condition", "pair_id")
    records: list[dict[str, Any]] = []
    for row in table.to_dict("records"):
        genes = str(row["sentence"]).split()
        if params.top_k is not None:
            genes = genes[: params.top_k]
        if not genes:
            continue
        rec = {"cell_id": row["cell_id"], "dataset": row["dataset"], "split": row["split"], "genes": genes,
               "metadata": _metadata(row)}
        rec.update({k: _text(row, k) for k in label_keys})
        rec["stage"] = _stage_of(rec, params)
        records.append(rec)
    types = _label_sets(records, "cell_type")
    sens_labels = _label_sets(records, "sensitivity")
    out = _Rows()
    for stage in STAGES:
        recs = _limit([r for r in records if r["stage"] == stage], stage, params)
        identity = [t for t in ("annotation", "generation") if t in tasks]
        if identity:
            _identity_rows(out, recs, stage, identity, types, params)
        if "sensitivity" in tasks:
            _sensitivity_rows(out, recs, stage, sens_labels, params)
        if "perturbation" in tasks:
            _perturbation_rows(out, recs, stage, records, params)
        if "cellpuzzles" in tasks:
            _cellpuzzles_rows(out, recs, stage, params)
    return pd.DataFrame(out.rows, columns=list(OUTPUT_COLUMNS))


def write_task_tables(cells: pd.DataFrame | str | Path, path: str | Path,
                      params: TaskTableParams | None = None) -> pd.DataFrame:
    """Build the tables from a DataFrame or Parquet path and write them to ``path`` as Parquet."""
    frame = pd.read_parquet(cells) if isinstance(cells, (str, Path)) else cells
    result = build_task_tables(frame, params)
    with atomic_path(path) as tmp:
        result.to_parquet(tmp, index=False)
    return result
