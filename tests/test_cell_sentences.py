import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellduality.data.cell_sentences import cell_sentences, iter_top_k, sentences_from_indices, top_k_gene_indices
from cellduality.errors import CellDualityError


def reference_top_k(row: np.ndarray, k: int, reverse_ties: bool = False) -> list[int]:
    """Independent definition: expressed genes sorted by (value desc, var index asc/desc)."""
    expressed = [j for j in range(len(row)) if row[j] > 0]
    sign = -1 if reverse_ties else 1
    return sorted(expressed, key=lambda j: (-row[j], sign * j))[:k]


def as_lists(indices, lengths):
    return [row[:n].tolist() for row, n in zip(indices, lengths)]


def test_ties_follow_var_order_and_reverse():
    X = sp.csr_matrix(np.array([[0, 3, 3, 1, 0], [5, 5, 5, 5, 5.0]]))
    idx, n = top_k_gene_indices(X, 3)
    assert as_lists(idx, n) == [[1, 2, 3], [0, 1, 2]]
    idx, n = top_k_gene_indices(X, 3, "reverse_var_order")
    assert as_lists(idx, n) == [[2, 1, 3], [4, 3, 2]]


def test_zeros_never_appear_and_k_larger_than_expressed():
    # row 1 stores an explicit zero, which must not count as expressed
    X = sp.csr_matrix((np.array([2.0, 0.0]), np.array([2, 1]), np.array([0, 1, 2])), shape=(2, 4))
    idx, n = top_k_gene_indices(X, 10)
    assert idx.shape == (2, 10)
    assert as_lists(idx, n) == [[2], []]
    assert (idx[0, 1:] == -1).all() and (idx[1] == -1).all()
    assert sentences_from_indices(idx, n, ["A", "B", "C", "D"]) == ["C", ""]


def test_unsorted_csr_indices_and_dense_input_give_same_result():
    dense = np.array([[1.0, 4.0, 4.0, 0.0, 2.0]])
    unsorted = sp.csr_matrix((np.array([2.0, 4.0, 1.0, 4.0]), np.array([4, 2, 0, 1]), np.array([0, 4])), shape=(1, 5))
    assert as_lists(*top_k_gene_indices(unsorted, 4)) == as_lists(*top_k_gene_indices(dense, 4)) == [[1, 2, 4, 0]]


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(CellDualityError, match="top_k"):
        top_k_gene_indices(np.ones((1, 2)), 0)
    with pytest.raises(CellDualityError, match="tie_break"):
        top_k_gene_indices(np.ones((1, 2)), 1, "random")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 25),
    k=st.integers(1, 30),
    reverse=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference_on_tie_heavy_matrices(rows, cols, k, reverse, seed):
    rng = np.random.default_rng(seed)
    dense = rng.integers(0, 4, size=(rows, cols)).astype(np.float32)  # values 0..3: ties everywhere
    # shuffle the index order inside each CSR row: the result must not depend on it
    csr = sp.csr_matrix(dense)
    for i in range(rows):
        lo, hi = csr.indptr[i], csr.indptr[i + 1]
        perm = rng.permutation(hi - lo) + lo
        csr.indices[lo:hi], csr.data[lo:hi] = csr.indices[perm], csr.data[perm]
    csr.has_sorted_indices = False
    idx, n = top_k_gene_indices(csr, k, "reverse_var_order" if reverse else "var_order")
    assert as_lists(idx, n) == [reference_top_k(row, k, reverse) for row in dense]


def test_chunking_does_not_change_output(tmp_path):
    X = sp.random(103, 50, density=0.3, random_state=2, format="csr", dtype=np.float32)
    X.data = np.round(X.data * 3)  # ties
    adata = ad.AnnData(X=X)
    adata.var_names = [f"G{i}" for i in range(50)]
    whole = cell_sentences(adata, 8, chunk_size=1000)
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    chunks = [(a, b) for a, b, _, _ in iter_top_k(backed, 8, 10)]
    assert chunks[0] == (0, 10) and chunks[-1] == (100, 103)
    assert cell_sentences(backed, 8, chunk_size=7) == whole
    expected = [" ".join(f"G{j}" for j in reference_top_k(row, 8)) for row in X.toarray()]
    assert whole == expected
