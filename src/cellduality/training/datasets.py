"""Training datasets in TRL's conversational formats, from the pipeline's Parquet tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cellduality.errors import CellDualityError
from cellduality.tasks.schema import decode_column, read_task_frame

REWARD_COLUMNS = ("task", "label", "candidates", "hidden_genes", "visible_genes", "reference_sentence",
                  "input_sentence", "metadata", "prompt_id", "dataset")


def _read(paths: Sequence[str | Path], required: Sequence[str]) -> pd.DataFrame:
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise CellDualityError(f"{path}: missing column(s) {', '.join(missing)}; rebuild it with the pipeline")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(required))


def _read_tasks(paths: Sequence[str | Path], required: Sequence[str]) -> pd.DataFrame:
    """Task tables, validated by the row schema (missing file / not Parquet / missing column: one-line error)."""
    frames = [read_task_frame(path) for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(required))


def sft_dataset(paths: Sequence[str | Path], seed: int = 0, task_weights: Mapping[str, int] | None = None,
                exclude_tasks: Sequence[str] = (), preview: int = 0):
    """Accepted teacher examples as prompt-completion conversations (TRL trains on the completion only).
    ``task_weights`` (``sft.task_weights``) repeats the primal examples of a task that many times: with
    ``sft.loss_averaging: tokens`` the loss is a mean over completion tokens, so a one-token label answer weighs
    little beside 24- or 32-gene answers. ``exclude_tasks`` leaves out the examples of those tasks (the first
    phase of ``sft.held_back_tasks``) but ``preview`` primal examples of each, chosen by ``seed``."""
    from datasets import Dataset

    table = _read(paths, ("prompt", "completion", "accepted", *(("task", "direction") if exclude_tasks else ())))
    table = table[table["accepted"].astype(bool)]
    if exclude_tasks:
        held = table["task"].isin(list(exclude_tasks))
        shown = [group.sample(n=min(preview, len(group)), random_state=seed)
                 for _, group in table[held & (table["direction"] == "primal")].groupby("task")]
        table = pd.concat([table[~held], *shown], ignore_index=True)
        if table.empty:
            raise CellDualityError(f"sft.held_back_tasks {list(exclude_tasks)} leave no examples in "
                                   f"{', '.join(map(str, paths))} for the first phase; hold back fewer tasks")
    if table.empty:
        raise CellDualityError(f"no accepted SFT examples in {', '.join(map(str, paths))}; lower "
                               "filtering.rwjs_threshold or raise teacher.n_samples")
    for task, weight in (task_weights or {}).items():
        if weight > 1 and {"task", "direction"} <= set(table.columns):
            primal = table[(table["task"] == task) & (table["direction"] == "primal")]
            table = pd.concat([table, *[primal] * (int(weight) - 1)], ignore_index=True)
    records = {"prompt": decode_column(table, "prompt", ", ".join(map(str, paths)),
                                       "rebuild it with snakemake --forcerun teacher"),
               "completion": [[{"role": "assistant", "content": c}] for c in table["completion"]]}
    return Dataset.from_dict(records).shuffle(seed=seed)


def rl_dataset(paths: Sequence[str | Path], max_prompts: int | None = None, seed: int = 0,
               labelled_only: bool = False, task_prompts: Mapping[str, int | None] | None = None):
    """RL-stage primal prompts with the columns the reward functions read (labels only for the oracle, which
    gets ``labelled_only``: a role adapt dataset's unlabelled prompts are for the duality reward alone), shuffled
    by ``seed``. ``task_prompts`` (config ``grpo.task_prompts``), when not empty, keeps only the tasks it names,
    each capped at its value (None = all of that task's prompts); ``max_prompts`` caps the total."""
    from datasets import Dataset

    table = _read_tasks(paths, ("prompt", "stage", "direction", *REWARD_COLUMNS))
    table = table[(table["stage"] == "rl") & (table["direction"] == "primal")]
    if labelled_only:
        table = table[table["label"].fillna("").astype(str) != ""]
    if table.empty:
        raise CellDualityError(f"no RL prompts in {', '.join(map(str, paths))}; check task_tables.rl_fraction")
    table = table.sample(frac=1.0, random_state=seed)
    if task_prompts:
        kept = [group if cap is None else group.head(cap)
                for task, cap in sorted(task_prompts.items()) for group in [table[table["task"] == task]]]
        table = pd.concat(kept).sample(frac=1.0, random_state=seed)
        if table.empty:
            raise CellDualityError(f"grpo.task_prompts {dict(task_prompts)}: no RL prompts of these tasks in "
                                   f"{', '.join(map(str, paths))}; name tasks the run has (tasks:)")
    if max_prompts is not None:
        table = table.head(max_prompts)
    records = {"prompt": decode_column(table, "prompt", ", ".join(map(str, paths)))}
    records.update({c: table[c].fillna("").astype(str).tolist() for c in REWARD_COLUMNS})
    return Dataset.from_dict(records)
