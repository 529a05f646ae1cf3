"""Raw h5ad -> analysis-ready h5ad: expression-kind detection, normalization, gene symbols, QC, labels.

The output holds log-normalized expression in X (CSR, float32, sorted indices), upper-cased unique gene
symbols as var_names (human), and canonical obs columns (cell_type, drug, ..., tissue, donor, ...).

The matrix is handled a block of rows at a time (:data:`CHUNK_NNZ` stored values): :func:`preprocess_file`
reads the input h5ad's matrix from disk in blocks, once for QC and once to normalize and write the output block by
block, so its memory follows the cell count (obs), not the matrix; :func:`preprocess` runs the same steps on an
in-memory AnnData. Every step is per cell or per gene, so the result does not depend on the block size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellduality.config import Settings, schema_node, setting
from cellduality.data.pairing import pair_cells
from cellduality.errors import CellDualityError, warn
from cellduality.io import RESOURCES, atomic_path

try:
    from anndata.io import read_elem
except ImportError:  # anndata < 0.11
    from anndata.experimental import read_elem

log = logging.getLogger("cellduality.preprocess")

SPLIT_GROUP = "split_group"  # obs column that keeps related rows in one split
ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")


@dataclass(frozen=True)
class PreprocessSettings(Settings):
    """Config ``preprocess.*``: normalization and QC (meanings and defaults in config/schema.yaml)."""

    SECTION: ClassVar[str] = "preprocess"
    target_sum: float = setting("preprocess.target_sum")
    min_genes: int = setting("preprocess.min_genes")
    min_cells: int = setting("preprocess.min_cells")
    max_pct_mito: float | None = setting("preprocess.max_pct_mito")
    duplicate_genes: str = setting("preprocess.duplicate_genes")
    expression: str = setting("preprocess.expression")
    missing_labels: str = setting("preprocess.missing_labels")
    expression_check_rows: int = setting("preprocess.expression_check_rows")

    def __post_init__(self) -> None:
        for name in ("duplicate_genes", "expression", "missing_labels"):  # a typo would fall through to a branch
            choices = schema_node(f"preprocess.{name}")["enum"]
            if getattr(self, name) not in choices:
                raise CellDualityError(f"preprocess.{name} must be one of {', '.join(choices)}; "
                                       f"got {getattr(self, name)!r}")


@dataclass
class PreprocessReport:
    dataset: str
    input_kind: str  # counts | lognorm | tpm (as used; how it was decided: expression_setting)
    matrix: str  # X | raw | layer:<name>
    n_cells_in: int
    n_genes_in: int
    n_cells_out: int = 0
    n_genes_out: int = 0
    dropped: dict = field(default_factory=dict)
    duplicate_genes: int = 0
    expression_setting: str = "auto"  # preprocess.expression
    pairing: dict = field(default_factory=dict)  # counts of data.pairing when the catalog entry pairs cells
    gene_map: dict = field(default_factory=dict)  # datasets.<name>.gene_map and how many genes it mapped


def looks_like_ensembl(names) -> bool:
    """Whether most gene names are Ensembl ids (then a symbol column or a gene map is needed)."""
    names = pd.Series(names, dtype="string")
    return bool(len(names)) and float(names.str.match(ENSEMBL.pattern).mean()) > 0.5


def read_h5ad(path: str | Path) -> ad.AnnData:
    path = Path(path)
    if not path.is_file():
        raise CellDualityError(f"input file {path} not found; run the download step or fix the dataset source")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # anndata/h5py raise many types for corrupt files
        raise CellDualityError(f"{path} is not a readable h5ad file ({type(err).__name__}: {err})") from None


CHUNK_NNZ = 8_000_000  # stored values per block of rows (about 64 MB of values and as much of indices at a time)


def _csr_rows(cls, data, indices, indptr: np.ndarray, start: int, stop: int, n_cols: int):
    """Rows ``start:stop`` of a CSR matrix given by its arrays (numpy, or h5py datasets: only those rows are
    read), with the stored dtypes: built as anndata builds a whole matrix (arrays assigned, indices not
    downcast), so each later scipy step treats a block as it treated the whole matrix."""
    lo, hi = indptr[start], indptr[stop]
    block = cls((stop - start, n_cols), dtype=data.dtype)
    block.data, block.indices, block.indptr = data[lo:hi], indices[lo:hi], indptr[start:stop + 1] - lo
    return block


class _DiskMatrix:
    """A matrix of an open h5ad file, left on disk: a CSR group or a dense dataset. ``X[a:b]`` reads rows a..b-1
    (scipy CSR or ndarray, stored dtypes), the way :func:`_sample_values` and :func:`_block` slice in-memory data."""

    def __init__(self, elem: h5py.Group | h5py.Dataset, chunk_nnz: int):
        self.elem, self.chunk_nnz = elem, chunk_nnz
        self.csr = isinstance(elem, h5py.Group)
        self.shape = tuple(int(n) for n in (elem.attrs["shape"] if self.csr else elem.shape))
        self._indptr: np.ndarray | None = None
        self._scan: tuple[int, int] | None = None

    @property
    def indptr(self) -> np.ndarray:
        if self._indptr is None:
            self._indptr = self.elem["indptr"][:]
        return self._indptr

    def __getitem__(self, rows: slice):
        start, stop, _ = rows.indices(self.shape[0])
        stop = max(start, stop)
        if not self.csr:
            return self.elem[start:stop]
        return _csr_rows(sp.csr_matrix, self.elem["data"], self.elem["indices"], self.indptr, start, stop,
                         self.shape[1])

    def scan(self) -> tuple[int, int]:
        """(NaN/infinite values, non-zero values) of the stored values, read a block at a time (the non-zeros are
        counted for a dense matrix only: a CSR matrix's stored values are :attr:`nnz`)."""
        if self._scan is None:
            bad = nonzero = 0
            if self.csr:
                data = self.elem["data"]
                for lo in range(0, data.shape[0], self.chunk_nnz):
                    bad += int(np.count_nonzero(~np.isfinite(data[lo:lo + self.chunk_nnz])))
            else:
                for start, stop in _row_blocks(self, self.chunk_nnz):
                    values = self.elem[start:stop]
                    bad += int(np.count_nonzero(~np.isfinite(values)))
                    nonzero += int(np.count_nonzero(values))
            self._scan = (bad, nonzero)
        return self._scan

    @property
    def nnz(self) -> int:
        """Values a float32 CSR copy would store: the stored values (CSR), the non-zeros (dense)."""
        return int(self.indptr[-1]) if self.csr else self.scan()[1]


def _disk_matrix(elem, chunk_nnz: int):
    """A CSR group or dense dataset stays on disk (:class:`_DiskMatrix`); anything else (CSC) is read whole, as
    anndata reads it."""
    if isinstance(elem, h5py.Dataset) and elem.ndim == 2 or \
            isinstance(elem, h5py.Group) and elem.attrs.get("encoding-type") == "csr_matrix":
        return _DiskMatrix(elem, chunk_nnz)
    return read_elem(elem)


class _DiskElements(Mapping):
    """A group of an h5ad file read an element at a time (``layers``: matrices left on disk; ``uns``: values)."""

    def __init__(self, group: h5py.Group | None, read):
        self._group, self._read, self._cache = group, read, {}

    def __getitem__(self, key: str):
        if key not in self:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = self._read(self._group[key])
        return self._cache[key]

    def __contains__(self, key) -> bool:
        return self._group is not None and isinstance(key, str) and key in self._group

    def __iter__(self):
        return iter(self._group.keys() if self._group is not None else ())

    def __len__(self) -> int:
        return len(self._group) if self._group is not None else 0


class _H5adSource:
    """The parts of an open h5ad file that :func:`preprocess` reads, shaped like an AnnData (obs, var, uns,
    layers, raw, X) but with the matrices left on disk: obs and var are read, the rest on use."""

    def __init__(self, f: h5py.File, chunk_nnz: int):
        self.obs, self.var = read_elem(f["obs"]), read_elem(f["var"])
        self.n_obs, self.n_vars = len(self.obs), len(self.var)
        self.obs_names = self.obs.index
        self.uns = _DiskElements(f.get("uns"), read_elem)
        self.layers = _DiskElements(f.get("layers"), lambda elem: _disk_matrix(elem, chunk_nnz))
        self._f, self._chunk_nnz, self._X, self._raw = f, chunk_nnz, None, None

    @property
    def X(self):
        if self._X is None and "X" in self._f:
            self._X = _disk_matrix(self._f["X"], self._chunk_nnz)
        return self._X

    @property
    def raw(self):
        if self._raw is None and "raw" in self._f:
            group = self._f["raw"]
            self._raw = SimpleNamespace(X=_disk_matrix(group["X"], self._chunk_nnz), var=read_elem(group["var"]))
        return self._raw


@contextlib.contextmanager
def _open_h5ad(path: str | Path, chunk_nnz: int) -> Iterator[_H5adSource | ad.AnnData]:
    """The h5ad at ``path`` with its matrices left on disk; a file in a layout older than anndata 0.7's (obs
    and var not dataframe groups) is read whole (:func:`read_h5ad`)."""
    path = Path(path)
    if not path.is_file():
        raise CellDualityError(f"input file {path} not found; run the download step or fix the dataset source")
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # h5py raises many types for corrupt files
        raise CellDualityError(f"{path} is not a readable h5ad file ({type(err).__name__}: {err})") from None
    with f:
        if not all(isinstance(f.get(key), h5py.Group) and f[key].attrs.get("encoding-type") == "dataframe"
                   for key in ("obs", "var")):
            yield read_h5ad(path)
            return
        try:
            source = _H5adSource(f, chunk_nnz)
        except Exception as err:  # anndata/h5py raise many types for corrupt files
            raise CellDualityError(f"{path} is not a readable h5ad file ({type(err).__name__}: {err})") from None
        yield source


def _by_rows(X):
    """``X`` ready to be read a block of rows at a time: a sparse matrix in another format becomes CSR (as the
    whole-matrix conversion made it); CSR, dense and on-disk matrices are read as they are."""
    if isinstance(X, _DiskMatrix):
        return X
    if sp.issparse(X):
        return X if X.format == "csr" else X.tocsr()
    return X if isinstance(X, np.ndarray) else np.asarray(X)


def _row_blocks(X, chunk_nnz: int) -> list[tuple[int, int]]:
    """Consecutive row ranges of ``X`` holding about ``chunk_nnz`` stored values each (at least one row)."""
    n = X.shape[0]
    if sp.issparse(X) or isinstance(X, _DiskMatrix) and X.csr:
        indptr = np.asarray(X.indptr, dtype=np.int64)
        bounds = [0]
        while bounds[-1] < n:
            start = bounds[-1]
            stop = int(np.searchsorted(indptr, indptr[start] + chunk_nnz, side="right")) - 1
            bounds.append(min(n, max(stop, start + 1)))
    else:
        bounds = [*range(0, n, max(1, chunk_nnz // max(X.shape[1], 1))), n]
    return list(zip(bounds[:-1], bounds[1:]))


def _block(X, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of ``X`` (see :func:`_by_rows`) as float32 CSR, converted as the whole matrix was."""
    B = _csr_rows(type(X), X.data, X.indices, X.indptr, start, stop, X.shape[1]) if sp.issparse(X) else X[start:stop]
    return sp.csr_matrix(B, dtype=np.float32) if not sp.issparse(B) else B.tocsr().astype(np.float32)


def _stored(X) -> int:
    """Values the float32 CSR copy of ``X`` stores: the stored values (sparse), the non-zeros (dense)."""
    if isinstance(X, _DiskMatrix) or sp.issparse(X):
        return int(X.nnz)
    return int(np.count_nonzero(X))


def _sample_values(X, n_rows: int) -> np.ndarray:
    block = X[: min(n_rows, X.shape[0])]
    return block.data if sp.issparse(block) else np.asarray(block).ravel()


def expression_kind(X, n_rows: int) -> str:
    """'scaled' if any value of the first ``n_rows`` rows is negative, 'counts' if all are integers, 'tpm' if
    some value exceeds UNLOGGED_MAX (no log-normalized value does: TPM, RPKM, CPM), else 'lognorm'."""
    values = _sample_values(X, n_rows)
    if values.size and values.min() < 0:
        return "scaled"
    if values.size and np.all(np.mod(values, 1) == 0):
        return "counts"
    return "tpm" if values.size and values.max() > UNLOGGED_MAX else "lognorm"


def _check_finite(X, where: str) -> None:
    if isinstance(X, _DiskMatrix):
        bad = X.scan()[0]
    else:
        values = X.data if sp.issparse(X) else np.asarray(X)
        bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise CellDualityError(f"{where} contains {bad} NaN/infinite values; fix or drop them before running")


UNLOGGED_MAX = 50.0  # a log1p-normalized value above this is implausible: warn that the data may be unlogged


def _declared(X, kind: str, name: str, where: str, n_rows: int) -> str:
    """The internal kind for a declared ``preprocess.expression`` (checked against the values)."""
    values = _sample_values(X, n_rows)
    if kind in ("counts", "log1p", "tpm") and values.size and values.min() < 0:
        raise CellDualityError(f"{where}: preprocess.expression is {kind} but {name} has negative values (scaled "
                               "data?); set preprocess.expression: scaled (uses .raw) or auto")
    return {"counts": "counts", "log1p": "lognorm", "tpm": "tpm"}[kind]


def _choose_matrix(adata: ad.AnnData, ds: dict, where: str, n_rows: int, name_: str,
                   declared: str) -> tuple[object, pd.Index, str, str]:
    """Pick the matrix to use and return (X, var table, description, kind); ``declared`` is
    ``preprocess.expression`` (auto: detected from the values, and logged)."""
    if ds.get("layer") and ds["layer"] == adata.uns.get("source_layer"):  # taken at conversion (an .rds slot)
        X, var, name = adata.X, adata.var, f"layer:{ds['layer']}"
    elif ds.get("layer"):
        layer = ds["layer"]
        if layer not in adata.layers:
            raise CellDualityError(
                f"{where}: layer '{layer}' (datasets.{name_}.layer) not found; available layers: "
                f"{', '.join(adata.layers.keys()) or 'none'}"
            )
        X, var, name = adata.layers[layer], adata.var, f"layer:{layer}"
    else:
        X, var, name = adata.X, adata.var, "X"
    if X is None or 0 in X.shape:
        raise CellDualityError(f"{where}: expression matrix {name} is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    _check_finite(X, f"{where}: {name}")
    if declared in ("counts", "log1p", "tpm"):
        return X, var, name, _declared(X, declared, name, where, n_rows)
    kind = "scaled" if declared == "scaled" else expression_kind(X, n_rows)
    if kind == "scaled":
        if name != "X" or adata.raw is None:
            raise CellDualityError(
                f"{where}: {name} looks scaled (negative values) and there is no .raw; set datasets.{name_}.layer "
                "to a layer holding counts or log-normalized values"
            )
        X, var, name = adata.raw.X, adata.raw.var, "raw"
        _check_finite(X, f"{where}: raw.X")
        kind = expression_kind(X, n_rows)
        if kind == "scaled":
            raise CellDualityError(f"{where}: raw.X also has negative values; provide counts or log-normalized data")
    values = _sample_values(X, n_rows)
    if kind == "tpm":
        log.info("%s: %s is non-integer and reaches %.0f, beyond any log-normalized value: read as TPM/RPKM-like "
                 "(log1p without depth normalization; preprocess.expression: log1p overrides)", where, name,
                 float(values.max()))
    log.info("%s: expression detected as %s in %s (preprocess.expression: auto)", where, kind, name)
    return X, var, name, kind


# builtin ``datasets.<name>.gene_map`` names -> shipped tables (resources/orthologs/README.md)
GENE_MAPS = {"mouse_to_human": RESOURCES / "orthologs" / "mouse_to_human.tsv.gz"}
MIN_MAPPED = 0.5  # warn when a gene map gives a symbol to fewer than this share of the genes


@dataclass(frozen=True)
class GeneMap:
    """A loaded ``gene_map``: ``mapping`` (name -> symbol, unique names) and, for an ortholog table, the
    species of its symbols (``target``) and a case-insensitive fallback (``folded``: CD3E finds Cd3e's ortholog)."""

    mapping: pd.Series
    target: str | None = None
    folded: pd.Series | None = None


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@lru_cache(maxsize=8)
def _read_gene_map(path: str, _stamp: tuple) -> GeneMap | str:
    """The gene map in ``path`` (``_stamp``: size and mtime, so an edited file is read again), or what is wrong
    with it. A header row whose third column is ``orthology`` marks an ortholog table (the shipped
    resources/orthologs/mouse_to_human.tsv.gz): its one2one rows are used, plus the pair with the same symbol where
    Ensembl lists several partners (Gapdh - GAPDH beside predicted genes such as Gm10358 - GAPDH); any other
    table is two columns, gene name and symbol, the first row kept for a repeated name."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, comment="#", keep_default_na=False,
                            na_filter=False, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        return "is empty"
    except Exception as err:  # pandas, gzip and the codecs raise many types for a malformed file
        return f"is not a readable tab-separated table ({_one_line(err)})"
    if table.shape[1] < 2 or table.empty:
        return f"needs two tab-separated columns (gene name, symbol); found {table.shape[1]} column(s)"
    table = table.apply(lambda column: column.str.strip())
    head = [str(v).lower() for v in table.iloc[0]]
    if table.shape[1] >= 3 and head[2] == "orthology":
        pairs = table.iloc[1:, :3].set_axis(["source", "symbol", "orthology"], axis=1)
        pairs = pairs[(pairs.source != "") & (pairs.symbol != "")]
        keep = (pairs.orthology == "one2one") | (pairs.source.str.upper() == pairs.symbol.str.upper())
        pairs = pairs[keep]
        pairs = pairs[~pairs.source.duplicated(keep=False) & ~pairs.symbol.duplicated(keep=False)]  # stays 1:1
        if pairs.empty:
            return "has an orthology column but no one2one rows"
        mapping = pairs.set_index("source")["symbol"]
        folded = mapping.copy()
        folded.index = folded.index.str.upper()
        folded = folded[~folded.index.duplicated(keep=False)]
        return GeneMap(mapping, head[1].removesuffix("_symbol") or None, folded)
    pairs = table.iloc[:, :2].set_axis(["source", "symbol"], axis=1)
    pairs = pairs[(pairs.source != "") & (pairs.symbol != "")]
    mapping = pairs.set_index("source")["symbol"]
    return GeneMap(mapping[~mapping.index.duplicated()])


def load_gene_map(value: str, where: str, name_: str = "<name>") -> GeneMap:
    """``datasets.<name>.gene_map``: a builtin name (:data:`GENE_MAPS`) or the path of a TSV (may be gzipped)."""
    field_ = f"datasets.{name_}.gene_map"
    path = GENE_MAPS.get(str(value), Path(str(value)))
    if not path.is_file():
        if str(value) in GENE_MAPS:
            raise CellDualityError(f"{where}: {field_}: the builtin table {path} is missing; reinstall cellduality")
        if path.suffix or "/" in str(value) or "\\" in str(value):
            raise CellDualityError(f"{where}: {field_}: file {path} not found")
        raise CellDualityError(f"{where}: {field_}: {value!r} is neither a builtin gene map "
                               f"({', '.join(GENE_MAPS)}) nor an existing file")
    stat = path.stat()
    loaded = _read_gene_map(str(path.resolve()), (stat.st_size, stat.st_mtime_ns))
    if isinstance(loaded, str):
        raise CellDualityError(f"{where}: {field_}: {path} {loaded}")
    return loaded


def gene_symbols(var: pd.DataFrame, ds: dict, where: str, name_: str = "<name>",
                 report: PreprocessReport | None = None) -> np.ndarray:
    """One symbol per gene ("" where there is none): the ``gene_symbol_key`` column or var_names, through
    ``gene_map`` when set. Human symbols, and the symbols an ortholog map gives (mouse_to_human: human), are
    upper-cased; mouse symbols keep their case. With a gene map, ``report`` gets the mapping counts (``gene_map``)
    and the genes it leaves without a symbol (``dropped.genes_without_ortholog`` for an ortholog table, else
    ``dropped.genes_not_in_gene_map``; ``dropped.genes_without_symbol`` counts them again with any gene that had no
    name), and fewer than :data:`MIN_MAPPED` of the genes mapped is a warning."""
    key, gene_map = ds.get("gene_symbol_key"), ds.get("gene_map")
    species = ds.get("species", "human")
    if key:
        if key not in var.columns:
            raise CellDualityError(
                f"{where}: gene_symbol_key '{key}' is not a var column; available: {', '.join(var.columns) or 'none'}"
            )
        symbols = var[key].astype("string")
    else:
        symbols = pd.Series(var.index, dtype="string")
    if gene_map:
        table = load_gene_map(gene_map, where, name_)
        names = symbols.fillna("").str.strip()
        if table.target and looks_like_ensembl(names):
            raise CellDualityError(
                f"{where}: datasets.{name_}.gene_map {gene_map} maps gene symbols but the "
                f"{'gene_symbol_key column' if key else 'var_names'} are Ensembl ids; set datasets.{name_}."
                "gene_symbol_key to a symbol column"
            )
        symbols = names.map(table.mapping)
        if table.folded is not None:
            missing = symbols.isna()
            symbols[missing] = names[missing].str.upper().map(table.folded)
        species = table.target or species
        n_named, n_mapped = int((names != "").sum()), int(symbols.notna().sum())
        if report is not None:
            report.gene_map = {"gene_map": str(gene_map), "genes_named": n_named, "genes_mapped": n_mapped,
                               "fraction_mapped": round(n_mapped / max(n_named, 1), 4)}
            unmapped = "genes_without_ortholog" if table.target else "genes_not_in_gene_map"
            report.dropped[unmapped] = n_named - n_mapped
        if n_mapped < MIN_MAPPED * n_named:
            examples = ", ".join(names[symbols.isna() & (names != "")].head(3))
            warn(f"{where}: datasets.{name_}.gene_map {gene_map} gives a symbol to only {n_mapped} of {n_named} "
                 f"genes ({n_mapped / n_named:.0%}; unmapped e.g. {examples}); check that the names are what the "
                 "table maps (mouse_to_human: mouse gene symbols such as Cd3e)", log)
    elif looks_like_ensembl(symbols) and not key:
        raise CellDualityError(
            f"{where}: var_names are Ensembl ids; set datasets.{name_}.gene_symbol_key to a symbol column or "
            "gene_map to an id->symbol TSV"
        )
    symbols = symbols.fillna("").str.strip()
    if species == "human":
        symbols = symbols.str.upper()
    return symbols.to_numpy(dtype=object)


def _duplicates(symbols: np.ndarray, policy: str, where: str):
    """Apply the duplicate-symbol policy; return (agg, symbols, n_duplicates): ``agg`` (genes x unique symbols)
    sums the columns that share a symbol (``sum``; None otherwise)."""
    names = pd.Index(symbols)
    dup_mask = names.duplicated(keep=False)
    n_dup = int(names.duplicated().sum())
    if not n_dup:
        return None, symbols, 0
    if policy == "error":
        examples = ", ".join(sorted(set(names[dup_mask]))[:5])
        raise CellDualityError(
            f"{where}: {n_dup} duplicate gene symbols (e.g. {examples}); set preprocess.duplicate_genes to "
            "make_unique or sum, or deduplicate the input"
        )
    if policy == "make_unique":
        return None, np.asarray(ad.utils.make_index_unique(names), dtype=object), n_dup
    # sum columns that share a symbol, keeping the first occurrence's position
    codes, uniques = pd.factorize(names)
    agg = sp.csr_matrix((np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), codes)),
                        shape=(len(codes), len(uniques)))
    return agg, np.asarray(uniques, dtype=object), n_dup


def _obs_columns(adata: ad.AnnData, ds: dict, where: str, name_: str = "<name>") -> pd.DataFrame:
    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    for group in ("labels", "metadata"):
        for canonical, column in ds.get(group, {}).items():
            if column not in adata.obs.columns:
                raise CellDualityError(
                    f"{where}: datasets.{name_}.{group}.{canonical} names obs column '{column}', which does not exist; "
                    f"available: {', '.join(map(str, adata.obs.columns)) or 'none'}"
                )
            values = adata.obs[column]
            obs[canonical] = values.astype("string").to_numpy()
    for canonical, value in ds.get("constants", {}).items():
        if canonical not in obs:
            obs[canonical] = str(value)
    from cellduality.data.splits import SOURCE_CELL, SOURCE_DATASET

    for column in (SOURCE_DATASET, SOURCE_CELL):  # a derived cell's identity (cellduality.data.splits), kept as is
        if column in adata.obs.columns:
            obs[column] = adata.obs[column].astype("string").to_numpy()
    split_by = ds.get("split_by")
    if split_by:
        if split_by not in adata.obs.columns:
            raise CellDualityError(f"{where}: datasets.{name_}.split_by names obs column '{split_by}', which does not "
                                   f"exist; available: {', '.join(map(str, adata.obs.columns)) or 'none'}")
        obs[SPLIT_GROUP] = adata.obs[split_by].astype("string").to_numpy()
    return obs


def _missing(values: pd.Series) -> np.ndarray:
    text = values.astype("string")
    return (text.isna() | (text.str.strip() == "") | text.str.lower().isin(["nan", "none", "<na>"])).to_numpy(bool)


def _missing_labels(obs: pd.DataFrame, ds: dict, policy: str, report: PreprocessReport, where: str,
                    name_: str) -> np.ndarray:
    """``preprocess.missing_labels``: cells with an empty or NaN value in a ``labels`` column are dropped
    (``drop``: counted per column in the QC summary and logged as a warning) or fail the step (``error``).
    Returns the positions of the cells kept."""
    drop = np.zeros(len(obs), dtype=bool)
    for canonical in ds.get("labels", {}):
        missing = _missing(obs[canonical])
        if not missing.any():
            continue
        n, column = int(missing.sum()), ds["labels"][canonical]
        if policy == "error":
            raise CellDualityError(f"{where}: {n} of {len(obs)} cells have no value in obs column '{column}' "
                                   f"(datasets.{name_}.labels.{canonical}); fill them, or set "
                                   "preprocess.missing_labels: drop")
        report.dropped[f"cells_missing_{canonical}"] = n
        warn(f"{where}: dropping {n} of {len(obs)} cells without a value in obs column '{column}' (labels."
             f"{canonical}); preprocess.missing_labels: error makes this a failure", log)
        drop |= missing
    if drop.all():
        raise CellDualityError(f"{where}: every cell lacks a label in datasets.{name_}.labels; check the obs columns")
    return np.flatnonzero(~drop)


@dataclass
class _Plan:
    """What the checks and the QC pass decided (:func:`_plan`); :func:`_output_blocks` applies it a block of rows
    at a time."""

    X: object  # the chosen matrix (see _by_rows)
    kind: str  # counts | lognorm | tpm
    blocks: list[tuple[int, int]]  # row ranges read together
    symbol_keep: np.ndarray | None  # genes with a symbol (None: every gene)
    agg: sp.csr_matrix | None  # genes x unique symbols: sums duplicates (duplicate_genes: sum)
    gene_keep: np.ndarray  # of the symbols: expressed in enough QC-passing cells
    rows: np.ndarray  # rows of X in the output, ascending
    nnz_bound: int  # the output stores at most this many values
    obs: pd.DataFrame
    var: pd.DataFrame
    uns: dict
    report: PreprocessReport


def _gene_steps(B: sp.csr_matrix, symbol_keep: np.ndarray | None, agg: sp.csr_matrix | None) -> sp.csr_matrix:
    """The gene steps on a block of rows: genes without a symbol out, duplicate symbols summed, stored zeros out."""
    if symbol_keep is not None:
        B = B[:, symbol_keep]
    if agg is not None:
        B = (sp.csr_matrix(B) @ agg).tocsr()
    B.eliminate_zeros()
    return B


def _plan(adata, ds: dict, settings: PreprocessSettings, dataset: str, where: str, chunk_nnz: int) -> _Plan:
    """Everything but the output matrix: the checks, one pass over the rows a block at a time for QC (per cell:
    genes, total, mitochondrial share; per gene: QC-passing cells expressing it), missing labels, pairing, and
    the output's obs, var and uns. ``adata`` is an AnnData or an h5ad file's :class:`_H5adSource`."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CellDualityError(f"{where}: the dataset is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    obs = _obs_columns(adata, ds, where, dataset)
    X, var, matrix, kind = _choose_matrix(adata, ds, where, settings.expression_check_rows, dataset,
                                          settings.expression)
    report = PreprocessReport(dataset, kind, matrix, adata.n_obs, X.shape[1], expression_setting=settings.expression)
    X = _by_rows(X)
    if _stored(X) == 0:
        raise CellDualityError(f"{where}: every value of {matrix} is zero; the file holds no expression")

    symbols = gene_symbols(var, ds, where, dataset, report)
    keep = symbols != ""
    symbol_keep = None
    if not keep.all():
        report.dropped["genes_without_symbol"] = int((~keep).sum())
        symbol_keep, symbols = keep, symbols[keep]
    agg, symbols, report.duplicate_genes = _duplicates(symbols, settings.duplicate_genes, where)

    # QC on counts (or on the values given) before normalization
    blocks = _row_blocks(X, chunk_nnz)
    mito = None
    if settings.max_pct_mito is not None:
        mito = np.array([str(s).upper().startswith("MT-") for s in symbols])
    cell_keep = np.zeros(X.shape[0], dtype=bool)
    expressed = np.zeros(len(symbols), dtype=np.int64)  # QC-passing cells with a positive value, per gene
    stored = np.zeros(len(symbols), dtype=np.int64)  # their stored values, per gene
    high_mito = 0
    for start, stop in blocks:
        B = _gene_steps(_block(X, start, stop), symbol_keep, agg)
        totals = np.asarray(B.sum(axis=1)).ravel()
        passing = (np.diff(B.indptr) >= settings.min_genes) & (totals > 0)
        if mito is not None:
            pct = 100 * np.asarray(B[:, mito].sum(axis=1)).ravel() / np.maximum(totals, 1e-12)
            high_mito += int((passing & (pct > settings.max_pct_mito)).sum())
            passing &= pct <= settings.max_pct_mito
        cell_keep[start:stop] = passing
        in_passing = np.repeat(passing, np.diff(B.indptr))
        expressed += np.bincount(B.indices[in_passing & (B.data > 0)], minlength=len(symbols))
        stored += np.bincount(B.indices[in_passing], minlength=len(symbols))
    if mito is not None:
        report.dropped["cells_high_mito"] = high_mito
    report.dropped["cells_qc"] = int((~cell_keep).sum())
    gene_keep = expressed >= max(settings.min_cells, 1)
    report.dropped["genes_qc"] = int((~gene_keep).sum())
    rows, symbols = np.flatnonzero(cell_keep), symbols[gene_keep]
    if rows.size == 0:
        raise CellDualityError(f"{where}: no cells pass QC (preprocess.min_genes={settings.min_genes}); lower it")
    if symbols.size == 0:
        raise CellDualityError(f"{where}: no genes pass QC (preprocess.min_cells={settings.min_cells}: a gene "
                               f"must be expressed in that many of the {rows.size} cells left); lower it")
    obs = obs.iloc[rows]
    labelled = _missing_labels(obs, ds, settings.missing_labels, report, where, dataset)
    rows, obs = rows[labelled], obs.iloc[labelled]
    if (ds.get("pairing") or {}).get("control"):
        source_rows = adata.obs_names.get_indexer(obs.index) if adata.obs_names.is_unique else None
        if source_rows is None:
            raise CellDualityError(f"{where}: datasets.{dataset}.pairing needs unique cell ids (obs_names)")
        report.pairing = pair_cells(obs, adata.obs.iloc[source_rows].set_index(obs.index), ds["pairing"], where,
                                    dataset)

    obs.index = ad.utils.make_index_unique(pd.Index(obs.index.astype(str)))
    obs.index.name = "cell_id"
    var = pd.DataFrame(index=pd.Index(symbols.astype(str), name="gene"))
    report.n_cells_out, report.n_genes_out = len(obs), len(var)
    uns = {"cellduality_preprocess": json.loads(json.dumps(report.__dict__))}
    if "provenance" in adata.uns:
        uns["provenance"] = adata.uns["provenance"]
    return _Plan(X, kind, blocks, symbol_keep, agg, gene_keep, rows, int(stored[gene_keep].sum()), obs, var, uns,
                 report)


def _output_blocks(plan: _Plan, target_sum: float) -> Iterator[sp.csr_matrix]:
    """The output rows a block at a time: each block's kept rows and genes, normalized (counts: to
    ``target_sum`` per cell, then log1p; tpm: log1p), as float32 CSR with sorted indices and no stored zeros."""
    for start, stop in plan.blocks:
        lo, hi = np.searchsorted(plan.rows, [start, stop])
        if lo == hi:
            continue
        B = _gene_steps(_block(plan.X, start, stop), plan.symbol_keep, plan.agg)
        B = B[plan.rows[lo:hi] - start][:, plan.gene_keep]
        if plan.kind == "counts":
            totals = np.asarray(B.sum(axis=1)).ravel()
            scale = (target_sum / totals).astype(np.float32)
            if B.has_canonical_format:  # the diagonal product's values, without its unsorted result
                B.data *= np.repeat(scale, np.diff(B.indptr))
            else:  # repeated indices in a row: the product sums them
                B = sp.diags(scale) @ B
            B.data = np.log1p(B.data)
        elif plan.kind == "tpm":  # already depth-normalized, not logged
            B.data = np.log1p(B.data)
        B = sp.csr_matrix(B, dtype=np.float32)
        B.sort_indices()
        B.eliminate_zeros()
        yield B


def preprocess(adata: ad.AnnData, ds: dict, settings: PreprocessSettings, dataset: str,
               where: str, chunk_nnz: int = CHUNK_NNZ) -> tuple[ad.AnnData, PreprocessReport]:
    """Return the analysis-ready AnnData and a QC report (pure function; no I/O). ``ds`` is the dataset's
    catalog entry (labels, species, layer, ...), ``settings`` the ``preprocess`` section. The matrix is
    processed ``chunk_nnz`` stored values at a time (as :func:`preprocess_file` does); the result does not depend
    on it."""
    plan = _plan(adata, ds, settings, dataset, where, chunk_nnz)
    blocks = list(_output_blocks(plan, settings.target_sum))
    X = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    out = ad.AnnData(X=X, obs=plan.obs, var=plan.var)
    out.uns.update(plan.uns)
    return out, plan.report


def _write_output(plan: _Plan, target_sum: float, path: Path) -> None:
    """Write the output h5ad: obs, var and uns through anndata, then X (CSR, the layout anndata writes) appended a
    block of rows at a time. Index dtype: the blocks' (int32 unless the output can exceed its range)."""
    n_rows, n_cols = len(plan.obs), len(plan.var)
    ad.AnnData(obs=plan.obs, var=plan.var, uns=plan.uns).write_h5ad(path)
    wide = max(plan.nnz_bound, n_cols) > np.iinfo(np.int32).max
    chunk = int(min(max(plan.nnz_bound, 1), 1 << 20))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    row = pos = 0
    idx_dtype = np.int64 if wide else np.int32
    with h5py.File(path, "a") as f:
        group = f.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": np.array([n_rows, n_cols], dtype=np.int64)})
        arrays = None
        for block in _output_blocks(plan, target_sum):
            if arrays is None:
                idx_dtype = np.int64 if wide else block.indices.dtype
                arrays = [group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(chunk,), dtype=dtype)
                          for name, dtype in (("data", np.float32), ("indices", idx_dtype))]
            n = block.nnz
            for dataset, values in zip(arrays, (block.data, block.indices)):
                dataset.resize((pos + n,))
                dataset[pos:pos + n] = values[:n]
            indptr[row + 1:row + 1 + block.shape[0]] = pos + block.indptr[1:]
            row, pos = row + block.shape[0], pos + n
        if arrays is None:
            for name, dtype in (("data", np.float32), ("indices", idx_dtype)):
                group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(chunk,), dtype=dtype)
        group.create_dataset("indptr", data=indptr.astype(idx_dtype))


def preprocess_file(src: str | Path, dest: str | Path, report_path: str | Path, ds: dict,
                    settings: PreprocessSettings, dataset: str, chunk_nnz: int = CHUNK_NNZ) -> PreprocessReport:
    """Read ``src``, preprocess, and write ``dest`` (h5ad) and ``report_path`` (JSON) atomically. The matrix stays
    on disk: it is read ``chunk_nnz`` stored values at a time, twice (QC, then normalization into ``dest``), so
    memory grows with the cell count (obs and per-cell flags), not with the matrix (a CSC matrix is read whole)."""
    with _open_h5ad(src, chunk_nnz) as source:
        plan = _plan(source, ds, settings, dataset, f"{src} (dataset {dataset})", chunk_nnz)
        with atomic_path(dest) as tmp:
            _write_output(plan, settings.target_sum, tmp)
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(plan.report.__dict__, indent=2) + "\n")
    return plan.report
