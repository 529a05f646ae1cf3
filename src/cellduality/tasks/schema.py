"""The task-table row, typed once.

A task table (``results/tasks/{task}/{dataset}.parquet``) has one row per prompt with the 16
:data:`ROW_COLUMNS`; six of them hold JSON text (:data:`JSON_COLUMNS`): ``prompt`` (chat messages),
``candidates``, ``hidden_genes`` and ``visible_genes`` (a gene list, or one list per cell for a CellPuzzles
primal row), ``cell_ids`` and ``metadata`` (an object). :class:`TaskRow` holds a row with those columns
decoded; :meth:`TaskRow.to_record` encodes them exactly as the table builder always has
(``json.dumps(value, ensure_ascii=False, default=str)``), so tables written from ``TaskRow``\\ s are
byte-identical. Readers validate what they read (:func:`read_task_frame`, :func:`read_task_table`,
:func:`decode_column`, :func:`decode_value`): a missing file, a file that is not Parquet, a missing column or
bad JSON is a :class:`~cellduality.errors.CellDualityError` naming the file, column and row and the fix.
An empty JSON cell (``""`` or null, e.g. after ``fillna("")``) decodes to the empty list / object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cellduality.errors import CellDualityError

ROW_COLUMNS = (
    "prompt_id", "task", "direction", "dataset", "split", "stage", "prompt", "answer", "label", "candidates",
    "hidden_genes", "visible_genes", "reference_sentence", "input_sentence", "cell_ids", "metadata",
)
#: JSON-encoded columns and the Python type each decodes to.
JSON_COLUMNS: dict[str, type] = {
    "prompt": list, "candidates": list, "hidden_genes": list, "visible_genes": list, "cell_ids": list,
    "metadata": dict,
}
TEXT_COLUMNS = tuple(c for c in ROW_COLUMNS if c not in JSON_COLUMNS)
REBUILD_HINT = "rebuild it with snakemake --forcerun task_table"


def dumps(value: Any) -> str:
    """JSON text of a list/dict column, exactly as task tables store it."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _where(source: object, column: str, row_id: object) -> str:
    where = f"{source}: " if source not in (None, "") else "task table: "
    row = f" of row {row_id!r}" if row_id not in (None, "") else ""
    return f"{where}column {column!r}{row}"


def decode_value(column: str, value: Any, *, source: object = None, row_id: object = None,
                 hint: str = REBUILD_HINT) -> Any:
    """The decoded value of JSON column ``column`` (already-decoded lists/dicts pass through)."""
    kind = JSON_COLUMNS[column]
    if value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value):
        return kind()
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise CellDualityError(f"{_where(source, column, row_id)} is not valid JSON ({err.msg} at char "
                                   f"{err.pos}); {hint}") from None
    elif hasattr(value, "tolist"):  # numpy array from a list-typed Parquet column
        value = value.tolist()
    if kind is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, kind):
        raise CellDualityError(f"{_where(source, column, row_id)} holds a JSON {type(value).__name__}, not a "
                               f"{kind.__name__}; {hint}")
    return value


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


@dataclass(frozen=True)
class TaskRow:
    """One task-table row with its JSON columns decoded (see the module notes)."""

    prompt_id: str
    task: str
    direction: str
    dataset: str
    split: str
    stage: str
    prompt: list[dict[str, str]] = field(default_factory=list)
    answer: str = ""
    label: str = ""
    candidates: list[str] = field(default_factory=list)
    hidden_genes: list[Any] = field(default_factory=list)
    visible_genes: list[Any] = field(default_factory=list)
    reference_sentence: str = ""
    input_sentence: str = ""
    cell_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, source: object = None) -> TaskRow:
        """Decode a record (a table row as a dict); missing columns are an error naming ``source``."""
        missing = [c for c in ROW_COLUMNS if c not in record]
        if missing:
            raise CellDualityError(f"{source or 'task table'}: missing column(s) {', '.join(missing)}; "
                                   f"{REBUILD_HINT}")
        row_id = record.get("prompt_id")
        values = {c: _text(record[c]) for c in TEXT_COLUMNS}
        values.update({c: decode_value(c, record[c], source=source, row_id=row_id) for c in JSON_COLUMNS})
        return cls(**values)

    def to_record(self) -> dict[str, str]:
        """The row as stored: text columns as they are, JSON columns encoded (:func:`dumps`)."""
        return {c: dumps(getattr(self, c)) if c in JSON_COLUMNS else getattr(self, c) for c in ROW_COLUMNS}

    @property
    def is_primal(self) -> bool:
        return self.direction == "primal"


def rows_frame(rows: Iterable[TaskRow]) -> pd.DataFrame:
    """A task table (DataFrame with :data:`ROW_COLUMNS`) from rows."""
    return pd.DataFrame([r.to_record() for r in rows], columns=list(ROW_COLUMNS))


def check_columns(frame: pd.DataFrame, columns: Sequence[str] = ROW_COLUMNS, source: object = None,
                  hint: str = REBUILD_HINT) -> pd.DataFrame:
    """``frame`` unchanged, or a CellDualityError naming the missing columns."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CellDualityError(f"{source or 'task table'}: missing column(s) {', '.join(missing)}; {hint}")
    return frame


def read_task_frame(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A task table as a DataFrame (JSON columns still encoded), checked: the file exists, is Parquet and has
    ``columns`` (default: all :data:`ROW_COLUMNS`; only those are read when given)."""
    path = Path(path)
    if not path.is_file():
        raise CellDualityError(f"task table {path} does not exist; {REBUILD_HINT}")
    wanted = list(ROW_COLUMNS if columns is None else columns)
    try:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
    except Exception as err:
        raise CellDualityError(f"task table {path} is not a readable Parquet file ({type(err).__name__}); "
                               f"{REBUILD_HINT}") from None
    missing = [c for c in wanted if c not in present]
    if missing:
        raise CellDualityError(f"task table {path}: missing column(s) {', '.join(missing)}; {REBUILD_HINT}")
    return pd.read_parquet(path, columns=wanted if columns is not None else None)


def decode_column(frame: pd.DataFrame, column: str, source: object = None, hint: str = REBUILD_HINT) -> list[Any]:
    """The decoded values of JSON column ``column`` of ``frame`` (errors name ``source``, column and row; the
    same columns of other tables built from task rows, e.g. the SFT table's ``prompt``, decode the same way)."""
    check_columns(frame, (column,), source, hint)
    ids = frame["prompt_id"].tolist() if "prompt_id" in frame.columns else [None] * len(frame)
    return [decode_value(column, v, source=source, row_id=i, hint=hint) for v, i in zip(frame[column].tolist(), ids)]


def decode_rows(frame: pd.DataFrame, source: object = None) -> list[TaskRow]:
    """Every row of a task-table DataFrame as a :class:`TaskRow`."""
    check_columns(frame, ROW_COLUMNS, source)
    return [TaskRow.from_record(r, source=source) for r in frame[list(ROW_COLUMNS)].to_dict("records")]


def read_task_table(path: str | Path) -> list[TaskRow]:
    """A task table's rows, validated (missing file, not Parquet, missing column, bad JSON: one-line error)."""
    return decode_rows(read_task_frame(path), source=path)
