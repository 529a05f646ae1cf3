"""Writes the Python- and tar-made fixtures of tests/data/real/ from the R-made ones (run by make_fixtures.sh
after make_fixtures.R): loom files from loompy and from anndata, GEO-style tars packed by GNU tar, an xlsx cell
sheet, csv tables with a repeated gene, and a text file named .h5ad. CI only reads the committed results."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import loompy
import numpy as np
import pandas as pd
from scipy.io import mmread

HERE = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent).resolve()


def expected() -> ad.AnnData:
    """The R-written truth: counts (cells x genes), gene symbols and cell barcodes."""
    counts = mmread(HERE / "expected" / "counts.mtx").T.tocsr()
    genes = (HERE / "genes.txt").read_text().split()
    cells = (HERE / "expected" / "cells.txt").read_text().split()
    obs = pd.read_csv(HERE / "expected" / "coldata.csv", index_col=0, keep_default_na=False)
    return ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame({"cell_type": obs["cell_type"].to_numpy()},
                                                                   index=cells), var=pd.DataFrame(index=genes))


def tar(out: Path, folder: Path, *members: str, gzip_it: bool = False) -> None:
    """GNU tar, as GEO and Cell Ranger users make them (members in the order given)."""
    subprocess.run(["tar", "-czf" if gzip_it else "-cf", str(out), "-C", str(folder), *members], check=True)


def gz(src: Path, dest: Path) -> None:
    with open(src, "rb") as fi, gzip.open(dest, "wb") as fo:
        shutil.copyfileobj(fi, fo)


def main() -> None:
    truth = expected()
    # loom: loompy's own writer (genes x cells, row attr Gene, col attr CellID) and anndata's
    loompy.create(str(HERE / "loompy.loom"), truth.X.T.tocsr(), {"Gene": np.array(truth.var_names)},
                  {"CellID": np.array(truth.obs_names), "cell_type": truth.obs["cell_type"].to_numpy(str)})
    truth.write_loom(HERE / "anndata.loom")

    v2, v3 = HERE / "tenx_v2", HERE / "tenx_v3"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # flat, sample-prefixed triples (GEO *_RAW.tar): sample A from the v3 folder, sample B from the v2 one
        flat = tmp / "flat"
        flat.mkdir()
        for name in ("matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"):
            shutil.copy(v3 / name, flat / f"GSM0001_sampleA_{name}")
        for name in ("matrix.mtx", "barcodes.tsv", "genes.tsv"):
            gz(v2 / name, flat / f"GSM0002_sampleB_{name}.gz")
        tar(HERE / "geo_flat_triples.tar", flat, *sorted(p.name for p in flat.iterdir()))
        # the same as .txt.gz triples (GEO series that name barcodes/genes .txt)
        txt = tmp / "txt"
        txt.mkdir()
        shutil.copy(v3 / "matrix.mtx.gz", txt / "GSM0003_x_matrix.mtx.gz")
        gz(v2 / "barcodes.tsv", txt / "GSM0003_x_barcodes.txt.gz")
        gz(v2 / "genes.tsv", txt / "GSM0003_x_genes.txt.gz")
        tar(HERE / "geo_txt_triples.tar", txt, *sorted(p.name for p in txt.iterdir()))
        # nested: one .tar.gz per sample inside the series tar, each a Cell Ranger filtered_feature_bc_matrix/
        nested = tmp / "nested"
        nested.mkdir()
        for sample, src in (("GSM0004_sampleA", v3), ("GSM0005_sampleB", v2)):
            inner = tmp / sample
            shutil.copytree(src, inner / "filtered_feature_bc_matrix")
            tar(nested / f"{sample}.tar.gz", inner, "filtered_feature_bc_matrix", gzip_it=True)
        tar(HERE / "geo_nested.tar", nested, *sorted(p.name for p in nested.iterdir()))
        # two Cell Ranger outs/ folders in one tar
        outs = tmp / "outs"
        for sample, src in (("patient1", v3), ("patient2", v3)):
            shutil.copytree(src, outs / sample / "outs" / "filtered_feature_bc_matrix")
        tar(HERE / "cellranger_two_outs.tar", outs, "patient1", "patient2")
        # per-sample dense tables (genes x cells .txt.gz), GEO style
        tables = tmp / "tables"
        tables.mkdir()
        dense = pd.DataFrame(truth.X.toarray().T.astype(int), index=truth.var_names, columns=truth.obs_names)
        for i, cols in enumerate((dense.columns[:20], dense.columns[20:])):
            with gzip.open(tables / f"GSM000{6 + i}_counts.txt.gz", "wt") as fh:
                dense[cols].to_csv(fh, sep="\t")
        tar(HERE / "geo_txt_tables.tar", tables, *sorted(p.name for p in tables.iterdir()))

    # xlsx: a notes sheet first, the cell table on the second sheet with Plate# written once per plate block
    wells = [f"{r}{c}" for r in "AB" for c in range(1, 11)] * 2
    plates = ["P1"] * 20 + ["P2"] * 20
    cell_ids = [f"{p}_{w}" for p, w in zip(plates, wells)]
    sheet = pd.DataFrame({"Plate#": [p if i % 20 == 0 else None for i, p in enumerate(plates)],
                          "Well position": wells, "Sample name": ["resistant" if p == "P1" else "sensitive"
                                                                  for p in plates]})
    with pd.ExcelWriter(HERE / "cells_second_sheet.xlsx") as writer:
        pd.DataFrame({"note": ["cells are on the sheet 'cells'"]}).to_excel(writer, sheet_name="README", index=False)
        sheet.to_excel(writer, sheet_name="cells", index=False)
    plate_counts = dense.copy()
    plate_counts.columns = cell_ids
    plate_counts.to_csv(HERE / "plate_counts.csv")  # genes x cells, columns named <plate>_<well>

    # a gene written twice (HES4): as cells x genes and as genes x cells
    repeated = dense.iloc[:10].copy()
    repeated.index = ["HES4", *repeated.index[1:9], "HES4"]
    repeated.T.to_csv(HERE / "repeated_gene_cells_by_genes.csv")
    repeated.to_csv(HERE / "repeated_gene_genes_by_cells.csv")

    # a text table saved under an h5ad name (what a failed or wrong download leaves)
    repeated.to_csv(HERE / "not_really.h5ad")


if __name__ == "__main__":
    main()
