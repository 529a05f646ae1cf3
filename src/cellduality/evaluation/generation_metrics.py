"""Distribution metrics for generated cells, computed in an embedding space.

Embedding: PCA fit on real cells (default; :class:`PCAEmbedding`) or scGPT when a checkpoint is configured
(:func:`scgpt_embedding`, needs the ``scgpt`` package and a local checkpoint; nothing is downloaded).
Inputs are expression rows (e.g. from ``expression_inversion``); for like-for-like comparisons invert the
real cells' sentences too, so real and generated cells carry the same number of genes.

Conditional generation (Cell2Sentence):
- kNN accuracy, k in (3, 5, 10, 25): a k-nearest-neighbour classifier (Euclidean, uniform vote) fit on real
  cells' embeddings and labels predicts each generated cell; the score is the share predicted as the type
  it was conditioned on. NaN where k exceeds the number of real cells.
- Gromov-Wasserstein distance (square loss, uniform weights: the loss of POT's ``ot.gromov.gromov_wasserstein2``,
  ``sum (C1[i,k] - C2[j,l])² T[i,j] T[k,l]``) between the Euclidean distance matrices of the real and the generated
  set, at the best coupling ``T`` a seeded search finds. Euclidean distance matrices are conditionally negative
  definite, so the loss is concave in ``T``: its minima lie at vertices of the transport polytope (permutations for
  equal sizes), and POT's solver (conditional gradient; its line search always takes the full step) hops from vertex
  to vertex to the first local optimum; from random starts the median one is 9-150% above the best known on
  clustered sets of 300-1000 cells. The search: local search = that solver alternated with exchange moves (two
  support entries of ``T`` swap partners, exact quadratic gain; they escape the solver's optima) until neither
  lowers the loss by 2e-6 of the product coupling's. Sets of up to 64 cells: local search from the product coupling
  (POT's start, so the value is never above POT's solver from it) and ``n_init`` random vertex couplings (``ot.emd``
  of a random cost), then ``n_init / 2`` kicks (a random 60% of the best coupling's rows re-transported at random,
  local search, kept if better). Larger sets, coarse to fine: k-means blocks of both sets, 12 blocks, then sizes
  halving from the set's down to <= 64; at each level the matrices are block means (exact for couplings constant on
  blocks) and the search starts from the product coupling, the previous level's 3 best distinct couplings (spread
  over the new blocks), ``n_init`` random vertex couplings at the coarsest level and ``n_init / 5`` at the level <=
  64, then ``n_init / 2 * min(1, (64 / size)²)`` kicks. Measured (``benchmarks/experiments/gw_restarts.py``, default
  ``n_init`` 200): on 150 random pairs of 20-60 points (Gaussian, heavy-tailed, skewed, clustered; a third of
  unequal sizes) never above the best of 101 POT runs (product + 100 random starts), median 2% below (the previous
  best of 5 runs: more than 1% above on 115, up to +107%); on 16 pairs of 80-300 points median 0.4% below the best
  of 41 runs, 2 skewed pairs 1.8% and 3.4% above (previous: 9 more than 1% above, up to +22%); on clustered 50-d
  sets of 100-1000 cells 0.2-31% below the best of 21 runs. Per call: 0.8 s at 100 cells, 2-8 s at 300, 8-22 s at
  1000 (previous: 0.03 s, 0.4 s, 6-27 s). The best coupling does not depend on the matrices' scales, so the search
  runs on max-normalised matrices and both values are taken at the same coupling: ``gw_distance`` on raw distances
  (the scale of the paper's and Cell2Sentence's tables), ``gw_distance_normalized`` with each matrix divided by its
  maximum (scale-free, in [0, 1]). Sets above ``max_cells`` are subsampled (seeded).

Perturbation response (C2S-Scale):
- scFID: Fréchet distance between Gaussian fits (mean, covariance with ddof=1):
  ``|mu1-mu2|² + tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½)``, computed with symmetric eigendecompositions.
- MMD: the biased (V-statistic) estimate of squared MMD with an RBF kernel
  ``k(x, y) = exp(-|x-y|² / (2 σ²))``; σ by the median heuristic: the median Euclidean distance over all
  pairs of distinct cells of the pooled real + generated sample (positive distances only if that median is
  0; 1 if all cells coincide). Identical sets give exactly 0.
- Wasserstein: the mean over embedding dimensions of the 1-D Wasserstein-1 distance between the real and
  generated marginals (``scipy.stats.wasserstein_distance``); per-dimension, not sliced.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial.distance import cdist, pdist
from scipy.stats import wasserstein_distance

from cellduality.errors import CellDualityError

KNN_KS = (3, 5, 10, 25)
EMBEDDINGS = ("pca", "scgpt")
SCGPT_FILES = ("args.json", "best_model.pt", "vocab.json")


class Embedding(Protocol):
    """Maps expression rows (over the genes it was built for) to embedding rows."""

    name: str

    def transform(self, X) -> np.ndarray: ...


# ---------------------------------------------------------------- embeddings

@dataclass
class PCAEmbedding:
    """PCA fit on real cells' expression; ``transform`` projects any cells over the same genes."""

    model: object
    genes: tuple[str, ...]
    name: str = "pca"

    @classmethod
    def fit(cls, X, genes: Sequence[str] = (), n_components: int = 50, seed: int = 0) -> PCAEmbedding:
        from sklearn.decomposition import PCA

        n_cells, n_genes = X.shape
        n = min(int(n_components), n_cells - 1, n_genes - 1 if sp.issparse(X) else n_genes)
        if n < 1:
            raise CellDualityError(f"PCA embedding needs at least 2 real cells and 2 genes, got {X.shape}")
        dense = not sp.issparse(X) or n_cells * n_genes <= 50_000_000
        data = (X.toarray() if sp.issparse(X) else np.asarray(X)) if dense else X.tocsr()
        model = PCA(n_components=n, svd_solver="auto" if dense else "arpack", random_state=seed)
        model.fit(np.asarray(data, dtype=np.float64) if dense else data.astype(np.float64))
        return cls(model=model, genes=tuple(map(str, genes)))

    @property
    def n_components(self) -> int:
        return int(self.model.n_components_)

    def transform(self, X) -> np.ndarray:
        n_in = int(self.model.n_features_in_)
        if X.shape[1] != n_in:
            raise CellDualityError(f"cells have {X.shape[1]} genes but the PCA embedding was fit on {n_in}")
        data = X.astype(np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        return np.asarray(self.model.transform(data))


@dataclass
class ScGPTEmbedding:
    """Cell embeddings of a local scGPT checkpoint (``scgpt.tasks.embed_data``)."""

    checkpoint: Path
    genes: tuple[str, ...]
    batch_size: int = 64
    device: str = "cpu"
    name: str = "scgpt"

    def transform(self, X) -> np.ndarray:
        import anndata as ad
        from scgpt.tasks import embed_data

        if X.shape[1] != len(self.genes):
            raise CellDualityError(f"cells have {X.shape[1]} genes but the scGPT embedding was set up for "
                                   f"{len(self.genes)}")
        adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), var=pd.DataFrame(index=list(self.genes)))
        out = embed_data(adata, self.checkpoint, gene_col="index", batch_size=self.batch_size,
                         device=self.device, use_fast_transformer=False, return_new_adata=True)
        return np.asarray(out.X, dtype=np.float64)


def scgpt_embedding(checkpoint: str | Path, genes: Sequence[str], *, batch_size: int = 64,
                    device: str = "cpu") -> ScGPTEmbedding:
    """scGPT embedding from a local checkpoint folder; a clear error if scGPT or the files are missing."""
    if importlib.util.find_spec("scgpt") is None:
        raise CellDualityError(
            f"scGPT embeddings were requested (checkpoint {checkpoint}) but the scgpt package is not installed; "
            "install scgpt in this environment, or unset the scGPT checkpoint to evaluate in PCA space "
            "(nothing is downloaded automatically)")
    folder = Path(checkpoint)
    missing = [name for name in SCGPT_FILES if not (folder / name).is_file()]
    if missing:
        raise CellDualityError(f"scGPT checkpoint {folder} lacks {', '.join(missing)}; point it at a folder "
                               f"holding {', '.join(SCGPT_FILES)} (e.g. the whole-human checkpoint)")
    return ScGPTEmbedding(checkpoint=folder, genes=tuple(map(str, genes)), batch_size=batch_size, device=device)


def make_embedding(real_X, genes: Sequence[str], *, method: str = "pca", n_components: int = 50,
                   scgpt_checkpoint: str | Path | None = None, seed: int = 0) -> Embedding:
    """The evaluation embedding: PCA fit on ``real_X``, or scGPT (``method="scgpt"`` or a checkpoint given)."""
    if method not in EMBEDDINGS:
        raise CellDualityError(f"embedding method must be one of {EMBEDDINGS}, got {method!r}")
    if method == "scgpt" or scgpt_checkpoint:
        if not scgpt_checkpoint:
            raise CellDualityError("embedding method 'scgpt' needs a checkpoint folder; set the scGPT checkpoint")
        return scgpt_embedding(scgpt_checkpoint, genes)
    return PCAEmbedding.fit(real_X, genes, n_components=n_components, seed=seed)


# ---------------------------------------------------------------- helpers

def _matrix(X, what: str, min_rows: int = 1) -> np.ndarray:
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < min_rows:
        raise CellDualityError(f"{what}: need a 2-D array with at least {min_rows} rows, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise CellDualityError(f"{what}: contains NaN or infinite values")
    return X


def _pair(real, generated, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(real, "real cells", min_rows), _matrix(generated, "generated cells", min_rows)
    if a.shape[1] != b.shape[1]:
        raise CellDualityError(f"real cells have {a.shape[1]} dimensions but generated cells {b.shape[1]}")
    return a, b


def subsample(X: np.ndarray, max_cells: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_cells`` rows of ``X`` (seeded, without replacement, original order kept)."""
    if max_cells is None or len(X) <= max_cells:
        return X
    keep = np.sort(np.random.default_rng(seed).choice(len(X), size=int(max_cells), replace=False))
    return X[keep]


# ---------------------------------------------------------------- conditional generation

def knn_recognised(real, real_labels: Sequence[str], generated, generated_labels: Sequence[str],
                   k: int) -> np.ndarray:
    """Per generated cell: whether the vote of its ``k`` nearest real cells (Euclidean, uniform) is its
    conditioning label."""
    from sklearn.neighbors import KNeighborsClassifier

    a, b = _pair(real, generated)
    if len(real_labels) != len(a) or len(generated_labels) != len(b):
        raise CellDualityError("knn_accuracy: one label per real and per generated cell is needed")
    target = np.asarray([str(label) for label in generated_labels], dtype=object)
    train = np.asarray([str(label) for label in real_labels], dtype=object)
    return KNeighborsClassifier(n_neighbors=int(k)).fit(a, train).predict(b) == target


def knn_accuracy(real, real_labels: Sequence[str], generated, generated_labels: Sequence[str],
                 ks: Sequence[int] = KNN_KS) -> dict[int, float]:
    """k -> share of generated cells whose kNN vote among real cells is their conditioning label."""
    n_real = len(_pair(real, generated)[0])
    return {int(k): float("nan") if k > n_real else
            float(np.mean(knn_recognised(real, real_labels, generated, generated_labels, k))) for k in ks}


def _distances(X: np.ndarray, normalize: str | None) -> np.ndarray:
    D = cdist(X, X)
    if normalize == "max":
        peak = D.max()
        return D / peak if peak > 0 else D
    if normalize is not None:
        raise CellDualityError(f"normalize must be 'max' or None, got {normalize!r}")
    return D


GW_INITS = 200  # random starts of the GW search at its coarsest level (see the module notes)
GW_DIRECT = 64  # sets up to this size are searched directly, larger ones from coarse to fine
GW_COARSEST = 12  # blocks at the coarsest level of a multilevel search
GW_KEEP = 3  # distinct best couplings carried from one level to the next


def _gw_vertex(G: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """A vertex of the transport polytope maximising ``<G, T>`` (an exact ``ot.emd`` solution)."""
    import ot

    return ot.emd(p, q, G.max() - G, numItermax=10**7, center_dual=False, check_marginals=False)


def _gw_gradient(C1: np.ndarray, C2: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, float]:
    """``G = C1 T C2`` and ``g = <G, T>`` (the coupling-dependent part of the GW loss is ``-2 g``)."""
    G = C1 @ (sp.csr_matrix(T) @ C2 if T.size > 10**5 else T @ C2)  # T: a vertex, at most n + m - 1 entries
    return G, float(np.sum(G * T))


def _gw_frank_wolfe(C1, C2, p, q, T, G=None, g=None, tol: float = 0.0, max_iter: int = 1000):
    """POT's conditional gradient for the square loss: on Euclidean distance matrices (conditionally negative
    definite) the loss is concave in the coupling, its line search always takes the full step, so each step
    jumps to the vertex of the linearisation. Stops when that no longer increases ``g`` by more than ``tol``."""
    if G is None:
        G, g = _gw_gradient(C1, C2, T)
    for _ in range(max_iter):
        T2 = _gw_vertex(G, p, q)
        G2, g2 = _gw_gradient(C1, C2, T2)
        if g2 <= g + tol:
            break
        T, G, g = T2, G2, g2
    return T, G, g


def _gw_exchanges(C1, C2, T, G, g, tol: float = 0.0, max_rounds: int = 10000):
    """Exchange moves on the support of ``T``: for support entries (r1, c1) and (r2, c2), move
    ``d = min(T[r1, c1], T[r2, c2])`` to (r1, c2) and (r2, c1) (for equal sizes: swap two cells' partners).
    Its gain in ``g`` is ``d² (C1[r1,r1] + C1[r2,r2] - 2 C1[r1,r2]) (C2[c1,c1] + C2[c2,c2] - 2 C2[c1,c2])
    - 2 d (G[r1,c1] + G[r2,c2] - G[r1,c2] - G[r2,c1])``. Each round computes every pair's gain, then applies
    the improving moves best first, each re-checked against the moves applied before it (their rank-one
    updates of ``G`` are applied together at the end of the round). Rounds repeat until no move gains more
    than ``tol``."""
    T = T.copy()
    d1, d2 = np.diag(C1), np.diag(C2)
    for _ in range(max_rounds):
        r, c = np.nonzero(T > 1e-15)
        s = len(r)
        t = T[r, c]
        Gd = G[r, c]
        gain = G[r][:, c]  # G[r_a, c_b]
        gain += gain.T
        gain -= Gd[:, None]
        gain -= Gd[None, :]
        gain *= 2
        d = np.minimum.outer(t, t)
        u = C1[np.ix_(r, r)] * -2
        u += d1[r][:, None]
        u += d1[r][None, :]
        v = C2[np.ix_(c, c)] * -2
        v += d2[c][:, None]
        v += d2[c][None, :]
        u *= v
        u *= d
        gain += u
        gain *= d
        cand = np.flatnonzero(gain > tol)
        cand = cand[cand // s < cand % s]  # gains are symmetric: pairs a < b
        if len(cand) == 0:
            break
        if len(cand) > 2 * s:
            cand = cand[np.argpartition(-gain.flat[cand], 2 * s)[:2 * s]]
        cand = cand[np.argsort(-gain.flat[cand], kind="stable")]
        X = np.empty((len(G), min(len(cand), s)))
        Y = np.empty((G.shape[1], X.shape[1]))
        k = 0
        for a, b in zip(*np.divmod(cand, s)):
            r1, c1, r2, c2 = r[a], c[a], r[b], c[b]
            dd = min(T[r1, c1], T[r2, c2])
            if dd <= 1e-15:
                continue
            lin = G[r1, c1] + G[r2, c2] - G[r1, c2] - G[r2, c1]
            if k:
                x1, x2, y1, y2 = X[r1, :k], X[r2, :k], Y[c1, :k], Y[c2, :k]
                lin += (x1 - x2) @ (y1 - y2)
            gn = dd * (dd * (d1[r1] + d1[r2] - 2 * C1[r1, r2]) * (d2[c1] + d2[c2] - 2 * C2[c1, c2]) - 2 * lin)
            if gn <= tol:
                continue
            T[r1, c1] -= dd
            T[r2, c2] -= dd
            T[r1, c2] += dd
            T[r2, c1] += dd
            X[:, k] = -dd * (C1[:, r1] - C1[:, r2])
            Y[:, k] = C2[:, c1] - C2[:, c2]
            g += gn
            k += 1
            if k == X.shape[1]:
                break
        if k == 0:
            break
        G += X[:, :k] @ Y[:, :k].T
    return T, G, g


def _gw_local(C1, C2, p, q, T, tol: float = 0.0):
    """Frank-Wolfe and exchange moves in turn until neither improves: ``(T, G, g)``."""
    T, G, g = _gw_frank_wolfe(C1, C2, p, q, T, tol=tol)
    for _ in range(1000):
        T, G, g = _gw_exchanges(C1, C2, T, G, g, tol)
        T2, G2, g2 = _gw_frank_wolfe(C1, C2, p, q, T, G, g, tol)
        if g2 <= g:
            break
        T, G, g = T2, G2, g2
    return T, G, g


def _gw_perturb(T: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``T`` with the mass of a random ``share`` of its rows re-transported to the same columns at random
    cost (a random vertex of that sub-problem): the kick of the iterated local search."""
    import ot

    rows = rng.choice(len(T), size=min(len(T), max(2, round(share * len(T)))), replace=False)
    sub = T[rows]
    mass = sub.sum(0)
    cols = np.flatnonzero(mass > 1e-15)
    T = T.copy()
    T[rows] = 0
    T[np.ix_(rows, cols)] = ot.emd(sub.sum(1), mass[cols], rng.random((len(rows), len(cols))), numItermax=10**7)
    return T


def _kmeans_labels(X: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 20) -> np.ndarray:
    """k-means (k-means++ seeding, Lloyd steps) labels ``0..k'-1`` (k' <= k: empty clusters are dropped)."""
    n = len(X)
    if k >= n:
        return np.arange(n)
    centers = [X[rng.integers(n)]]
    d2 = np.sum((X - centers[0]) ** 2, axis=1)
    while len(centers) < k and d2.sum() > 0:
        centers.append(X[rng.choice(n, p=d2 / d2.sum())])
        d2 = np.minimum(d2, np.sum((X - centers[-1]) ** 2, axis=1))
    centers = np.array(centers)
    labels = np.zeros(n, dtype=int)
    for _ in range(n_iter):
        labels = cdist(X, centers, "sqeuclidean").argmin(axis=1)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, X)
        counts = np.bincount(labels, minlength=len(centers))
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
        if np.allclose(moved, centers):
            break
        centers = moved
    return np.unique(labels, return_inverse=True)[1]


def _gw_levels(size: int) -> list[float]:
    """Level sizes of the multilevel search, coarse to fine (the last is ``size``)."""
    sizes, s = [], float(size)
    while s > GW_DIRECT:
        sizes.insert(0, s)
        s /= 2
    sizes.insert(0, s)
    if size > GW_DIRECT and sizes[0] > 2 * GW_COARSEST:
        sizes.insert(0, GW_COARSEST)
    return sizes


def _gw_search(a: np.ndarray, b: np.ndarray, C1: np.ndarray, C2: np.ndarray, *, seed: int = 0,
               n_init: int = GW_INITS) -> np.ndarray:
    """The best coupling found for uniform weights (see the module notes)."""
    import ot

    rng = np.random.default_rng(seed)
    n, m = len(a), len(b)
    p, q = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    # POT's start, the product coupling, first: on isometric sets it already reaches loss 0, the optimum
    const = p @ (C1 ** 2) @ p + q @ (C2 ** 2) @ q
    # moves must gain more than 1e-6 of the product coupling's loss (an upper bound of the optimum's) in g, i.e.
    # lower the loss by more than 2e-6 of it: the last steps of a local search gain less than that
    tol = 1e-6 * max(const - 2 * _gw_gradient(C1, C2, np.outer(p, q))[1], 0.0)
    product = _gw_local(C1, C2, p, q, np.outer(p, q), tol)
    if const - 2 * product[2] <= 1e-12 * const:
        return product[0]
    sizes = _gw_levels(max(n, m))
    kept, prev = [], None
    best = None
    for level, s in enumerate(sizes):
        fine = level == len(sizes) - 1
        if fine:
            la, lb, D1, D2, pa, qb = np.arange(n), np.arange(m), C1, C2, p, q
        else:
            la = _kmeans_labels(a, max(1, round(s * n / max(n, m))), rng)
            lb = _kmeans_labels(b, max(1, round(s * m / max(n, m))), rng)
            pa, qb = np.bincount(la) / n, np.bincount(lb) / m
            Pa = sp.csr_matrix((1.0 / (n * pa[la]), (np.arange(n), la)))  # block means (weights p / pa)
            Qb = sp.csr_matrix((1.0 / (m * qb[lb]), (np.arange(m), lb)))
            D1, D2 = np.asarray(Pa.T @ (Pa.T @ C1).T), np.asarray(Qb.T @ (Qb.T @ C2).T)
        starts = [] if fine else [np.outer(pa, qb)]
        n_random = n_init if prev is None else (max(n_init // 5, 0) if s <= GW_DIRECT else 0)
        starts += [ot.emd(pa, qb, rng.random((len(pa), len(qb))), numItermax=10**7) for _ in range(n_random)]
        if prev is not None:  # the previous level's couplings, spread uniformly in its blocks, summed in these
            pla, plb, ppa, pqb = prev
            A = np.zeros((len(ppa), len(pa)))
            np.add.at(A, (pla, la), 1.0 / (n * ppa[pla]))
            B = np.zeros((len(pqb), len(qb)))
            np.add.at(B, (plb, lb), 1.0 / (m * pqb[plb]))
            starts += [A.T @ Tc @ B for Tc in kept]
        sols = ([product] if fine else []) + [_gw_local(D1, D2, pa, qb, T0, tol) for T0 in starts]
        best = max(sols, key=lambda sol: sol[2])
        n_kicks = round(max(n_init // 2, 0) * min(1.0, (GW_DIRECT / max(len(pa), len(qb))) ** 2))
        for _ in range(n_kicks):
            sol = _gw_local(D1, D2, pa, qb, _gw_perturb(best[0], 0.6, rng), tol)
            sols.append(sol)
            if sol[2] > best[2]:
                best = sol
        kept = []
        for sol in sorted(sols, key=lambda sol: -sol[2]):
            if all(np.abs(sol[0] - T).sum() > 1e-9 for T in kept):
                kept.append(sol[0])
            if len(kept) == GW_KEEP:
                break
        prev = (la, lb, pa, qb)
    return best[0]


_GW_LAST: dict[tuple, np.ndarray] = {}  # the last search's coupling (generation_scores asks for raw and normalised)


def gromov_wasserstein(real, generated, *, max_cells: int | None = 1000, normalize: str | None = "max",
                       seed: int = 0, n_init: int = GW_INITS) -> float:
    """GW discrepancy between the real and generated sets' distance matrices (uniform weights) at the best
    coupling found by a seeded multilevel local search (see the module notes); ``n_init`` sets its effort."""
    import hashlib

    a, b = _pair(real, generated)
    a, b = subsample(a, max_cells, seed), subsample(b, max_cells, seed + 1)
    C1, C2 = _distances(a, normalize), _distances(b, normalize)
    # the best coupling does not depend on the matrices' scales: search scale-free, so that the raw and the
    # max-normalised distance are taken at the same coupling (and the second call reuses the first's search)
    key = (hashlib.blake2b(a.tobytes() + b"|" + b.tobytes()).hexdigest(), a.shape, b.shape, seed, n_init)
    T = _GW_LAST.get(key)
    if T is None:
        S1, S2 = (C / C.max() if C.max() > 0 else C for C in (C1, C2))
        T = _gw_search(a, b, S1, S2, seed=seed, n_init=n_init)
        _GW_LAST.clear()
        _GW_LAST[key] = T
    p, q = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    loss = p @ (C1 ** 2) @ p + q @ (C2 ** 2) @ q - 2 * _gw_gradient(C1, C2, T)[1]
    return max(float(loss), 0.0)


def generation_scores(real, real_labels: Sequence[str], generated, generated_labels: Sequence[str], *,
                      ks: Sequence[int] = KNN_KS, gw_max_cells: int | None = 1000, seed: int = 0) -> dict[str, float]:
    """``knn_acc_k{k}`` for each k, ``gw_distance`` (raw, the paper's scale) and ``gw_distance_normalized``
    (see the module notes), plus the set sizes."""
    scores: dict[str, float] = {f"knn_acc_k{k}": v
                                for k, v in knn_accuracy(real, real_labels, generated, generated_labels, ks).items()}
    for key, normalize in (("gw_distance", None), ("gw_distance_normalized", "max")):
        scores[key] = gromov_wasserstein(real, generated, max_cells=gw_max_cells, normalize=normalize, seed=seed)
    scores["n_real"], scores["n_generated"] = len(real_labels), len(generated_labels)
    return scores


# ---------------------------------------------------------------- perturbation response

def gaussian_fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1) of the rows of ``X``."""
    X = _matrix(X, "cells", 2)
    return X.mean(axis=0), np.atleast_2d(np.cov(X, rowvar=False))


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((S + S.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_from_stats(mu1: np.ndarray, S1: np.ndarray, mu2: np.ndarray, S2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, S1) and N(mu2, S2)."""
    root = _psd_sqrt(S1)
    cross = np.linalg.eigvalsh((root @ S2 @ root + (root @ S2 @ root).T) / 2)
    trace = np.trace(S1) + np.trace(S2) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(np.sum((mu1 - mu2) ** 2) + trace, 0.0))


def frechet_distance(real, generated) -> float:
    """scFID: Fréchet distance between Gaussian fits of the two sets (each needs >= 2 cells)."""
    a, b = _pair(real, generated, 2)
    return frechet_from_stats(*gaussian_fit(a), *gaussian_fit(b))


def rbf_bandwidth(real, generated, *, max_cells: int | None = 2000, seed: int = 0) -> float:
    """Median-heuristic σ of the pooled sample (see the module notes)."""
    a, b = _pair(real, generated)
    distances = pdist(subsample(np.vstack([a, b]), max_cells, seed))
    if distances.size == 0:
        return 1.0
    sigma = float(np.median(distances))
    if sigma == 0:
        positive = distances[distances > 0]
        sigma = float(np.median(positive)) if positive.size else 1.0
    return sigma


def mmd_rbf(real, generated, *, bandwidth: float | None = None, max_cells: int | None = 2000,
            seed: int = 0) -> float:
    """Biased squared MMD with an RBF kernel (σ = ``bandwidth`` or the median heuristic)."""
    a, b = _pair(real, generated)
    a, b = subsample(a, max_cells, seed), subsample(b, max_cells, seed + 1)
    sigma = rbf_bandwidth(a, b, max_cells=None) if bandwidth is None else float(bandwidth)
    if sigma <= 0:
        raise CellDualityError(f"RBF bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2 * sigma**2)
    kxx = np.exp(-gamma * cdist(a, a, "sqeuclidean")).mean()
    kyy = np.exp(-gamma * cdist(b, b, "sqeuclidean")).mean()
    kxy = np.exp(-gamma * cdist(a, b, "sqeuclidean")).mean()
    return float(max(kxx + kyy - 2 * kxy, 0.0))


def wasserstein_per_dim(real, generated) -> float:
    """Mean over dimensions of the 1-D Wasserstein-1 distance between the marginals."""
    a, b = _pair(real, generated)
    return float(np.mean([wasserstein_distance(a[:, d], b[:, d]) for d in range(a.shape[1])]))


def perturbation_scores(real, generated, *, max_cells: int | None = 2000, seed: int = 0) -> dict[str, float]:
    """``scfid``, ``mmd`` (biased MMD², median-heuristic RBF) and ``wasserstein`` of two embedded sets."""
    a, b = _pair(real, generated, 2)
    return {"scfid": frechet_distance(a, b), "mmd": mmd_rbf(a, b, max_cells=max_cells, seed=seed),
            "wasserstein": wasserstein_per_dim(a, b), "n_real": len(a), "n_generated": len(b)}


def perturbation_scores_by_group(real, real_groups: Sequence[str], generated, generated_groups: Sequence[str], *,
                                 max_cells: int | None = 2000, seed: int = 0) -> pd.DataFrame:
    """One row of :func:`perturbation_scores` per group (e.g. drug) present with >= 2 cells on both sides."""
    a, b = _pair(real, generated)
    real_groups, generated_groups = np.asarray(real_groups, dtype=object), np.asarray(generated_groups, dtype=object)
    if len(real_groups) != len(a) or len(generated_groups) != len(b):
        raise CellDualityError("perturbation_scores_by_group: one group per real and per generated cell is needed")
    rows = []
    for group in sorted(set(real_groups) & set(generated_groups), key=str):
        ra, gb = a[real_groups == group], b[generated_groups == group]
        if len(ra) >= 2 and len(gb) >= 2:
            rows.append({"group": group, **perturbation_scores(ra, gb, max_cells=max_cells, seed=seed)})
    return pd.DataFrame(rows, columns=["group", "scfid", "mmd", "wasserstein", "n_real", "n_generated"])
