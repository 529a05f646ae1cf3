import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellduality.errors import CellDualityError
from cellduality.evaluation.expression_inversion import RankExpressionFit, fit_from_files, fit_rank_expression

GENES = [f"G{i}" for i in range(50)]


def _synthetic(a: float, b: float, n_cells: int = 200, k: int = 20, noise: float = 0.0, seed: int = 0):
    """Cells whose sentence is k random genes and whose expression at rank r is a*log10(r)+b (+ noise)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n_cells, len(GENES)))
    sentences = []
    for i in range(n_cells):
        genes = rng.choice(len(GENES), size=k, replace=False)
        X[i, genes] = a * np.log10(np.arange(1, k + 1)) + b + rng.normal(0, noise, size=k)
        sentences.append(" ".join(GENES[g] for g in genes))
    return sentences, sp.csr_matrix(X)


def test_fit_recovers_slope_and_intercept():
    sentences, X = _synthetic(-1.5, 4.0)
    fit = fit_rank_expression(sentences, X, GENES, dataset="toy")
    assert fit.slope == pytest.approx(-1.5) and fit.intercept == pytest.approx(4.0) and fit.r2 == pytest.approx(1.0)
    assert (fit.n_cells, fit.n_pairs) == (200, 200 * 20)
    noisy = fit_rank_expression(*_synthetic(-0.8, 3.0, noise=0.1, seed=1), GENES)
    assert noisy.slope == pytest.approx(-0.8, abs=0.02) and noisy.intercept == pytest.approx(3.0, abs=0.02)
    dense = fit_rank_expression(sentences, X.toarray(), GENES)
    assert dense.slope == pytest.approx(fit.slope)


def test_invert_places_genes_by_rank_and_counts_oddities():
    fit = RankExpressionFit(dataset="toy", slope=-2.0, intercept=3.0, genes=tuple(GENES))
    inv = fit.invert([" G3  g7\tNOPE G3 G1 ", None, "", "G0 " + " ".join(GENES[1:]), "G5"])
    X = inv.X.toarray()
    assert X.shape == (5, 50) and X.dtype == np.float32
    # ranks 1, 2 (case-insensitive) and 5: the unknown token keeps position 3, the repeat of G3 (4) is dropped
    assert X[0, 3] == pytest.approx(3.0) and X[0, 7] == pytest.approx(3 - 2 * np.log10(2))
    assert X[0, 1] == pytest.approx(3 - 2 * np.log10(5)) and np.count_nonzero(X[0]) == 3
    assert not X[1].any() and not X[2].any()
    ranks = np.arange(1, 51)
    assert X[3] == pytest.approx(np.maximum(3 - 2 * np.log10(ranks), 0))  # clipped at 0 far down
    assert inv.n_unknown.tolist() == [1, 0, 0, 0, 0] and inv.n_repeated.tolist() == [1, 0, 0, 0, 0]
    assert inv.n_genes_used.tolist() == [3, 0, 0, 50, 1] and inv.unknown_top == {"NOPE": 1}
    assert inv.summary()["n_empty"] == 2
    with pytest.raises(CellDualityError, match="1-based"):
        fit.expression_at([0])


def test_roundtrip_of_a_fit_through_json(tmp_path):
    fit = fit_rank_expression(*_synthetic(-1.0, 2.0), GENES, dataset="toy")
    fit.save(tmp_path / "fit.json")
    loaded = RankExpressionFit.load(tmp_path / "fit.json")
    assert loaded == fit
    assert json.loads((tmp_path / "fit.json").read_text())["genes"] == GENES
    with pytest.raises(CellDualityError, match="not found"):
        RankExpressionFit.load(tmp_path / "missing.json")
    with pytest.raises(CellDualityError, match="not a rank->expression fit"):
        RankExpressionFit.from_dict({"dataset": "x"})


def test_bad_input():
    with pytest.raises(CellDualityError, match="sentences"):
        fit_rank_expression(["G0 G1"], sp.csr_matrix((2, 50)), GENES)
    with pytest.raises(CellDualityError, match="at least two known genes"):
        fit_rank_expression(["G0", "X Y"], sp.csr_matrix(np.ones((2, 50))), GENES)


def test_fit_from_files_matches_cells_by_id(tmp_path):
    sentences, X = _synthetic(-1.2, 3.5, n_cells=60)
    ids = [f"c{i}" for i in range(60)]
    ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=GENES)).write_h5ad(
        tmp_path / "toy.h5ad")
    cells = pd.DataFrame({"cell_id": ids, "dataset": "toy", "split": ["train"] * 40 + ["test"] * 20,
                          "sentence": sentences}).iloc[::-1]  # table order differs from the h5ad
    cells.to_parquet(tmp_path / "toy.parquet")
    fit = fit_from_files(tmp_path / "toy.h5ad", tmp_path / "toy.parquet", dataset="toy", max_cells=30)
    assert fit.n_cells == 30 and fit.slope == pytest.approx(-1.2) and fit.intercept == pytest.approx(3.5)
    cells.assign(cell_id="zz" + cells["cell_id"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(CellDualityError, match="not in"):
        fit_from_files(tmp_path / "toy.h5ad", tmp_path / "bad.parquet", dataset="toy")
    with pytest.raises(CellDualityError, match="no cells"):
        fit_from_files(tmp_path / "toy.h5ad", tmp_path / "toy.parquet", dataset="other")


def test_inversion_is_vectorized_fast():
    fit = RankExpressionFit(dataset="toy", slope=-1.0, intercept=3.0, genes=tuple(f"GENE{i}" for i in range(2000)))
    rng = np.random.default_rng(0)
    sentences = [" ".join(f"GENE{g}" for g in rng.choice(2000, 100, replace=False)) for _ in range(20000)]
    start = time.perf_counter()
    inv = fit.invert(sentences)
    assert time.perf_counter() - start < 5.0
    assert inv.X.nnz == 20000 * 100
