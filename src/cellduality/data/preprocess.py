"""Raw h5ad -> analysis-ready h5ad: expression-kind detection, normalization, gene symbols, QC, labels.

The output holds log-normalized expression in X (CSR, float32, sorted indices), upper-cased unique gene
symbols as var_names (human), and canonical obs columns (cell_type, drug, ..., tissue, donor, ...).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellduality.config import Settings, schema_node, setting
from cellduality.data.pairing import pair_cells
from cellduality.errors import CellDualityError, warn
from cellduality.io import RESOURCES, atomic_path

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


def _sample_values(X, n_rows: int) -> np.ndarray:
    block = X[: min(n_rows, X.shape[0])]
    return block.data if sp.issparse(block) else np.asarray(block).ravel()


def expression_kind(X, n_rows: int) -> str:
    """'scaled' if any value of the first ``n_rows`` rows is negative, 'counts' if all are integers, else
    'lognorm'."""
    values = _sample_values(X, n_rows)
    if values.size and values.min() < 0:
        return "scaled"
    if values.size and np.all(np.mod(values, 1) == 0):
        return "counts"
    return "lognorm"


def _check_finite(X, where: str) -> None:
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
    if ds.get("layer"):
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
    if kind == "lognorm" and values.size and values.max() > UNLOGGED_MAX:
        log.warning("%s: %s looks log-normalized (non-integer) but reaches %.0f; if it holds TPM/RPKM-like unlogged "
                    "values set preprocess.expression: tpm", where, name, float(values.max()))
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


def _resolve_duplicates(X, symbols: np.ndarray, policy: str, where: str):
    """Apply the duplicate-symbol policy; return (X, symbols, n_duplicates)."""
    names = pd.Index(symbols)
    dup_mask = names.duplicated(keep=False)
    n_dup = int(names.duplicated().sum())
    if not n_dup:
        return X, symbols, 0
    if policy == "error":
        examples = ", ".join(sorted(set(names[dup_mask]))[:5])
        raise CellDualityError(
            f"{where}: {n_dup} duplicate gene symbols (e.g. {examples}); set preprocess.duplicate_genes to "
            "make_unique or sum, or deduplicate the input"
        )
    if policy == "make_unique":
        return X, np.asarray(ad.utils.make_index_unique(names), dtype=object), n_dup
    # sum columns that share a symbol, keeping the first occurrence's position
    codes, uniques = pd.factorize(names)
    agg = sp.csr_matrix((np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), codes)),
                        shape=(len(codes), len(uniques)))
    summed = (sp.csr_matrix(X) @ agg).tocsr()
    return summed, np.asarray(uniques, dtype=object), n_dup


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


def _missing_labels(X, obs: pd.DataFrame, ds: dict, policy: str, report: PreprocessReport, where: str,
                    name_: str):
    """``preprocess.missing_labels``: cells with an empty or NaN value in a ``labels`` column are dropped
    (``drop``: counted per column in the QC summary and logged as a warning) or fail the step (``error``)."""
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
    keep = np.flatnonzero(~drop)
    return X[keep], obs.iloc[keep]


def preprocess(adata: ad.AnnData, ds: dict, settings: PreprocessSettings, dataset: str,
               where: str) -> tuple[ad.AnnData, PreprocessReport]:
    """Return the analysis-ready AnnData and a QC report (pure function; no I/O). ``ds`` is the dataset's
    catalog entry (labels, species, layer, ...), ``settings`` the ``preprocess`` section."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CellDualityError(f"{where}: the dataset is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    obs = _obs_columns(adata, ds, where, dataset)
    X, var, matrix, kind = _choose_matrix(adata, ds, where, settings.expression_check_rows, dataset,
                                          settings.expression)
    report = PreprocessReport(dataset, kind, matrix, adata.n_obs, X.shape[1], expression_setting=settings.expression)
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    if X.nnz == 0:
        raise CellDualityError(f"{where}: every value of {matrix} is zero; the file holds no expression")

    symbols = gene_symbols(var, ds, where, dataset, report)
    keep = symbols != ""
    if not keep.all():
        report.dropped["genes_without_symbol"] = int((~keep).sum())
        X, symbols = X[:, keep], symbols[keep]
    X, symbols, report.duplicate_genes = _resolve_duplicates(X, symbols, settings.duplicate_genes, where)

    # QC on counts (or on the values given) before normalization
    X.eliminate_zeros()
    cell_keep = np.diff(X.indptr) >= settings.min_genes
    cell_keep &= np.asarray(X.sum(axis=1)).ravel() > 0
    if settings.max_pct_mito is not None:
        mito = np.array([str(s).upper().startswith("MT-") for s in symbols])
        totals = np.asarray(X.sum(axis=1)).ravel()
        pct = 100 * np.asarray(X[:, mito].sum(axis=1)).ravel() / np.maximum(totals, 1e-12)
        report.dropped["cells_high_mito"] = int((cell_keep & (pct > settings.max_pct_mito)).sum())
        cell_keep &= pct <= settings.max_pct_mito
    report.dropped["cells_qc"] = int((~cell_keep).sum())
    X, obs = X[cell_keep], obs.iloc[np.flatnonzero(cell_keep)]
    gene_keep = np.asarray((X > 0).sum(axis=0)).ravel() >= max(settings.min_cells, 1)
    report.dropped["genes_qc"] = int((~gene_keep).sum())
    X, symbols = X[:, gene_keep], symbols[gene_keep]
    if X.shape[0] == 0:
        raise CellDualityError(f"{where}: no cells pass QC (preprocess.min_genes={settings.min_genes}); lower it")
    if X.shape[1] == 0:
        raise CellDualityError(f"{where}: no genes pass QC (preprocess.min_cells={settings.min_cells}: a gene "
                               f"must be expressed in that many of the {X.shape[0]} cells left); lower it")
    X, obs = _missing_labels(X, obs, ds, settings.missing_labels, report, where, dataset)
    if (ds.get("pairing") or {}).get("control"):
        rows = adata.obs_names.get_indexer(obs.index) if adata.obs_names.is_unique else None
        if rows is None:
            raise CellDualityError(f"{where}: datasets.{dataset}.pairing needs unique cell ids (obs_names)")
        report.pairing = pair_cells(obs, adata.obs.iloc[rows].set_index(obs.index), ds["pairing"], where, dataset)

    if kind == "counts":
        totals = np.asarray(X.sum(axis=1)).ravel()
        X = sp.diags((settings.target_sum / totals).astype(np.float32)) @ X
        X.data = np.log1p(X.data)
    elif kind == "tpm":  # already depth-normalized, not logged
        X = X.copy()
        X.data = np.log1p(X.data)
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sort_indices()
    X.eliminate_zeros()

    obs.index = ad.utils.make_index_unique(pd.Index(obs.index.astype(str)))
    obs.index.name = "cell_id"
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(symbols.astype(str), name="gene")))
    report.n_cells_out, report.n_genes_out = out.n_obs, out.n_vars
    out.uns["cellduality_preprocess"] = json.loads(json.dumps(report.__dict__))
    if "provenance" in adata.uns:
        out.uns["provenance"] = adata.uns["provenance"]
    return out, report


def preprocess_file(src: str | Path, dest: str | Path, report_path: str | Path, ds: dict,
                    settings: PreprocessSettings, dataset: str) -> PreprocessReport:
    """Read ``src``, preprocess, and write ``dest`` (h5ad) and ``report_path`` (JSON) atomically."""
    adata = read_h5ad(src)
    out, report = preprocess(adata, ds, settings, dataset, where=f"{src} (dataset {dataset})")
    with atomic_path(dest) as tmp:
        out.write_h5ad(tmp)
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(report.__dict__, indent=2) + "\n")
    return report
