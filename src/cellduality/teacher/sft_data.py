"""Teacher chain-of-thought SFT data for one task table: primal samples, filtering, then duals.

1. The task table's ``stage == "sft"`` primal prompts (optionally ``teacher.max_prompts`` of them, or the
   task's ``teacher.max_prompts_per_task``, chosen by seed) get ``n_samples`` teacher samples each, judged
   by :mod:`cellduality.teacher.filtering`.
2. The dual prompts of the primal prompts with at least one accepted sample — the (y*, x_k) -> x_u rows of
   the task table — get ``n_samples`` each and are judged the same way (categorical duals exactly,
   gene-list duals by RWJS). With ``teacher.dual_answers: data`` the teacher is not asked for duals: every
   dual row of the primal prompts sent to the teacher becomes one SFT example whose answer is the row's known
   answer (the hidden genes, the label or the drug: the task table knows them) with empty reasoning, so the
   dual tasks the duality reward relies on are learned from as many examples as the primal tasks. With
   ``teacher.dual_answers: teacher+data`` the dual prompts of every primal prompt sent to the teacher are
   asked, and those without an accepted sample get the data answer.
3. One Parquet row per received sample (accepted or not) and a ``.stats.json`` with acceptance rates per
   direction, tokens and cost are written atomically.

Output columns: :data:`SFT_COLUMNS`; ``prompt`` is the chat messages (JSON) and ``completion`` the
teacher's text, so accepted rows are ready-made (prompt, completion) SFT pairs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cellduality.data.label_profiles import DataProfiles, label_profiles
from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.seeding import stable_sample
from cellduality.tasks.prompts import format_answer
from cellduality.tasks.schema import check_columns, decode_column, read_task_frame
from cellduality.tasks.settings import TaskTableSettings
from cellduality.tasks.tables import cells_of_stage
from cellduality.teacher.cache import ResponseCache
from cellduality.teacher.filtering import FilterSettings, direction_stats, judge, link_duals, score_summary, select
from cellduality.teacher.providers import TeacherProvider
from cellduality.teacher.runner import TeacherRunner, TeacherSettings, Usage, api_key, make_provider

log = logging.getLogger("cellduality.teacher")

SFT_COLUMNS = (
    "prompt_id", "task", "direction", "dataset", "stage", "primal_prompt_id", "sample_index", "prompt",
    "completion", "answer", "parsed_answer", "score", "passed", "accepted", "reason", "finish_reason",
    "tokens_in", "tokens_out", "cached", "provider", "model",
)
REQUIRED = ("prompt_id", "task", "direction", "dataset", "stage", "prompt", "answer", "candidates", "cell_ids")


def sft_cell_profiles(cells: pd.DataFrame | str | Path, tables: TaskTableSettings | None = None,
                      label_column: str = "cell_type") -> DataProfiles:
    """Label profiles (:mod:`cellduality.data.label_profiles`) of the cells the task tables put in the SFT
    stage: the teacher learns from the training cells it writes SFT data for, never from RL or test cells."""
    frame = pd.read_parquet(cells) if isinstance(cells, (str, Path)) else cells
    sft = cells_of_stage(frame, "sft", tables)
    labels = sft[label_column] if label_column in sft.columns else [""] * len(sft)
    return label_profiles(sft["sentence"], labels)


def _read_table(table: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(table, (str, Path)):
        return read_task_frame(table)
    return check_columns(table, REQUIRED, "task table")


def _samples_frame(rows: pd.DataFrame, samples: Mapping[str, list], settings: FilterSettings,
                   provider: TeacherProvider, parents: Mapping[str, str]) -> pd.DataFrame:
    records = []
    for row in rows.to_dict("records"):
        for s in samples.get(row["prompt_id"], []):
            verdict = judge(row, s.text, settings)
            records.append({
                "prompt_id": row["prompt_id"], "task": row["task"], "direction": row["direction"],
                "dataset": row["dataset"], "stage": row["stage"],
                "primal_prompt_id": parents.get(row["prompt_id"], row["prompt_id"]),
                "sample_index": s.sample_index, "prompt": row["prompt"], "completion": s.text,
                "answer": row["answer"], "parsed_answer": verdict.parsed, "score": verdict.score,
                "passed": verdict.passed, "accepted": verdict.passed, "reason": verdict.reason,
                "finish_reason": s.finish_reason, "tokens_in": s.tokens_in, "tokens_out": s.tokens_out,
                "cached": s.cached, "provider": provider.name, "model": provider.model,
            })
    frame = pd.DataFrame.from_records(records, columns=list(SFT_COLUMNS))
    if not frame.empty:
        frame["accepted"] = select(frame, settings)
    return frame


def _data_duals(rows: pd.DataFrame, parents: Mapping[str, str]) -> pd.DataFrame:
    """``teacher.dual_answers: data``: one accepted example per dual row, answered from the task table."""
    if not len(rows):
        return pd.DataFrame(columns=list(SFT_COLUMNS))
    answers = rows["answer"].to_numpy()
    frame = pd.DataFrame({
        "prompt_id": rows["prompt_id"].to_numpy(), "task": rows["task"].to_numpy(),
        "direction": rows["direction"].to_numpy(), "dataset": rows["dataset"].to_numpy(),
        "stage": rows["stage"].to_numpy(), "primal_prompt_id": [parents.get(p, p) for p in rows["prompt_id"]],
        "sample_index": 0, "prompt": rows["prompt"].to_numpy(), "completion": [format_answer("", a) for a in answers],
        "answer": answers, "parsed_answer": answers, "score": 1.0, "passed": True, "accepted": True,
        "reason": "answer from the task table", "finish_reason": "data", "tokens_in": 0.0, "tokens_out": 0.0,
        "cached": False, "provider": "data", "model": "task-table",
    })
    return frame[list(SFT_COLUMNS)]


def _prompts(rows: pd.DataFrame) -> list[tuple[str, list[dict[str, str]]]]:
    return list(zip(rows["prompt_id"], decode_column(rows, "prompt")))


def estimate_cost(rows: pd.DataFrame, teacher: TeacherSettings, label: str = "") -> float:
    """Worst-case USD of asking the teacher for ``rows`` (prompt tokens ~ characters / 4, every sample using
    ``max_tokens``), logged; over ``teacher.max_cost_usd`` it is an error before any request is sent."""
    chars = sum(sum(len(m["content"]) for m in msgs) for msgs in decode_column(rows, "prompt")) if len(rows) else 0
    n = teacher.n_samples
    cost = teacher.cost(chars / 4 * n, teacher.max_tokens * n * len(rows))
    if teacher.provider != "markers":
        log.info("teacher %s: %d prompts x %d samples, worst-case cost $%.2f", label, len(rows), n, cost)
    if teacher.max_cost_usd is not None and cost > teacher.max_cost_usd:
        raise CellDualityError(f"teacher {label}: {len(rows)} prompts x {n} samples may cost up to ${cost:,.2f}, above "
                               f"teacher.max_cost_usd ${teacher.max_cost_usd:,.2f}; lower teacher.max_prompts or "
                               "n_samples, or raise the limit")
    return cost


def build_sft_dataset(
    task_table: pd.DataFrame | str | Path,
    teacher: TeacherSettings,
    filtering: FilterSettings,
    *,
    cache_path: str | Path | None = None,
    provider_factory: Callable[[], TeacherProvider] | None = None,
    env: Mapping[str, str] | None = None,
    species: str = "human",
    stage: str = "sft",
    label: str = "",
    data: DataProfiles | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """SFT samples and statistics for one task table (see module docstring); ``data`` (the SFT cells' label
    profiles) informs the markers teacher."""
    table = _read_table(task_table)
    rows = table[table["stage"] == stage]
    primal = rows[rows["direction"] == "primal"]
    cap = teacher.prompt_cap(str(primal["task"].iloc[0])) if len(primal) else None
    if cap is not None and len(primal) > cap:
        keep = set(stable_sample(list(primal["prompt_id"]), cap, "teacher-prompts", teacher.seed or 0, label))
        primal = primal[primal["prompt_id"].isin(keep)]
    dual = rows[rows["direction"] == "dual"]
    parents = dict(zip(dual["prompt_id"], link_duals(primal, dual))) if len(dual) else {}
    secrets = [k for k in [api_key(teacher, env)] if k] if provider_factory is None else []
    cacheable = provider_factory is not None or teacher.provider != "markers"  # markers: free, deterministic
    cache = ResponseCache(cache_path, teacher.cache_sync) if teacher.cache and cache_path and cacheable else None
    usage = Usage()
    names = {"provider": teacher.provider, "model": teacher.model_name}
    try:
        def run(part: pd.DataFrame, desc: str) -> pd.DataFrame:
            if not len(part):
                return pd.DataFrame(columns=list(SFT_COLUMNS))
            prov = provider_factory() if provider_factory else make_provider(teacher, env, species, data)
            names.update(provider=prov.name, model=prov.model)
            runner = TeacherRunner(prov, teacher, cache, secrets)
            samples = runner.run(_prompts(part), desc)
            usage.add(runner.usage)
            runner.check_failures()
            return _samples_frame(part, samples, filtering, prov, parents)

        estimate_cost(primal, teacher, label)
        primal_samples = run(primal, f"teacher {label} primal".strip())
        if teacher.dual_answers == "teacher":
            parent_ids = set(primal_samples.loc[primal_samples["accepted"], "prompt_id"]) if len(primal_samples) else set()
        else:
            parent_ids = set(primal["prompt_id"])
        eligible = dual[[parents.get(pid, "") in parent_ids for pid in dual["prompt_id"]]] if len(dual) else dual
        if teacher.dual_answers == "data":
            dual_samples = _data_duals(eligible, parents)
        else:
            dual_samples = run(eligible, f"teacher {label} dual".strip())
        if teacher.dual_answers == "teacher+data":
            answered = set(dual_samples.loc[dual_samples["accepted"], "prompt_id"]) if len(dual_samples) else set()
            fallback = _data_duals(eligible[~eligible["prompt_id"].isin(answered)], parents)
            dual_samples = pd.concat([f for f in (dual_samples, fallback) if len(f)], ignore_index=True) \
                if len(fallback) else dual_samples
    finally:
        if cache is not None:
            cache.close()
    frames = [f for f in (primal_samples, dual_samples) if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SFT_COLUMNS))
    stats = _stats(out, primal, dual, eligible, teacher, filtering, usage, names["provider"], names["model"], label)
    return out, stats


def _stats(out: pd.DataFrame, primal: pd.DataFrame, dual: pd.DataFrame, eligible: pd.DataFrame,
           teacher: TeacherSettings, filtering: FilterSettings, usage: Usage, provider: str, model: str,
           label: str) -> dict[str, Any]:
    n = teacher.n_samples
    task = str(primal["task"].iloc[0]) if len(primal) else None
    by_dir = {d: out[out["direction"] == d] if len(out) else out for d in ("primal", "dual")}
    stats: dict[str, Any] = {
        "label": label, "provider": provider, "model": model, "n_samples": n,
        "temperature": teacher.temperature,
        "task": task,
        "filtering": {"rwjs_threshold": filtering.threshold("primal", task),
                      "dual_rwjs_threshold": filtering.threshold("dual", task),
                      "strict_format": filtering.strict_format, "dedupe": filtering.dedupe,
                      "max_accepted_per_prompt": filtering.max_accepted_per_prompt},
        "primal": direction_stats(by_dir["primal"], len(primal), n),
        "dual": direction_stats(by_dir["dual"], len(eligible), 1 if teacher.dual_answers == "data" else n)
        | {"dual_prompts_in_table": len(dual), "dual_answers": teacher.dual_answers,
           ("from_accepted_primal_prompts" if teacher.dual_answers == "teacher" else "from_primal_prompts"):
           len(eligible),
           "answered_from_data": int((by_dir["dual"]["provider"] == "data").sum()) if len(by_dir["dual"]) else 0},
    }
    for d in ("primal", "dual"):
        stats[d]["score_quantiles"] = score_summary(by_dir[d]["score"].tolist()) if len(by_dir[d]) else {}
    received = len(out)
    stats["overall"] = {
        "samples_received": received,
        "passed_filter": int(out["passed"].sum()) if received else 0,
        "acceptance_rate": round(float(out["passed"].mean()), 4) if received else None,
        "sft_examples": int(out["accepted"].sum()) if received else 0,
    }
    stats["usage"] = usage.as_dict() | {"price_in_per_1m": teacher.price_in, "price_out_per_1m": teacher.price_out}
    return stats


def write_sft_dataset(task_table: pd.DataFrame | str | Path, out_path: str | Path, stats_path: str | Path,
                      teacher: TeacherSettings, filtering: FilterSettings, **kwargs: Any) -> dict[str, Any]:
    """:func:`build_sft_dataset`, then write the Parquet and the stats JSON atomically."""
    frame, stats = build_sft_dataset(task_table, teacher, filtering, **kwargs)
    with atomic_path(out_path) as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(stats_path) as tmp:
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
    p, d = stats["primal"], stats["dual"]
    log.info("teacher %s: primal %s of %s samples passed the filter (%s), dual %s of %s (%s); %s SFT examples; "
             "cost $%.4f (+$%.4f reused from cache)", stats["label"], p["passed_filter"], p["samples_received"],
             p["acceptance_rate"], d["passed_filter"], d["samples_received"], d["acceptance_rate"],
             stats["overall"]["sft_examples"], stats["usage"]["cost_usd"], stats["usage"]["cached_cost_usd"])
    return stats
