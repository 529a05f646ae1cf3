import importlib.util
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

from cellduality.errors import CellDualityError
from cellduality.evaluation.generation_metrics import (
    PCAEmbedding,
    frechet_distance,
    generation_scores,
    gromov_wasserstein,
    knn_accuracy,
    make_embedding,
    mmd_rbf,
    perturbation_scores,
    perturbation_scores_by_group,
    rbf_bandwidth,
    scgpt_embedding,
    wasserstein_per_dim,
)


def _with_moments(mean, cov, n=400, seed=0):
    """Samples whose sample mean and sample covariance (ddof=1) are exactly ``mean`` and ``cov``."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, len(mean)))
    Z -= Z.mean(axis=0)
    Z = Z @ np.linalg.inv(np.linalg.cholesky(np.cov(Z, rowvar=False))).T
    return Z @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_of_known_gaussians():
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a, b = _with_moments(m1, np.diag(v1)), _with_moments(m2, np.diag(v2), seed=1)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # diagonal closed form
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # non-commuting covariances against the textbook formula with scipy's matrix square root
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    S1, S2 = A @ A.T + np.eye(3), B @ B.T + 0.5 * np.eye(3)
    a, b = _with_moments(m1, S1), _with_moments(m2, S2, seed=3)
    textbook = np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * np.real(scipy.linalg.sqrtm(S1 @ S2)))
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)
    with pytest.raises(CellDualityError, match="at least 2 rows"):
        frechet_distance(a[:1], b)


def test_mmd_identical_sets_and_two_point_case():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    assert mmd_rbf(X, X) == 0.0
    # one point each at distance 1: k(x,x)=k(y,y)=1, k(x,y)=exp(-1/(2σ²)); median heuristic σ = 1
    assert rbf_bandwidth([[0.0]], [[1.0]]) == 1.0
    assert mmd_rbf([[0.0]], [[1.0]]) == pytest.approx(2 - 2 * math.exp(-0.5))
    assert mmd_rbf([[0.0]], [[1.0]], bandwidth=2.0) == pytest.approx(2 - 2 * math.exp(-1 / 8))
    # two points each: X = {0, 2}, Y = {1, 3}; pooled pairwise distances 1,2,3,1,2,1 -> median 1.5
    assert rbf_bandwidth([[0.0], [2.0]], [[1.0], [3.0]]) == 1.5

    def k(d):
        return math.exp(-d * d / (2 * 1.5**2))

    kxx = (2 + 2 * k(2)) / 4
    kyy = (2 + 2 * k(2)) / 4
    kxy = (k(1) + k(3) + k(1) + k(1)) / 4
    assert mmd_rbf([[0.0], [2.0]], [[1.0], [3.0]]) == pytest.approx(kxx + kyy - 2 * kxy)
    assert mmd_rbf(X, X + 3) > mmd_rbf(X, X + 0.3) > 0


def test_wasserstein_per_dimension():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    shifted = X + np.array([1.0, -2.0, 0.0])  # 1-D W1 of a shifted copy is the shift
    assert wasserstein_per_dim(X, shifted) == pytest.approx((1 + 2 + 0) / 3)
    assert wasserstein_per_dim(X, X) == 0.0


def test_gromov_wasserstein_self_and_isometric_copy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    copy = (X @ Q + 7.0)[rng.permutation(60)]  # rotated, translated, shuffled
    assert gromov_wasserstein(X, X) == pytest.approx(0.0, abs=1e-9)
    assert gromov_wasserstein(X, copy) == pytest.approx(0.0, abs=1e-9)
    assert gromov_wasserstein(X, 3 * copy) == pytest.approx(0.0, abs=1e-9)  # max-normalized: scale-free
    assert gromov_wasserstein(X, 3 * copy, normalize=None) > 0.1
    other = rng.uniform(size=(60, 5)) ** 4
    assert gromov_wasserstein(X, other) > 1e-3
    assert gromov_wasserstein(X, other, max_cells=20) > 0
    with pytest.raises(CellDualityError, match="normalize"):
        gromov_wasserstein(X, X, normalize="mean")


def test_gromov_wasserstein_keeps_the_best_of_several_starts():
    import ot
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    worse = 0
    for _ in range(6):
        X, Y = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) ** 3
        single = ot.gromov.gromov_wasserstein2(cdist(X, X), cdist(Y, Y), np.full(40, 1 / 40), np.full(30, 1 / 30),
                                               loss_fun="square_loss")
        best = gromov_wasserstein(X, Y, normalize=None, n_init=8)
        assert best <= single + 1e-9  # the product-coupling start is one of the starts
        worse += best < single - 1e-6
        assert gromov_wasserstein(X, Y, normalize=None, n_init=1) == pytest.approx(single)
    assert worse >= 2  # a single start is stuck in a local optimum on some of these cases


def test_knn_accuracy_on_separable_clusters():
    rng = np.random.default_rng(0)
    real = np.vstack([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))])
    labels = ["A"] * 30 + ["B"] * 30
    generated = np.vstack([rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))])
    right = ["A"] * 10 + ["B"] * 10
    assert knn_accuracy(real, labels, generated, right) == {3: 1.0, 5: 1.0, 10: 1.0, 25: 1.0}
    assert knn_accuracy(real, labels, generated, right[::-1], ks=(3,)) == {3: 0.0}
    half = ["A"] * 10 + ["A"] * 10
    assert knn_accuracy(real, labels, generated, half, ks=(5,)) == {5: 0.5}
    assert math.isnan(knn_accuracy(real[:4], labels[:4], generated, right, ks=(5,))[5])
    scores = generation_scores(real, labels, generated, right, ks=(3, 25))
    assert set(scores) == {"knn_acc_k3", "knn_acc_k25", "gw_distance", "gw_distance_normalized", "n_real",
                           "n_generated"}
    # gw_distance is on the raw scale of the paper's table; the normalised one is scale-free
    assert scores["gw_distance"] == pytest.approx(gromov_wasserstein(real, generated, normalize=None))
    assert scores["gw_distance_normalized"] == pytest.approx(gromov_wasserstein(real, generated))
    with pytest.raises(CellDualityError, match="one label"):
        knn_accuracy(real, labels[:-1], generated, right)


def test_pca_embedding_and_hooks():
    rng = np.random.default_rng(0)
    real = sp.random(80, 40, density=0.3, random_state=0, format="csr")
    emb = PCAEmbedding.fit(real, [f"G{i}" for i in range(40)], n_components=10)
    assert emb.transform(real).shape == (80, 10) and emb.n_components == 10
    assert np.allclose(emb.transform(real), emb.transform(real.toarray()))
    assert PCAEmbedding.fit(real[:5], n_components=50).n_components == 4
    with pytest.raises(CellDualityError, match="genes"):
        emb.transform(rng.normal(size=(3, 39)))
    assert isinstance(make_embedding(real, [f"G{i}" for i in range(40)], n_components=5), PCAEmbedding)
    with pytest.raises(CellDualityError, match="one of"):
        make_embedding(real, [], method="umap")
    with pytest.raises(CellDualityError, match="needs a checkpoint"):
        make_embedding(real, [], method="scgpt")


@pytest.mark.skipif(importlib.util.find_spec("scgpt") is not None, reason="scgpt is installed here")
def test_scgpt_requested_but_not_installed(tmp_path):
    with pytest.raises(CellDualityError, match="scgpt package is not installed"):
        scgpt_embedding(tmp_path, ["CD3D"])
    with pytest.raises(CellDualityError, match="not installed"):
        make_embedding(np.ones((3, 2)), ["A", "B"], scgpt_checkpoint=tmp_path)


def test_perturbation_scores_pooled_and_by_group():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 3))
    scores = perturbation_scores(real, real)
    assert scores["scfid"] == pytest.approx(0, abs=1e-8) and scores["mmd"] == 0 and scores["wasserstein"] == 0
    groups = ["d1"] * 20 + ["d2"] * 20
    generated = real.copy()
    generated[20:] += 1.0
    by_group = perturbation_scores_by_group(real, groups, generated, groups).set_index("group")
    assert by_group.loc["d1", "scfid"] == pytest.approx(0, abs=1e-8)
    assert by_group.loc["d2", "scfid"] == pytest.approx(3.0)  # |shift|² over 3 dims, same covariance
    assert by_group.loc["d2", "wasserstein"] == pytest.approx(1.0)
    assert list(by_group["n_real"]) == [20, 20]
