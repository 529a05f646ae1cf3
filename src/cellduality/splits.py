"""Deterministic train/test/OOD assignment of cells.

A cell's split depends only on (dataset, cell id, seed), never on row order or on which other cells are
present, so adding or removing cells never moves existing cells between splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def unit_hash(keys: Sequence[str], salt: str) -> np.ndarray:
    """Map each key to a uniform number in [0, 1) via blake2b(salt + key)."""
    prefix = salt.encode() + b"\x00"
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(prefix + str(key).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


def assign_splits(cell_ids: Sequence[str], obs: pd.DataFrame, *, dataset: str, role: str, test_fraction: float,
                  seed: int, ood_labels: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """Return an array of "train" / "test" / "ood" per cell."""
    n = len(cell_ids)
    if role == "ood":
        return np.full(n, "ood", dtype=object)
    split = np.where(unit_hash(cell_ids, f"{dataset}:{seed}") < test_fraction, "test", "train").astype(object)
    for column, values in (ood_labels or {}).items():
        if column in obs:
            split[obs[column].isin(list(values)).to_numpy()] = "ood"
    return split
