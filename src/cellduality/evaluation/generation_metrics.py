"""Distribution metrics for generated cells, computed in an embedding space.

Embedding: PCA fit on real cells (default; :class:`PCAEmbedding`) or scGPT when a checkpoint is configured
(:func:`scgpt_embedding`, needs the ``scgpt`` package and a local checkpoint; nothing is downloaded).
Inputs are expression rows (e.g. from ``expression_inversion``); for like-for-like comparisons invert the
real cells' sentences too, so real and generated cells carry the same number of genes.

Conditional generation (Cell2Sentence):
- kNN accuracy, k in (3, 5, 10, 25): a k-nearest-neighbour classifier (Euclidean, uniform vote) fit on real
  cells' embeddings and labels predicts each generated cell; the score is the share predicted as the type
  it was conditioned on. NaN where k exceeds the number of real cells.
- Gromov-Wasserstein distance (POT ``ot.gromov.gromov_wasserstein2``, square loss, uniform weights) between
  the Euclidean distance matrices of the real and the generated set. POT's solver stops at a local optimum,
  so it starts from the product coupling and from ``n_init - 1`` seeded random vertex couplings (``ot.emd``
  of a random cost) and the minimum is kept. ``gw_distance`` uses raw distances (the scale of the paper's
  and Cell2Sentence's tables); ``gw_distance_normalized`` divides each matrix by its maximum (scale-free,
  in [0, 1]). Sets above ``max_cells`` are subsampled (seeded).

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


GW_INITS = 5


def gromov_wasserstein(real, generated, *, max_cells: int | None = 1000, normalize: str | None = "max",
                       seed: int = 0, n_init: int = GW_INITS) -> float:
    """GW discrepancy between the real and generated sets' distance matrices (uniform weights): the best of
    ``n_init`` solver starts (see the module notes)."""
    import ot

    a, b = _pair(real, generated)
    a, b = subsample(a, max_cells, seed), subsample(b, max_cells, seed + 1)
    C1, C2 = _distances(a, normalize), _distances(b, normalize)
    p, q = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    rng = np.random.default_rng(seed)
    starts = [None] + [ot.emd(p, q, rng.random((len(a), len(b)))) for _ in range(max(n_init, 1) - 1)]
    best = min(float(ot.gromov.gromov_wasserstein2(C1, C2, p, q, loss_fun="square_loss", G0=g0)) for g0 in starts)
    return max(best, 0.0)


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
