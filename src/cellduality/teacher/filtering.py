"""Which teacher samples become SFT data: rejection sampling and rank-aware filtering.

Every task-table row has one answer kind, declared per task and direction in the task registry
(:meth:`cellduality.tasks.registry.TaskSpec.kind`):

| kind | rows (built-in tasks) | accepted when | score |
|---|---|---|---|
| label | annotation, sensitivity (primal); generation, perturbation (dual) | the answer, mapped onto the candidates by ``parsing.match_label``, equals the label | 1 / 0 |
| genes | generation, perturbation (primal) | RWJS(reference cell, generated) >= ``rwjs_threshold`` | RWJS |
| genes | inpainting duals of annotation, sensitivity, CellPuzzles | RWJS(hidden genes, reconstruction) >= ``dual_rwjs_threshold`` | RWJS |
| assignment | CellPuzzles (primal) | every cell assigned its true type (Cell-o1's rules: N entries, candidates, no repeats) | fraction right |

``per_task`` overrides either threshold for one task (RWJS scales differ: a perturbed cell shares most of its
genes with the unperturbed input, a generated cell few with any real cell). A malformed response
(``parsing.parse_response``; ``strict_format`` applies Cell-o1's exact check) is never
accepted. Dual rows are only sent to the teacher for primal prompts with an accepted sample
(:func:`primal_id_of` links them). Identical accepted completions of one prompt are kept once (``dedupe``)
and at most ``max_accepted_per_prompt`` are kept per prompt (lowest sample index first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from cellduality.config import Settings, setting
from cellduality.errors import CellDualityError
from cellduality.tasks.parsing import (
    labels_equal,
    match_label,
    parse_cellpuzzles_answer,
    parse_gene_list,
    parse_response,
)
from cellduality.tasks.registry import get_task
from cellduality.tasks.rwjs import as_gene_list, rwjs
from cellduality.tasks.schema import TaskRow, decode_column, decode_value

THRESHOLD_KEYS = ("rwjs_threshold", "dual_rwjs_threshold")

@dataclass(frozen=True)
class FilterSettings(Settings):
    """Config ``filtering.*``."""

    SECTION: ClassVar[str] = "filtering"
    rwjs_threshold: float = setting("filtering.rwjs_threshold")
    dual_rwjs_threshold: float | None = setting("filtering.dual_rwjs_threshold")
    strict_format: bool = setting("filtering.strict_format")
    dedupe: bool = setting("filtering.dedupe")
    max_accepted_per_prompt: int | None = setting("filtering.max_accepted_per_prompt")
    per_task: Mapping[str, Mapping[str, float | None]] = setting("filtering.per_task")

    def __post_init__(self) -> None:
        for task, override in self.per_task.items():
            bad = sorted(set(override) - set(THRESHOLD_KEYS))
            if bad:
                raise CellDualityError(f"filtering.per_task.{task}: unknown key(s) {bad}; "
                                       f"known: {list(THRESHOLD_KEYS)}")

    def threshold(self, direction: str, task: str | None = None) -> float:
        """RWJS threshold of gene-list samples: per-task override, else global (duals: dual, else primal)."""
        override = dict(self.per_task.get(task, {})) if task else {}
        primal = override.get("rwjs_threshold")
        primal = self.rwjs_threshold if primal is None else primal
        if direction != "dual":
            return primal
        for value in (override.get("dual_rwjs_threshold"), self.dual_rwjs_threshold):
            if value is not None:
                return value
        return primal


@dataclass(frozen=True)
class Verdict:
    """The filter's decision on one sample."""

    score: float
    passed: bool
    parsed: str | None
    reason: str


def answer_kind(task: str, direction: str) -> str:
    """The answer kind of a (task, direction) from the task registry."""
    return get_task(task).kind(direction)


def _field(row: TaskRow | Mapping[str, Any], name: str) -> Any:
    return getattr(row, name) if isinstance(row, TaskRow) else row[name]


def _candidates(row: TaskRow | Mapping[str, Any]) -> list[str]:
    if isinstance(row, TaskRow):
        return list(row.candidates)
    return list(decode_value("candidates", row.get("candidates"), row_id=row.get("prompt_id")))


def judge(row: TaskRow | Mapping[str, Any], text: str, settings: FilterSettings) -> Verdict:
    """Score and accept/reject one teacher sample for a task-table row (a :class:`TaskRow`, or a record with
    at least ``task, direction, answer`` and ``candidates``)."""
    parsed = parse_response(text, strict=settings.strict_format)
    if not parsed.format_ok:
        return Verdict(0.0, False, None, f"format: {parsed.error}")
    task, direction = _field(row, "task"), _field(row, "direction")
    kind = answer_kind(task, direction)
    gold = str(_field(row, "answer"))
    if kind == "label":
        cands = _candidates(row)
        label = match_label(parsed.answer, cands or None)
        if label is None:
            return Verdict(0.0, False, parsed.answer, f"not a candidate: {parsed.answer[:80]!r}")
        ok = labels_equal(label, gold)
        return Verdict(float(ok), ok, label, "accepted" if ok else f"wrong label {label!r}")
    if kind == "genes":
        genes = parse_gene_list(parsed.answer)
        score = rwjs([g.upper() for g in as_gene_list(gold)], genes)
        threshold = settings.threshold(direction, task)
        ok = score >= threshold
        return Verdict(score, ok, " ".join(genes), "accepted" if ok else f"rwjs {score:.3f} < {threshold:g}")
    gold_labels = [s.strip() for s in gold.split("|") if s.strip()]
    result = parse_cellpuzzles_answer(parsed.answer, _candidates(row) or gold_labels, len(gold_labels))
    if not result.format_ok:
        return Verdict(0.0, False, parsed.answer, f"puzzle: {result.error}")
    right = sum(labels_equal(a, g) for a, g in zip(result.labels, gold_labels))
    ok = right == len(gold_labels)
    return Verdict(right / len(gold_labels), ok, " | ".join(result.labels),
                   "accepted" if ok else f"puzzle: {right}/{len(gold_labels)} cells right")


def primal_id_of(dual_prompt_id: str) -> str:
    """The primal prompt id a dual row belongs to (task tables: ``task:dual:stage:dataset:key`` or, for
    CellPuzzles, ``<primal id>#<cell>``)."""
    if "#" in dual_prompt_id:
        return dual_prompt_id.rsplit("#", 1)[0]
    head, sep, rest = dual_prompt_id.partition(":dual:")
    return f"{head}:primal:{rest}" if sep else dual_prompt_id


def link_duals(primal: pd.DataFrame, dual: pd.DataFrame) -> pd.Series:
    """For every dual row, its primal prompt id (by id pattern, else by shared cell ids); '' when none."""
    known = set(primal["prompt_id"])
    by_cells = {}
    for pid, cells in zip(primal["prompt_id"], decode_column(primal, "cell_ids")):
        for cell in cells:
            by_cells.setdefault(cell, pid)
    out = []
    for pid, ids in zip(dual["prompt_id"], decode_column(dual, "cell_ids")):
        parent = primal_id_of(pid)
        if parent not in known:
            parent = by_cells.get(ids[0], "") if ids else ""
        out.append(parent)
    return pd.Series(out, index=dual.index, dtype=object)


def select(samples: pd.DataFrame, settings: FilterSettings) -> pd.Series:
    """``accepted``: passed the filter, not a duplicate of an earlier accepted completion of the same prompt,
    and within ``max_accepted_per_prompt``. Updates ``reason`` for the ones dropped here."""
    accepted = samples["passed"].copy()
    seen: dict[str, dict[str, int]] = {}
    count: dict[str, int] = {}
    for idx in samples.sort_values(["prompt_id", "sample_index"]).index:
        if not accepted[idx]:
            continue
        pid, text = samples.at[idx, "prompt_id"], samples.at[idx, "completion"]
        first = seen.setdefault(pid, {}).get(text)
        if settings.dedupe and first is not None:
            accepted[idx] = False
            samples.at[idx, "reason"] = f"duplicate of sample {first}"
            continue
        seen[pid].setdefault(text, int(samples.at[idx, "sample_index"]))
        limit = settings.max_accepted_per_prompt
        if limit is not None and count.get(pid, 0) >= limit:
            accepted[idx] = False
            samples.at[idx, "reason"] = f"over max_accepted_per_prompt ({limit})"
            continue
        count[pid] = count.get(pid, 0) + 1
    return accepted


def direction_stats(samples: pd.DataFrame, n_prompts: int, n_samples: int) -> dict[str, Any]:
    """Acceptance statistics of one direction's samples (rates are per received sample)."""
    received = len(samples)
    passed = int(samples["passed"].sum()) if received else 0
    accepted = int(samples["accepted"].sum()) if received else 0
    fmt = int(samples["reason"].str.startswith("format").sum()) if received else 0
    covered = int(samples.loc[samples["accepted"], "prompt_id"].nunique()) if received else 0
    return {
        "prompts": n_prompts,
        "samples_requested": n_prompts * n_samples,
        "samples_received": received,
        "format_errors": fmt,
        "passed_filter": passed,
        "acceptance_rate": round(passed / received, 4) if received else None,
        "accepted_after_dedupe": accepted,
        "prompts_with_accepted": covered,
        "prompt_coverage": round(covered / n_prompts, 4) if n_prompts else None,
        "mean_score": round(float(samples["score"].mean()), 4) if received else None,
    }


def score_summary(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {}
    s = pd.Series(values, dtype=float)
    return {q: round(float(s.quantile(float(q))), 4) for q in ("0.1", "0.25", "0.5", "0.75", "0.9")}
