"""Pair treated cells with control cells for perturbation data that does not pair them (catalog ``pairing``).

Single-cell perturbation screens (sci-Plex3, L1000) measure a treated cell and a control cell of the same cell
line as different cells. The perturbation task needs (control cell, perturbation) -> treated cell, so each
treated cell is matched to a control cell sharing the values of ``pairing.by`` (e.g. the cell line and time
point): the match is deterministic, a hash of the treated cell's id picks among its group's controls (sorted by
id), so every control is used about equally often. The result is the canonical ``condition`` (control /
treated) and ``pair_id`` (the control's cell id, on the control itself and on every treated cell matched to
it) columns that ``cellduality.tasks.rows`` pairs by.

Genetic perturbations (``pairing.operation``): the label becomes "<operation> <target gene>", e.g.
"knockdown TP53", with the target gene from ``labels.drug`` and the operation from an obs column or a fixed
value.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from cellduality.errors import CellDualityError

log = logging.getLogger("cellduality.preprocess")
CONTROL, TREATED = "control", "treated"


def _pick(cell_id: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(cell_id.encode(), digest_size=8).digest(), "big") % n


def pair_cells(obs: pd.DataFrame, source_obs: pd.DataFrame, pairing: dict, where: str, dataset: str) -> dict:
    """Add ``condition`` and ``pair_id`` to ``obs`` (canonical columns, index = cell ids) in place, reading the
    ``by`` and ``operation`` columns from ``source_obs`` (the input's obs, same rows); return counts for the QC
    summary."""
    field = f"datasets.{dataset}.pairing"
    if "drug" not in obs:
        raise CellDualityError(f"{where}: {field} needs labels.drug (the perturbation column); map it under "
                               f"datasets.{dataset}.labels")
    missing = [c for c in pairing.get("by", []) if c not in source_obs.columns]
    operation = pairing.get("operation")
    if missing:
        raise CellDualityError(f"{where}: {field}.by names obs column(s) {missing}, which do not exist; available: "
                               f"{', '.join(map(str, source_obs.columns)) or 'none'}")
    controls = {str(v).lower() for v in pairing.get("control", [])}
    drug = obs["drug"].astype("string")
    is_control = drug.str.lower().isin(controls).fillna(False).to_numpy(bool)
    if not is_control.any():
        examples = ", ".join(drug.dropna().unique()[:5])
        raise CellDualityError(f"{where}: no cell has a control value {sorted(controls)} ({field}.control) in the "
                               f"perturbation column (e.g. {examples}); list the dataset's control values there")
    if operation:
        op = (source_obs[operation].astype("string") if operation in source_obs.columns
              else pd.Series(operation, index=source_obs.index, dtype="string"))
        obs["drug"] = np.where(is_control, drug, op.to_numpy() + " " + drug.to_numpy())
    groups = (source_obs[pairing["by"]].astype("string").fillna("").agg("\x1f".join, axis=1).to_numpy()
              if pairing.get("by") else np.zeros(len(obs), dtype=object))
    ids = obs.index.astype(str).to_numpy()
    pair_id = np.full(len(obs), None, dtype=object)
    pair_id[is_control] = ids[is_control]
    frame = pd.DataFrame({"group": groups, "control": is_control, "id": ids})
    control_ids = {g: np.sort(f["id"].to_numpy()) for g, f in frame[frame.control].groupby("group", sort=False)}
    treated = np.flatnonzero(~is_control)
    unmatched = 0
    for i in treated:
        pool = control_ids.get(groups[i])
        if pool is None:
            unmatched += 1
            continue
        pair_id[i] = pool[_pick(ids[i], len(pool))]
    if unmatched == len(treated) and len(treated):
        raise CellDualityError(f"{where}: no treated cell has a control cell with the same {pairing.get('by')} "
                               f"({field}.by); pair by fewer columns")
    if unmatched:
        log.warning("%s: %d of %d treated cells have no control cell with the same %s; they get no pair",
                    where, unmatched, len(treated), pairing.get("by"))
    obs["condition"] = np.where(is_control, CONTROL, TREATED)
    obs["pair_id"] = pd.array(pair_id, dtype="string")
    log.info("%s: paired %d treated cells with %d control cells by %s", where, len(treated) - unmatched,
             int(is_control.sum()), pairing.get("by"))
    return {"control_cells": int(is_control.sum()), "paired_cells": int(len(treated) - unmatched),
            "treated_cells_without_control": int(unmatched)}
