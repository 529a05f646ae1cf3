"""preprocess in blocks of rows: preprocess_file reads the matrix from disk a block at a time and writes the output
the same way; the result is the same whatever the block size, and the same as the in-memory preprocess()."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import make_adata

from cellduality.data import preprocess as pp
from cellduality.data.preprocess import PreprocessSettings, preprocess, preprocess_file
from cellduality.errors import CellDualityError

DS = {"species": "human", "labels": {"cell_type": "celltype"}, "metadata": {"donor": "donor_id"},
      "constants": {"tissue": "blood"}}
QC = PreprocessSettings(min_genes=5, min_cells=3, max_pct_mito=3.0, duplicate_genes="sum")


def counts(n=300, g=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(1.0, 0.8, size=(1, g)), size=(n, g)).astype(np.float32)
    X[: n // 20, 5:] = 0  # some cells with few genes
    X[:, 0] += 1
    genes = [f"Gene{i}" for i in range(g)]
    genes[1:4] = ["MT-CO1", "MT-ND1", "mt-cyb"]
    genes[10] = genes[11] = "CD3E"  # summed by duplicate_genes: sum
    genes[-1] = "GENE20"  # a repeat of Gene20 after upper-casing
    celltype = rng.choice(["B", "T", "NK"], n).astype(object)
    celltype[::17] = None
    obs = pd.DataFrame({"celltype": celltype, "donor_id": rng.choice(["d1", "d2"], n)})
    adata = make_adata(X, genes=genes, obs=obs)
    adata.uns["provenance"] = {"source": "test"}
    return adata


def written(adata: ad.AnnData, path) -> ad.AnnData:
    """``adata`` as the whole-matrix preprocess_file wrote it (strings become categories) and read back."""
    adata.write_h5ad(path)
    return ad.read_h5ad(path)


def same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert a.obs.equals(b.obs) and a.var.equals(b.var)
    for name in ("data", "indices", "indptr"):
        left, right = getattr(a.X, name), getattr(b.X, name)
        assert left.dtype == right.dtype and np.array_equal(left, right), name
    assert a.uns["cellduality_preprocess"] == b.uns["cellduality_preprocess"]
    assert a.uns["provenance"] == b.uns["provenance"]


@pytest.mark.parametrize("chunk_nnz", [1, 97, 10_000_000])
def test_file_in_blocks_equals_in_memory(tmp_path, chunk_nnz, monkeypatch):
    adata = counts()
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    expected, report = preprocess(adata.copy(), DS, QC, "d", where=f"{src} (dataset d)")
    assert 0 < report.dropped["cells_qc"] < adata.n_obs and report.dropped["cells_missing_cell_type"] > 0
    assert report.duplicate_genes == 2 and report.dropped["cells_high_mito"] > 0

    def whole(*args, **kwargs):
        raise AssertionError("preprocess_file must not read the whole h5ad")

    monkeypatch.setattr(ad, "read_h5ad", whole)
    got = preprocess_file(src, tmp_path / "out.h5ad", tmp_path / "qc.json", DS, QC, "d", chunk_nnz=chunk_nnz)
    monkeypatch.undo()
    assert got.__dict__ == report.__dict__
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    same(out, written(expected.copy(), tmp_path / "expected.h5ad"))
    assert out.X.has_sorted_indices and out.X.dtype == np.float32
    in_blocks, _ = preprocess(adata.copy(), DS, QC, "d", where=f"{src} (dataset d)", chunk_nnz=chunk_nnz)
    same(in_blocks, expected)


@pytest.mark.parametrize("layout", ["dense", "csc", "layer", "raw"])
def test_every_matrix_layout_on_disk(tmp_path, layout):
    adata = counts(seed=1)
    if layout == "dense":
        adata.X = adata.X.toarray()
    elif layout == "csc":
        adata.X = sp.csc_matrix(adata.X)
    elif layout == "layer":
        adata.layers["counts"] = adata.X.copy()
        adata.X = adata.X.toarray() - 1.5
    else:
        adata.raw = adata.copy()
        adata.X = adata.X.toarray() - 1.5
    ds = {**DS, "layer": "counts"} if layout == "layer" else DS
    adata.write_h5ad(tmp_path / "in.h5ad")
    expected, report = preprocess(adata, ds, QC, "d", where="x")
    assert report.matrix == {"layer": "layer:counts", "raw": "raw"}.get(layout, "X")
    preprocess_file(tmp_path / "in.h5ad", tmp_path / "out.h5ad", tmp_path / "qc.json", ds, QC, "d", chunk_nnz=50)
    same(ad.read_h5ad(tmp_path / "out.h5ad"), written(expected.copy(), tmp_path / "expected.h5ad"))


def test_bad_values_beyond_the_inspected_rows_are_counted(tmp_path):
    adata = counts(n=400)
    X = adata.X.toarray()
    X[350, 4], X[399, 0] = np.nan, np.inf  # past expression_check_rows
    adata.X = sp.csr_matrix(X)
    adata.write_h5ad(tmp_path / "in.h5ad")
    settings = QC.replace(expression_check_rows=100)
    with pytest.raises(CellDualityError, match="X contains 2 NaN/infinite values"):
        preprocess_file(tmp_path / "in.h5ad", tmp_path / "o.h5ad", tmp_path / "q.json", DS, settings, "d",
                        chunk_nnz=64)
    assert not list(tmp_path.glob("*o.h5ad*"))


def test_row_blocks_cover_the_rows_within_the_budget():
    X = sp.random(500, 40, density=0.2, format="csr", random_state=0)
    X[7] = 1.0  # a row of 40 values: a block of its own under a budget of 25
    for budget in (1, 25, 300, 10**9):
        blocks = pp._row_blocks(X, budget)
        assert blocks[0][0] == 0 and blocks[-1][1] == X.shape[0]
        assert all(a < b and b == c for (a, b), (c, _) in zip(blocks, blocks[1:]))
        assert all(b - a == 1 or X.indptr[b] - X.indptr[a] <= budget for a, b in blocks)
    assert pp._row_blocks(np.zeros((10, 4)), 8) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
