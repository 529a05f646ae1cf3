"""Which prompts evaluation asks: the eval-stage primal rows of each task table (test and OOD cells), at most
``evaluation.max_prompts_per_table`` per split. Models (:mod:`cellduality.evaluation.predict`) and baselines
(:func:`cellduality.evaluation.score.run_baselines`) both select with :func:`eval_rows`, so they answer exactly
the same prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cellduality.tasks.schema import ROW_COLUMNS, read_task_frame


def eval_rows(paths: Sequence[str | Path], max_rows: int | None = None) -> pd.DataFrame:
    """Evaluation-stage primal rows of the task tables ``paths`` (at most ``max_rows`` per table and split, in
    table order)."""
    frames = []
    for path in paths:
        table = read_task_frame(path)
        table = table[(table["stage"] == "eval") & (table["direction"] == "primal")]
        frames.append(table.groupby("split", sort=False).head(max_rows) if max_rows is not None else table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ROW_COLUMNS))
