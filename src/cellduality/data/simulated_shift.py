"""Embedded domain shift for label-free adaptation: a SIMULATED batch effect on REAL PBMC cells.

This is not experimental data. scanpy's ``pbmc68k_reduced`` (700 PBMCs, ``.raw`` = log1p(CP10k) of 765 genes,
the authors' ``bulk_labels``) is split into two disjoint cohorts by a hash of the cell id
(:func:`cohort_of`: blake2b(cell id) < 0.5 -> "A", else "B"; the ``scanpy/pbmc68k_reduced`` loader adds the same
``cohort`` column, so a catalog entry keeps cohort A with ``obs_filter: {cohort: [A]}``). Cohort B gets a
seeded batch effect of the kind a second lab or chemistry gives, applied to CP10k values ``y = expm1(x)``:

1. gene capture efficiency: every gene's values are multiplied by ``f_g = exp(sigma * z_g)``, ``z_g ~ N(0, 1)``
   (``sigma`` = :data:`GENE_SIGMA`), drawn once in var order from ``default_rng(stable_seed(NAME, seed,
   "genes"))``: the order of a cell's top genes, hence its cell sentence, changes;
2. dropout: each non-zero value is set to 0 with probability :data:`DROPOUT`, per cell from
   ``default_rng(stable_seed(NAME, seed, cell id))``;
3. each cell is renormalized to 10,000 and log1p-transformed again.

Output: cohort B's cells (about 350) x 765 genes, X log1p(CP10k) CSR float32, obs ``bulk_labels`` (the real
labels, kept for evaluating adaptation on held-out cells), ``cohort`` and the cells' identity in
``pbmc68k_reduced`` (``source_dataset`` = :data:`PBMC68K`, ``source_cell`` = the cell id), which puts each
cell in the split it has in every other dataset of these cells (:mod:`cellduality.data.splits`);
``uns["provenance"]`` says what was done. Licence: PBMC 68k (Zheng et al. 2017) CC BY 4.0 via 10x Genomics,
subset redistributed by scanpy (BSD-3-Clause).
"""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellduality.data.splits import SOURCE_CELL, SOURCE_DATASET
from cellduality.seeding import stable_seed

NAME = "simulated/pbmc68k_shifted"
PBMC68K = "builtin:scanpy/pbmc68k_reduced"  # the builtin whose cells this module and simulated_perturbation use
GENE_SIGMA = 0.7
DROPOUT = 0.2


def cohort_of(cell_ids) -> np.ndarray:
    """"A" or "B" per cell id (blake2b of the id below / above one half): two disjoint halves of a dataset."""
    values = [int.from_bytes(hashlib.blake2b(str(c).encode(), digest_size=8).digest(), "big") / 2.0**64
              for c in cell_ids]
    return np.where(np.asarray(values) < 0.5, "A", "B")


def shift_cells(X, cell_ids, *, seed: int = 0, gene_sigma: float = GENE_SIGMA, dropout: float = DROPOUT):
    """The batch effect of the module docstring on log1p(CP10k) rows ``X``; returns CSR float32."""
    X = sp.csr_matrix(X, dtype=np.float64)
    factors = np.exp(gene_sigma * np.random.default_rng(stable_seed(NAME, seed, "genes")).standard_normal(X.shape[1]))
    rows = []
    for i, cell in enumerate(cell_ids):
        row = X.getrow(i)
        values = np.expm1(row.data) * factors[row.indices]
        keep = np.random.default_rng(stable_seed(NAME, seed, str(cell))).random(values.size) >= dropout
        values, indices = values[keep], row.indices[keep]
        values = np.log1p(values / max(values.sum(), 1e-12) * 1e4)
        rows.append(sp.csr_matrix((values, indices, [0, values.size]), shape=(1, X.shape[1])))
    out = sp.vstack(rows).tocsr().astype(np.float32)
    out.eliminate_zeros()
    return out


def load_pbmc68k_shifted(seed: int = 0) -> ad.AnnData:
    """Cohort B of pbmc68k_reduced with the simulated batch effect (module docstring)."""
    import scanpy as sc

    base = sc.datasets.pbmc68k_reduced()
    ids = base.obs_names.astype(str).to_numpy()
    keep = cohort_of(ids) == "B"
    raw = base.raw.X[keep]
    obs = pd.DataFrame({"bulk_labels": base.obs["bulk_labels"].astype(str).to_numpy()[keep], "cohort": "B",
                        SOURCE_DATASET: PBMC68K, SOURCE_CELL: ids[keep]}, index=pd.Index(ids[keep], name="cell_id"))
    out = ad.AnnData(X=shift_cells(raw, ids[keep], seed=seed), obs=obs,
                     var=pd.DataFrame(index=base.raw.var_names.astype(str)))
    out.uns["provenance"] = {
        "name": NAME, "nature": "SIMULATED batch effect on real PBMC cells (not experimental data)",
        "source": "scanpy pbmc68k_reduced (.raw), cohort B (blake2b(cell id) >= 0.5)",
        "rule": f"CP10k x exp({GENE_SIGMA} z_gene), dropout {DROPOUT}, renormalized to 1e4, log1p", "seed": seed,
        "licence": "PBMC 68k CC BY 4.0 (10x Genomics); scanpy subset BSD-3-Clause"}
    return out
