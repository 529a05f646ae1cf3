"""The task-table row schema: decoding, byte-identical encoding and validation on read."""

from __future__ import annotations

import json
from dataclasses import fields

import pandas as pd
import pytest
from conftest import make_task_row
from test_task_tables import identity_table

from cellduality.errors import CellDualityError
from cellduality.tasks.schema import (
    JSON_COLUMNS,
    ROW_COLUMNS,
    TaskRow,
    decode_column,
    decode_rows,
    decode_value,
    read_task_frame,
    read_task_table,
    rows_frame,
)
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import OUTPUT_COLUMNS, write_task_tables


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "tasks.parquet"
    write_task_tables(identity_table(), path, tables=TaskTableSettings(seed=1),
                      cellpuzzles=CellPuzzlesSettings(batch_size=3))
    return path


def test_schema_is_the_task_table_layout():
    assert OUTPUT_COLUMNS == ROW_COLUMNS and len(ROW_COLUMNS) == 16
    assert tuple(f.name for f in fields(TaskRow)) == ROW_COLUMNS
    assert set(JSON_COLUMNS) == {"prompt", "candidates", "hidden_genes", "visible_genes", "cell_ids", "metadata"}


def test_rows_decode_and_reencode_byte_identically(table_path, tmp_path):
    rows = read_task_table(table_path)
    raw = pd.read_parquet(table_path)
    assert len(rows) == len(raw) and {r.task for r in rows} == set(raw["task"])
    puzzle = next(r for r in rows if r.task == "cellpuzzles" and r.direction == "primal")
    assert isinstance(puzzle.hidden_genes[0], list) and len(puzzle.cell_ids) == 3  # one list per cell
    assert isinstance(rows[0].prompt, list) and rows[0].prompt[0]["role"] == "system"
    assert all(isinstance(r.metadata, dict) for r in rows)
    assert [r.to_record() for r in rows] == raw.to_dict("records")
    again = tmp_path / "again.parquet"
    rows_frame(rows).to_parquet(again, index=False)
    assert again.read_bytes() == table_path.read_bytes()


def test_record_round_trip_and_non_ascii():
    row = make_task_row(candidates=["CD4+ T", "Treg β"], metadata={"age": 40, "tissue": "blood"},
                        prompt=[{"role": "user", "content": "Zelle"}])
    record = row.to_record()
    assert record["candidates"] == '["CD4+ T", "Treg β"]' and record["metadata"] == '{"age": 40, "tissue": "blood"}'
    assert TaskRow.from_record(record) == row
    assert decode_value("metadata", "") == {} and decode_value("candidates", None) == []


def test_reading_validates_file_columns_and_json(table_path, tmp_path):
    with pytest.raises(CellDualityError, match=r"does not exist; rebuild it with snakemake --forcerun task_table"):
        read_task_table(tmp_path / "nope.parquet")
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(CellDualityError, match=r"text.parquet is not a readable Parquet file"):
        read_task_table(text)
    raw = pd.read_parquet(table_path)
    short = tmp_path / "short.parquet"
    raw.drop(columns=["visible_genes"]).to_parquet(short, index=False)
    with pytest.raises(CellDualityError, match=r"short.parquet: missing column\(s\) visible_genes; rebuild"):
        read_task_table(short)
    assert list(read_task_frame(short, columns=["prompt_id", "answer"]).columns) == ["prompt_id", "answer"]
    bad = tmp_path / "bad.parquet"
    broken = raw.copy()
    broken.loc[3, "candidates"] = '["a", '
    broken.to_parquet(bad, index=False)
    with pytest.raises(CellDualityError) as err:
        read_task_table(bad)
    message = str(err.value)
    assert "\n" not in message and "bad.parquet" in message and "'candidates'" in message
    assert repr(raw.loc[3, "prompt_id"]) in message and "forcerun task_table" in message
    broken.loc[3, "candidates"] = json.dumps({"a": 1})
    with pytest.raises(CellDualityError, match="holds a JSON dict, not a list"):
        decode_column(broken, "candidates", bad)
    with pytest.raises(CellDualityError, match="missing column"):
        decode_rows(raw.drop(columns=["metadata"]))
