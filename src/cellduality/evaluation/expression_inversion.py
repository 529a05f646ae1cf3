"""Cell sentence -> expression vector: the rank->expression model of Cell2Sentence.

Per dataset, a line ``expression ≈ a·log10(rank) + b`` is fit by least squares on real cells: every
(gene, 1-based rank) pair of a cell's sentence against that cell's log-normalized value of the gene in the
processed h5ad (Cell2Sentence fits log-expression against log10 rank the same way). Any sentence, real or
generated, then becomes a vector over the dataset's genes: the gene at rank r gets ``max(a·log10(r)+b, 0)``,
genes absent from the sentence get 0.

Conventions: tokens are whitespace-separated and matched to gene names case-insensitively; a token that is
no gene of the dataset is ignored and counted; a gene repeated in a sentence keeps its first rank (repeats
are counted); every token, known or not, occupies its position, so ranks are positions in the sentence as
written. ``None`` (a format error) or an empty sentence gives an all-zero row. Everything is vectorized over
the flattened tokens (Arrow split, pandas hash lookup, NumPy), with no per-cell Python loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from cellduality.data.cell_sentences import open_backed
from cellduality.errors import CellDualityError
from cellduality.io import atomic_path

RANK_LOG = "log10"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class _Tokens:
    """Flattened sentence tokens: sentence row, gene index (-1 unknown), 1-based rank, upper-cased text."""

    row: np.ndarray
    gene: np.ndarray
    rank: np.ndarray
    text: np.ndarray
    n_rows: int

    def first_known(self, n_genes: int) -> np.ndarray:
        """Positions of the first occurrence of each known (row, gene) pair, in token order."""
        known = np.flatnonzero(self.gene >= 0)
        keys = self.row[known] * np.int64(n_genes) + self.gene[known]
        _, first = np.unique(keys, return_index=True)
        return known[np.sort(first)]


def _gene_lookup(genes: Sequence[str]) -> pd.Index:
    upper = pd.Index([str(g).upper() for g in genes])
    if upper.has_duplicates:  # keep the first gene of a case-insensitive clash
        upper = pd.Index(np.where(upper.duplicated(), None, upper))
    return upper


def _tokenize(sentences: Sequence[str | None], lookup: pd.Index) -> _Tokens:
    values = [s if isinstance(s, str) else None for s in sentences]
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pa.array(values, pa.large_string())))
    flat = pc.utf8_upper(pc.list_flatten(lists))
    row = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    rank = np.arange(len(flat), dtype=np.int64) - offsets[row] + 1 if len(flat) else np.zeros(0, np.int64)
    text = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=object)
    keep = text != ""  # an empty sentence splits into one empty token
    row, rank, text = row[keep], rank[keep], text[keep]
    gene = lookup.get_indexer(text).astype(np.int64) if len(text) else np.zeros(0, np.int64)
    return _Tokens(row=row, gene=gene, rank=rank, text=text, n_rows=len(values))


@dataclass
class InvertedCells:
    """Expression rows of inverted sentences and what the inversion met on the way."""

    X: sp.csr_matrix  # (n_sentences, n_genes) float32
    genes: tuple[str, ...]
    n_genes_used: np.ndarray  # known, distinct genes per sentence
    n_unknown: np.ndarray  # tokens that are no gene of the dataset, per sentence
    n_repeated: np.ndarray  # repeats of a gene already placed, per sentence
    unknown_top: dict[str, int] = field(default_factory=dict)  # the most frequent unknown tokens

    def summary(self) -> dict[str, float]:
        """Totals for logs and reports."""
        return {"n_sentences": int(self.X.shape[0]), "n_empty": int(np.sum(self.n_genes_used == 0)),
                "mean_genes_used": float(self.n_genes_used.mean()) if len(self.n_genes_used) else 0.0,
                "n_unknown_tokens": int(self.n_unknown.sum()), "n_repeated_tokens": int(self.n_repeated.sum())}


@dataclass(frozen=True)
class RankExpressionFit:
    """``expression = max(slope·log10(rank) + intercept, clip_min)`` over a dataset's genes."""

    dataset: str
    slope: float
    intercept: float
    genes: tuple[str, ...]
    r2: float = float("nan")
    n_cells: int = 0
    n_pairs: int = 0
    clip_min: float = 0.0
    rank_log: str = RANK_LOG

    def expression_at(self, ranks: np.ndarray | Sequence[int]) -> np.ndarray:
        """Predicted expression of genes at 1-based ``ranks``."""
        ranks = np.asarray(ranks, dtype=np.float64)
        if ranks.size and ranks.min() < 1:
            raise CellDualityError("ranks are 1-based; got a rank below 1")
        return np.maximum(self.slope * np.log10(ranks) + self.intercept, self.clip_min)

    def invert(self, sentences: Sequence[str | None]) -> InvertedCells:
        """Expression rows (CSR, float32) for ``sentences`` (``None`` = format error -> zero row)."""
        n_genes = len(self.genes)
        tokens = _tokenize(sentences, _gene_lookup(self.genes))
        keep = tokens.first_known(n_genes)
        values = self.expression_at(tokens.rank[keep]).astype(np.float32)
        X = sp.csr_matrix((values, (tokens.row[keep], tokens.gene[keep])), shape=(tokens.n_rows, n_genes))
        X.eliminate_zeros()
        X.sort_indices()
        unknown = tokens.gene < 0
        n_known = np.bincount(tokens.row[tokens.gene >= 0], minlength=tokens.n_rows)
        used = np.bincount(tokens.row[keep], minlength=tokens.n_rows)
        names, counts = np.unique(tokens.text[unknown].astype(str), return_counts=True)
        order = np.argsort(-counts, kind="stable")[:20]
        return InvertedCells(X=X, genes=self.genes, n_genes_used=used,
                             n_unknown=np.bincount(tokens.row[unknown], minlength=tokens.n_rows),
                             n_repeated=n_known - used,
                             unknown_top={str(names[i]): int(counts[i]) for i in order})

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "dataset": self.dataset, "model": "expression = max(slope * "
                "log10(rank) + intercept, clip_min); genes absent from the sentence = 0", "slope": self.slope,
                "intercept": self.intercept, "clip_min": self.clip_min, "rank_log": self.rank_log, "r2": self.r2,
                "n_cells": self.n_cells, "n_pairs": self.n_pairs, "genes": list(self.genes)}

    @classmethod
    def from_dict(cls, values: dict) -> RankExpressionFit:
        try:
            if values.get("rank_log", RANK_LOG) != RANK_LOG:
                raise CellDualityError(f"rank_log {values['rank_log']!r} is not supported (only {RANK_LOG})")
            return cls(dataset=str(values["dataset"]), slope=float(values["slope"]),
                       intercept=float(values["intercept"]), genes=tuple(map(str, values["genes"])),
                       r2=float(values.get("r2", float("nan"))), n_cells=int(values.get("n_cells", 0)),
                       n_pairs=int(values.get("n_pairs", 0)), clip_min=float(values.get("clip_min", 0.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise CellDualityError(f"not a rank->expression fit ({type(err).__name__}: {err}); rerun the fit") from None

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RankExpressionFit:
        path = Path(path)
        if not path.is_file():
            raise CellDualityError(f"rank->expression fit {path} not found; run the fit step first")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CellDualityError(f"{path} is not valid JSON ({err})") from None
        return cls.from_dict(values)


def fit_rank_expression(sentences: Sequence[str], X, genes: Sequence[str], *, dataset: str = "") -> RankExpressionFit:
    """Least-squares fit of expression against log10(rank) over all (cell, gene in its sentence) pairs.

    ``X`` (dense or sparse, log-normalized) has one row per sentence, in the same order, and columns
    ``genes``.
    """
    if X.shape != (len(sentences), len(genes)):
        raise CellDualityError(f"expression matrix is {X.shape[0]} x {X.shape[1]} but there are {len(sentences)} "
                               f"sentences and {len(genes)} genes")
    tokens = _tokenize(sentences, _gene_lookup(genes))
    keep = tokens.first_known(len(genes))
    rows, cols = tokens.row[keep], tokens.gene[keep]
    y = np.asarray(X.tocsr()[rows, cols] if sp.issparse(X) else np.asarray(X)[rows, cols], dtype=np.float64).ravel()
    x = np.log10(tokens.rank[keep].astype(np.float64))
    if len(x) < 2 or np.ptp(x) == 0:
        raise CellDualityError(f"dataset {dataset or '?'}: cannot fit rank->expression from {len(x)} gene ranks "
                               "(need sentences with at least two known genes)")
    xc, yc = x - x.mean(), y - y.mean()
    slope = float(xc @ yc / (xc @ xc))
    intercept = float(y.mean() - slope * x.mean())
    residual = y - (slope * x + intercept)
    total = float(yc @ yc)
    r2 = float(1 - residual @ residual / total) if total > 0 else float("nan")
    return RankExpressionFit(dataset=dataset, slope=slope, intercept=intercept, genes=tuple(map(str, genes)),
                             r2=r2, n_cells=int(np.unique(rows).size), n_pairs=len(x))


def read_cells(sentence_table: str | Path | pd.DataFrame, *, dataset: str | None = None,
               splits: Sequence[str] | None = None, columns: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of a cell-sentence table (path or frame), optionally one dataset and some splits."""
    if isinstance(sentence_table, pd.DataFrame):
        cells = sentence_table
    else:
        path = Path(sentence_table)
        if not path.is_file():
            raise CellDualityError(f"cell-sentence table {path} not found; run the cell_sentences step first")
        cells = pd.read_parquet(path)
    missing = [c for c in ("cell_id", "split", "sentence", *columns) if c not in cells.columns]
    if missing:
        raise CellDualityError(f"cell-sentence table lacks column(s) {missing}")
    if dataset is not None and "dataset" in cells.columns:
        cells = cells[cells["dataset"] == dataset]
    if splits is not None:
        cells = cells[cells["split"].isin(list(splits))]
    return cells.reset_index(drop=True)


def read_expression(h5ad: str | Path, cell_ids: Sequence[str]) -> tuple[sp.csr_matrix, tuple[str, ...]]:
    """Expression rows (CSR float32) of ``cell_ids``, in that order, and the gene names of a processed h5ad."""
    adata = open_backed(h5ad)
    try:
        positions = pd.Index(adata.obs_names.astype(str)).get_indexer(pd.Index(list(map(str, cell_ids))))
        if (positions < 0).any():
            lost = [c for c, p in zip(cell_ids, positions) if p < 0][:3]
            raise CellDualityError(f"{int((positions < 0).sum())} cell ids (e.g. {lost}) are not in {h5ad}; "
                                   "rebuild the cell-sentence table from this h5ad")
        unique, inverse = np.unique(positions, return_inverse=True)
        X = sp.csr_matrix(adata.X[unique] if len(unique) else adata.X[:0], dtype=np.float32)
        return X[inverse], tuple(map(str, adata.var_names))
    finally:
        if adata.isbacked:
            adata.file.close()


def fit_from_files(h5ad: str | Path, sentence_table: str | Path | pd.DataFrame, *, dataset: str,
                   splits: Sequence[str] | None = ("train",), max_cells: int | None = 5000,
                   seed: int = 0) -> RankExpressionFit:
    """Fit on the real cells (default: the train split, at most ``max_cells``, seeded) of one dataset."""
    cells = read_cells(sentence_table, dataset=dataset, splits=splits)
    if cells.empty:
        raise CellDualityError(f"dataset {dataset}: no cells in splits {list(splits or [])} to fit rank->expression")
    if max_cells is not None and len(cells) > max_cells:
        cells = cells.sample(n=max_cells, random_state=seed).sort_index()
    X, genes = read_expression(h5ad, cells["cell_id"].tolist())
    return fit_rank_expression(cells["sentence"].tolist(), X, genes, dataset=dataset)
