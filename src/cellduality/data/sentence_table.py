"""Write the cell-sentence table (Parquet, one row per cell) from a preprocessed h5ad, chunk by chunk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cellduality.config import Settings, setting
from cellduality.data.cell_sentences import check_arguments, encode_gene_names, iter_top_k, open_backed, sentence_array
from cellduality.data.preprocess import SPLIT_GROUP
from cellduality.data.splits import SplitSettings, assign_splits
from cellduality.errors import CellDualityError
from cellduality.io import atomic_path

LABEL_COLUMNS = ("cell_type", "drug", "sensitivity", "condition", "pair_id")
METADATA_COLUMNS = ("tissue", "disease", "sex", "age", "donor", "dose", "time", "batch")


@dataclass(frozen=True)
class CellSentenceSettings(Settings):
    """Config ``cell_sentence.*``: a cell = its ``top_k`` highest-expressed genes, read ``chunk_size`` cells at a
    time."""

    SECTION: ClassVar[str] = "cell_sentence"
    top_k: int = setting("cell_sentence.top_k")
    chunk_size: int = setting("cell_sentence.chunk_size")
    tie_break: str = setting("cell_sentence.tie_break")

    def __post_init__(self) -> None:
        check_arguments(self.top_k, self.tie_break)
        if self.chunk_size < 1:
            raise CellDualityError(f"cell_sentence.chunk_size must be >= 1, got {self.chunk_size}")


def table_schema(columns: list[str]) -> pa.Schema:
    fields = [pa.field("cell_id", pa.string()), pa.field("dataset", pa.string()), pa.field("split", pa.string()),
              pa.field("sentence", pa.large_string()), pa.field("n_genes", pa.int32())]
    return pa.schema(fields + [pa.field(c, pa.string()) for c in columns])


def write_sentence_table(h5ad: str | Path, out: str | Path, *, dataset: str,
                         cell_sentence: CellSentenceSettings | None = None, splits: SplitSettings | None = None,
                         role: str = "train", ood_labels: dict | None = None) -> dict:
    """Convert every cell of ``h5ad`` and write ``out``; return split counts. ``role`` and ``ood_labels`` are
    the dataset's catalog fields; ``cell_sentence`` and ``splits`` the config sections (schema defaults when
    None)."""
    cs, splits = cell_sentence or CellSentenceSettings(), splits or SplitSettings()
    adata = open_backed(h5ad)
    try:
        obs = adata.obs
        columns = [c for c in LABEL_COLUMNS + METADATA_COLUMNS + (SPLIT_GROUP,) if c in obs.columns]
        for column in (ood_labels or {}):
            if column not in obs.columns:
                raise CellDualityError(f"datasets.{dataset}.ood_labels.{column}: {h5ad} has no '{column}' column; "
                                       f"map it under datasets.{dataset}.labels")
        cell_ids = obs.index.astype(str).to_numpy()
        split = assign_splits(cell_ids, obs, dataset=dataset, role=role, settings=splits,
                              ood_labels=ood_labels)
        encoded = encode_gene_names(adata.var_names)
        schema = table_schema(columns)
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for start, stop, indices, lengths in iter_top_k(adata, cs.top_k, cs.chunk_size, cs.tie_break):
                arrays = [pa.array(cell_ids[start:stop], pa.string()), pa.array(np.full(stop - start, dataset), pa.string()),
                          pa.array(split[start:stop], pa.string()), sentence_array(indices, lengths, encoded=encoded),
                          pa.array(lengths, pa.int32())]
                arrays += [pa.array(obs[c].iloc[start:stop].astype("string").to_numpy(na_value=None), pa.string())
                           for c in columns]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    finally:
        if adata.isbacked:
            adata.file.close()
    values, counts = np.unique(split.astype(str), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))
