"""Deterministic train/test/OOD assignment of cells.

A cell's split depends only on its identity and the seed, never on row order or on which other cells are
present, so adding or removing cells never moves existing cells between splits. A cell's identity is the
dataset whose cells it is and its id there: obs ``source_dataset`` / ``source_cell`` where set (rows built from
another dataset's cells; the builders of derived builtins set them), else the dataset's origin (the catalog
entry whose download it reuses for a ``dataset:<name>`` source, the builtin for a builtin:
:func:`cellduality.data.sentence_table.cell_origin`) and the row's own id. The hash is salted with the
identity's dataset and the seed and keyed by the row's split group (``split_group``, else ``pair_id``) or its
source cell id, so every dataset holding a cell (the source dataset and each dataset derived from it) puts it
in the same split: a source test cell is a test cell everywhere, and rows of one source cell stay together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from cellduality.config import Settings, setting
from cellduality.errors import CellDualityError


@dataclass(frozen=True)
class SplitSettings(Settings):
    """Config ``splits.*``: the train/test assignment of the cells of "train" datasets."""

    SECTION: ClassVar[str] = "splits"
    test_fraction: float = setting("splits.test_fraction")
    seed: int = setting("splits.seed")

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction <= 1:
            raise CellDualityError(f"splits.test_fraction must be between 0 and 1; got {self.test_fraction}")


def unit_hash(keys: Sequence[str], salt: str) -> np.ndarray:
    """Map each key to a uniform number in [0, 1) via blake2b(salt + key)."""
    prefix = salt.encode() + b"\x00"
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(prefix + str(key).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


SOURCE_DATASET = "source_dataset"  # obs: the dataset whose cells a derived dataset's rows are (e.g. builtin:<name>)
SOURCE_CELL = "source_cell"  # obs: the id of that dataset's cell a row was built from


def _text_column(obs: pd.DataFrame, column: str) -> np.ndarray | None:
    """``obs[column]`` as an object array with None where unset (None when there is no such column)."""
    if column not in obs:
        return None
    return obs[column].astype("string").to_numpy(dtype=object, na_value=None)


def cell_identity(cell_ids: Sequence[str], obs: pd.DataFrame, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """(source dataset, source cell id) per row: obs ``source_dataset`` / ``source_cell`` where set, else
    ``origin`` (the dataset whose cells these rows are) and the row's id."""
    cells = np.asarray([str(c) for c in cell_ids], dtype=object)
    datasets = np.full(len(cells), str(origin), dtype=object)
    for out, column in ((datasets, SOURCE_DATASET), (cells, SOURCE_CELL)):
        values = _text_column(obs, column)
        if values is not None:
            given = np.array([v is not None for v in values], dtype=bool)
            out[given] = values[given]
    return datasets, cells


def split_keys(cell_ids: Sequence[str], obs: pd.DataFrame) -> Sequence[str]:
    """What is hashed per row: the first that is set of its split group (``split_group``), ``pair_id`` and
    ``source_cell``, else its id.

    Rows sharing a group (one cell line under several drugs; a control cell and its treated copies) land
    in the same split, so no test row has a near-copy in train; a derived row hashes the id of the cell it
    was built from, as that cell's own dataset does.
    """
    keys = [str(c) for c in cell_ids]
    for column in (SOURCE_CELL, "pair_id", "split_group"):  # the last one set wins
        values = _text_column(obs, column)
        if values is not None:
            keys = [k if v is None else v for v, k in zip(values, keys)]
    return keys


def assign_splits(cell_ids: Sequence[str], obs: pd.DataFrame, *, dataset: str, role: str, settings: SplitSettings,
                  ood_labels: Mapping[str, Sequence[str]] | None = None, origin: str | None = None,
                  ood_cells: Collection[tuple[str, str]] | None = None) -> np.ndarray:
    """Return an array of "train" / "test" / "ood" per cell ("adapt" instead of "train" for role adapt: cells
    that only duality GRPO sees, without their labels).

    ``origin``: the dataset whose cells these are (default ``dataset``); the hash of a row is salted with its
    identity's dataset (:func:`cell_identity`) and the seed. ``ood_cells``: (source dataset, source cell)
    identities that are OOD in another dataset of the run; rows with one of them are "ood" here too."""
    n = len(cell_ids)
    if role == "ood":
        return np.full(n, "ood", dtype=object)
    keys = np.asarray(split_keys(cell_ids, obs), dtype=object)
    sources, cells = cell_identity(cell_ids, obs, origin or dataset)
    draws = np.empty(n, dtype=np.float64)
    for source in dict.fromkeys(sources.tolist()):
        rows = np.flatnonzero(sources == source)
        draws[rows] = unit_hash(keys[rows].tolist(), f"{source}:{settings.seed}")
    rest = "adapt" if role == "adapt" else "train"
    split = np.where(draws < settings.test_fraction, "test", rest).astype(object)
    for column, values in (ood_labels or {}).items():
        if column in obs:
            split[obs[column].isin(list(values)).to_numpy()] = "ood"
    if ood_cells:
        held = set(ood_cells)
        split[np.array([(s, c) in held for s, c in zip(sources, cells)], dtype=bool)] = "ood"
    return split
