"""Write the cell-sentence table (Parquet, one row per cell) from a preprocessed h5ad, chunk by chunk.

Each row records its cell's identity (``source_dataset``, ``source_cell``, see
:func:`cellduality.data.splits.cell_identity`), from which its split follows; :func:`split_context` is what
the cell_sentences rule (rules/data.smk) needs to know of the other datasets of the run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cellduality.config import Settings, setting
from cellduality.data.builtin import cells_source
from cellduality.data.cell_sentences import check_arguments, encode_gene_names, iter_top_k, open_backed, sentence_array
from cellduality.data.preprocess import SPLIT_GROUP
from cellduality.data.splits import SOURCE_CELL, SOURCE_DATASET, SplitSettings, assign_splits, cell_identity
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


def cell_origin(name: str, datasets: Mapping[str, Mapping]) -> str:
    """The dataset whose cells catalog entry ``name`` holds: for ``source: dataset:<other>`` (a reused download)
    the origin of ``other``; for ``builtin:<name>`` the builtin its cells come from
    (:func:`cellduality.data.builtin.cells_source`); else the entry itself (its name)."""
    source = str(datasets[name]["source"])
    if source.startswith("dataset:"):
        return cell_origin(source.removeprefix("dataset:"), datasets)
    if source.startswith("builtin:"):
        return cells_source(source)
    return name


def split_context(name: str, datasets: Mapping[str, Mapping], used: Collection[str]) -> dict:
    """What the cell-sentence step of dataset ``name`` needs to know of the run's other datasets (``used``):
    ``origin`` (:func:`cell_origin`, the salt of its cells' split hash where they carry no identity of their
    own) and ``ood_peers``, ``{other: {role, ood_labels}}`` for each other dataset of the same origin that holds
    cells out as OOD (role ood, or ood_labels): those cells are OOD here too (:func:`ood_identities`). Datasets
    of one origin that are split must group their cells alike (the same ``split_by``), else a cell could land
    in two splits: that is an error."""
    origin, own = cell_origin(name, datasets), datasets[name]
    peers: dict[str, dict] = {}
    if own.get("role", "train") == "ood":
        return {"origin": origin, "ood_peers": peers}
    for other in sorted(set(used) - {name}):
        entry = datasets.get(other)
        if entry is None or cell_origin(other, datasets) != origin:
            continue
        role, labels = entry.get("role", "train"), dict(entry.get("ood_labels") or {})
        if role == "ood" or labels:
            peers[other] = {"role": role, "ood_labels": labels}
        if role != "ood" and entry.get("split_by") != own.get("split_by"):
            raise CellDualityError(f"datasets.{name} and datasets.{other} hold the same cells ({origin}) but group "
                                   f"them differently for the split (split_by {own.get('split_by')!r} and "
                                   f"{entry.get('split_by')!r}); give them the same split_by, so that each cell "
                                   "is in one split in both")
    return {"origin": origin, "ood_peers": peers}


def ood_identities(h5ad: str | Path, *, dataset: str, origin: str, role: str = "train",
                   ood_labels: Mapping[str, Sequence[str]] | None = None) -> set[tuple[str, str]]:
    """The identities (source dataset, source cell) of the cells that preprocessed ``h5ad`` (dataset ``dataset``
    of cells of ``origin``) holds out as OOD: every cell for role ood, else those with an ``ood_labels`` value."""
    adata = open_backed(h5ad)
    try:
        obs = adata.obs
        cell_ids = obs.index.astype(str).to_numpy()
        held = np.full(len(obs), role == "ood")
        for column, values in (ood_labels or {}).items():
            if column not in obs.columns:
                raise CellDualityError(f"datasets.{dataset}.ood_labels.{column}: {h5ad} has no '{column}' column; "
                                       f"map it under datasets.{dataset}.labels")
            held |= obs[column].isin(list(values)).to_numpy()
        sources, cells = cell_identity(cell_ids, obs, origin)
    finally:
        if adata.isbacked:
            adata.file.close()
    return set(zip(sources[held].tolist(), cells[held].tolist()))


def peer_ood_cells(context: Mapping, files: Sequence[str | Path]) -> set[tuple[str, str]]:
    """The union of :func:`ood_identities` over ``context["ood_peers"]`` (:func:`split_context`), whose
    preprocessed h5ad files ``files`` are, in the same order."""
    peers = context["ood_peers"]
    if len(files) != len(peers):
        raise CellDualityError(f"{len(peers)} OOD peer dataset(s) ({', '.join(peers)}) but {len(files)} file(s)")
    held: set[tuple[str, str]] = set()
    for (peer, entry), path in zip(peers.items(), files):
        held |= ood_identities(path, dataset=peer, origin=context["origin"], **entry)
    return held


def table_schema(columns: list[str]) -> pa.Schema:
    fields = [pa.field("cell_id", pa.string()), pa.field("dataset", pa.string()), pa.field("split", pa.string()),
              pa.field("sentence", pa.large_string()), pa.field("n_genes", pa.int32())]
    return pa.schema(fields + [pa.field(c, pa.string()) for c in columns])


def write_sentence_table(h5ad: str | Path, out: str | Path, *, dataset: str,
                         cell_sentence: CellSentenceSettings | None = None, splits: SplitSettings | None = None,
                         role: str = "train", ood_labels: dict | None = None, origin: str | None = None,
                         ood_cells: Collection[tuple[str, str]] | None = None) -> dict:
    """Convert every cell of ``h5ad`` and write ``out``; return split counts. ``role`` and ``ood_labels`` are
    the dataset's catalog fields; ``cell_sentence`` and ``splits`` the config sections (schema defaults when
    None); ``origin`` and ``ood_cells`` what the run's other datasets decide (:func:`split_context`,
    :func:`peer_ood_cells`; by default the dataset is its own origin and no other dataset holds cells out)."""
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
                              ood_labels=ood_labels, origin=origin, ood_cells=ood_cells)
        identity = cell_identity(cell_ids, obs, origin or dataset)
        encoded = encode_gene_names(adata.var_names)
        schema = table_schema(columns + [SOURCE_DATASET, SOURCE_CELL])
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for start, stop, indices, lengths in iter_top_k(adata, cs.top_k, cs.chunk_size, cs.tie_break):
                arrays = [pa.array(cell_ids[start:stop], pa.string()), pa.array(np.full(stop - start, dataset), pa.string()),
                          pa.array(split[start:stop], pa.string()), sentence_array(indices, lengths, encoded=encoded),
                          pa.array(lengths, pa.int32())]
                arrays += [pa.array(obs[c].iloc[start:stop].astype("string").to_numpy(na_value=None), pa.string())
                           for c in columns]
                arrays += [pa.array(values[start:stop], pa.string()) for values in identity]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    finally:
        if adata.isbacked:
            adata.file.close()
    values, counts = np.unique(split.astype(str), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))
