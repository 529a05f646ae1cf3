"""Datasets that ship inside installed packages (``source: builtin:<name>``); loading needs no network."""

from __future__ import annotations

from collections.abc import Callable

import anndata as ad


def pbmc68k_reduced() -> ad.AnnData:
    """scanpy's 700-cell subset of 10x PBMC 68k (X scaled; .raw log-normalized; obs bulk_labels)."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


# name after "builtin:" -> loader
BUILTIN_LOADERS: dict[str, Callable[[], ad.AnnData]] = {
    "scanpy/pbmc68k_reduced": pbmc68k_reduced,
}
