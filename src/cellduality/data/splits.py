"""Deterministic train/test/OOD assignment of cells.

A cell's split depends only on (dataset, its group or cell id, seed), never on row order or on which other
cells are present, so adding or removing cells never moves existing cells between splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
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


def split_keys(cell_ids: Sequence[str], obs: pd.DataFrame) -> Sequence[str]:
    """What is hashed per row: its split group (``split_group``, else ``pair_id``) where set, else its id.

    Rows sharing a group (one cell line under several drugs; a control cell and its treated copies) land
    in the same split, so no test row has a near-copy in train.
    """
    for column in ("split_group", "pair_id"):
        if column in obs:
            groups = obs[column].astype("string").to_numpy(dtype=object, na_value=None)
            return [c if g is None else g for g, c in zip(groups, cell_ids)]
    return cell_ids


def assign_splits(cell_ids: Sequence[str], obs: pd.DataFrame, *, dataset: str, role: str, settings: SplitSettings,
                  ood_labels: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """Return an array of "train" / "test" / "ood" per cell ("adapt" instead of "train" for role adapt: cells
    that only duality GRPO sees, without their labels)."""
    n = len(cell_ids)
    if role == "ood":
        return np.full(n, "ood", dtype=object)
    keys = split_keys(cell_ids, obs)
    rest = "adapt" if role == "adapt" else "train"
    split = np.where(unit_hash(keys, f"{dataset}:{settings.seed}") < settings.test_fraction, "test", rest).astype(object)
    for column, values in (ood_labels or {}).items():
        if column in obs:
            split[obs[column].isin(list(values)).to_numpy()] = "ood"
    return split
