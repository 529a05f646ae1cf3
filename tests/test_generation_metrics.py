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
    big = rng.normal(size=(150, 4))  # above 64 points: the multilevel search
    assert gromov_wasserstein(big, big[::-1] @ np.diag([1, -1, 1, 1]), normalize=None) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(CellDualityError, match="normalize"):
        gromov_wasserstein(X, X, normalize="mean")


def _gw_case(kind: str, seed: int, n: int, m: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (4, d))

    def draw(k):
        if kind == "gauss":
            return rng.normal(size=(k, d))
        if kind == "cubed":
            return rng.normal(size=(k, d)) ** 3
        if kind == "skewed":
            return rng.uniform(size=(k, d)) ** 4
        return centers[rng.integers(0, 4, k)] + rng.normal(size=(k, d))  # clusters

    return draw(n), draw(m)


def _gw_pot(X, Y, starts):
    """POT's solver on the max-normalised distance matrices from each coupling in ``starts`` (None: product)."""
    import ot
    from scipy.spatial.distance import cdist

    C1, C2 = cdist(X, X), cdist(Y, Y)
    C1, C2 = C1 / C1.max(), C2 / C2.max()
    p, q = np.full(len(X), 1 / len(X)), np.full(len(Y), 1 / len(Y))
    return [float(ot.gromov.gromov_wasserstein2(C1, C2, p, q, loss_fun="square_loss", G0=G0)) for G0 in starts]


# 10 random cases: 20-60 points in 2-7 dimensions, equal and unequal sizes, Gaussian, heavy-tailed, skewed and
# clustered clouds
GW_CASES = [("gauss", 11, 46, 46, 7), ("cubed", 12, 31, 31, 3), ("skewed", 13, 38, 38, 7),
            ("clusters", 14, 20, 27, 6), ("gauss", 15, 54, 46, 5), ("cubed", 16, 45, 51, 4),
            ("skewed", 17, 59, 49, 5), ("clusters", 18, 42, 23, 3), ("gauss", 19, 39, 39, 4),
            ("clusters", 20, 53, 53, 7)]


def test_gromov_wasserstein_within_one_percent_of_many_restarts():
    """Issue #28 item 7: within 1% of the best of 101 starts of POT's solver (the product coupling and 100 random
    vertex couplings). The previous method (the best of 5 such starts) is more than 1% above it on 7 of these
    10 cases (up to +16%)."""
    import ot

    for case in GW_CASES:
        X, Y = _gw_case(*case)
        p, q = np.full(len(X), 1 / len(X)), np.full(len(Y), 1 / len(Y))
        rng = np.random.default_rng(1)
        best = min(_gw_pot(X, Y, [None] + [ot.emd(p, q, rng.random((len(X), len(Y)))) for _ in range(100)]))
        assert gromov_wasserstein(X, Y) <= 1.01 * best, case


def test_gromov_wasserstein_improves_on_pots_solver():
    import ot
    from scipy.spatial.distance import cdist

    from cellduality.evaluation.generation_metrics import _gw_search

    rng = np.random.default_rng(3)
    better = 0
    for i in range(3):
        X, Y = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) ** 3
        single = _gw_pot(X, Y, [None])[0]  # POT's solver from the product coupling, a start of the search too
        best = gromov_wasserstein(X, Y)
        assert best <= single + 1e-9
        better += best < single * 0.99
        assert gromov_wasserstein(X, Y, n_init=1) <= single + 1e-9
        if i == 0:
            assert gromov_wasserstein(X, Y, seed=1) <= 1.01 * best  # another seed finds about as good a coupling
    assert better >= 2  # POT's solver stops in a poor local optimum on some of these cases
    # the value is the GW loss of a coupling that POT's solver leaves as it is; raw and normalised at one coupling
    X, Y = rng.normal(size=(40, 5)), rng.normal(size=(90, 5)) ** 3  # 90 points: the multilevel search
    C1, C2 = cdist(X, X), cdist(Y, Y)
    p, q = np.full(40, 1 / 40), np.full(90, 1 / 90)
    T = _gw_search(X, Y, C1 / C1.max(), C2 / C2.max(), n_init=20)
    np.testing.assert_allclose(T.sum(1), p, atol=1e-12)
    np.testing.assert_allclose(T.sum(0), q, atol=1e-12)
    raw = gromov_wasserstein(X, Y, normalize=None, n_init=20)
    assert raw == pytest.approx(float(ot.gromov.gwloss(*ot.gromov.init_matrix(C1, C2, p, q), T)), rel=1e-9)
    assert raw == pytest.approx(ot.gromov.gromov_wasserstein2(C1, C2, p, q, G0=T), rel=1e-9)
    assert gromov_wasserstein(X, Y, n_init=20) == pytest.approx(_gw_pot(X, Y, [T])[0], rel=1e-9)


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
