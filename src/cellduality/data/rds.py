"""Read an R ``.rds`` file (SingleCellExperiment, SummarizedExperiment, Seurat, matrix, data.frame) into AnnData.

Pure Python: ``rdata.parser`` decodes the R serialization (XDR; gzip, bzip2, xz or none) into a tree of R objects
with their attributes, and this module walks the tree itself: rdata's high-level conversion does not know
Bioconductor or Seurat classes. An S4 object's slots are its attributes, so the walk follows the R classes' slots:

- (Ranged/SingleCell)SummarizedExperiment: assays in ``@assays@data@listData`` (SimpleAssays) or in the ``data``
  field of the ``@assays@.xData`` environment (ShallowSimpleListAssays, objects saved before 2020); cells in
  ``@colData`` (DFrame/DataFrame: ``listData``, ``rownames``, ``nrows``); genes in ``@rowRanges`` (names in
  ``@partitioning@NAMES`` of a GRangesList or ``@ranges@NAMES`` of a GRanges, rowData in ``@elementMetadata``),
  else in ``@NAMES`` and ``@elementMetadata``.
- Seurat v3/v4: ``@assays[[assay]]@counts`` / ``@data`` (assay: the chosen one, else ``@active.assay``); v5
  (Assay5): ``@layers`` with the cell and gene names in the ``@cells`` / ``@features`` LogMaps; cells in
  ``@meta.data``.
- A slot holding NULL is the symbol ``\\001NULL\\001`` in files R writes (not R's NULL): :func:`_null` knows both.
- dgCMatrix / dgRMatrix / dgTMatrix (and l/n variants), dgeMatrix, base matrices (column-major), and data.frames
  of genes x cells (numeric columns are the cells, other columns go to ``var``); an .RData file of one object.

R stores genes x cells; the AnnData is cells x genes (CSR when sparse). Only the chosen assay is read, into ``X``
(its name in ``uns["rds_assay"]``, ``<assay>/<layer>`` for Seurat, all names in ``uns["rds_assays"]``; a Seurat
slot also in ``uns["source_layer"]``): other assays are not made layers,
as they would multiply the memory of large dense objects. Factors become Categoricals with their R levels;
list-like columns, reduced dimensions and graphs are skipped. Errors are one-line CellDualityErrors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from cellduality.errors import CellDualityError

ASSAY_ORDER = ("counts", "normcounts", "logcounts", "data")
_RESAVE = "in R, saveRDS() it as a SingleCellExperiment, Seurat object or dgCMatrix"


class _Bad(Exception):
    """A problem found in the object tree; read_rds prefixes the field and file name."""


@dataclass(frozen=True)
class _Choice:
    """Which matrix to read (read_rds's ``assay`` / ``layer``) and the catalog prefix that names them."""

    assay: str | None = None
    layer: str | None = None
    keys: str = ""


def read_rds(path: str | Path, *, field: str, assay: str | None = None, layer: str | None = None,
             keys: str = "") -> ad.AnnData:
    """Cells x genes AnnData from an R .rds holding a SingleCellExperiment / SummarizedExperiment,
    a Seurat object, a dgCMatrix / dense matrix (genes x cells, as R stores them), or a genes x cells data.frame
    (a data.frame of cell metadata is refused).

    ``assay`` names the matrix of an SCE/SE (default: the first of ASSAY_ORDER present) or the assay of a Seurat
    object (default: its active assay, unless that is not RNA while RNA is there: then the caller must choose);
    ``layer`` names a Seurat assay's slot / v5 layer (default: the first of ASSAY_ORDER present). ``keys`` is the
    catalog prefix (``datasets.<name>.``) that error messages put before ``assay`` / ``layer``.
    """
    path = Path(path)
    try:
        import rdata.parser
    except ImportError:
        raise CellDualityError(f"{field}: reading .rds files needs the rdata package: pip install rdata") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = rdata.parser.parse_data(path.read_bytes(), extension=".rds").object
    except OSError as err:
        raise CellDualityError(f"{field}: cannot read {path}: {err.strerror or err}") from None
    except Exception as err:
        why = type(err).__name__ + (f": {str(err)[:80]}" if str(err) else "")
        raise CellDualityError(f"{field}: {path.name} is not a readable R serialization ({why}); {_RESAVE}") from None
    try:
        adata = _convert(_deref(root), _Choice(assay, layer, keys))
    except _Bad as err:
        raise CellDualityError(f"{field}: {path.name} {err}") from None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:  # a slot missing or of another type
        raise CellDualityError(f"{field}: {path.name} holds {_describe(root)} laid out unlike the classes read here "
                               f"({type(err).__name__}: {str(err)[:80]}); {_RESAVE}") from None
    return adata


# --- the raw object tree: rdata.parser.RObject (info.type, value, attributes pairlist, REF indirections) ----------
def _deref(o):
    while o is not None and o.info.type.name == "REF":
        o = o.referenced_object
    return o


def _null(o) -> bool:
    """R NULL, or the symbol ``\\001NULL\\001`` that R's serializer writes for an S4 slot holding NULL."""
    if (o := _deref(o)) is None or o.info.type.name in ("NILVALUE", "NIL"):
        return True
    return o.info.type.name == "SYM" and getattr(_deref(o.value), "value", None) == b"\x01NULL\x01"


def _pairs(o) -> list:
    out, o = [], _deref(o)
    while o is not None and o.info.type.name == "LIST":
        out.append((_deref(o.tag).value.value.decode() if o.tag is not None else None, _deref(o.value[0])))
        o = _deref(o.value[1])
    return out


def _attrs(o) -> dict:
    return dict(_pairs(o.attributes)) if (o := _deref(o)) is not None and o.attributes is not None else {}


def _strs(o) -> list:
    return [None if c.value is None else c.value.decode("latin-1" if c.info.gp & 4 else "utf-8", "replace")
            for c in map(_deref, _deref(o).value)]


def _classes(o) -> list[str]:
    return _strs(c) if (c := _attrs(o).get("class")) is not None else []


def _named(o) -> dict:
    """A named R list as a dict of its (dereferenced) elements."""
    if _null(o) or (o := _deref(o)).info.type.name != "VEC":
        return {}
    keys = _strs(n) if (n := _attrs(o).get("names")) is not None else [str(i) for i in range(len(o.value))]
    return {k: _deref(v) for k, v in zip(keys, o.value)}


def _env_get(env, name: str):
    ev = _deref(env).value  # rdata EnvironmentValue: bindings in the frame pairlist or the hash table's buckets
    buckets = [ev.frame, *([] if _null(ev.hash_table) else _deref(ev.hash_table).value)]
    return next((v for b in buckets for tag, v in _pairs(b) if tag == name), None)


def _describe(o) -> str:
    if not (cls := _classes(o)):
        return f"an R object of type {_deref(o).info.type.name}"
    pkg = _attrs(_attrs(o)["class"]).get("package")
    return f"an object of class {cls[0]}" + (f" (package {_strs(pkg)[0]})" if pkg is not None else "")


# --- columns, frames, matrices ----------------------------------------------------------------------------------
def _column(o):
    """A data.frame column as a numpy / pandas array, or None when it is not a plain vector."""
    kind, cls, v = o.info.type.name, _classes(o), o.value
    if kind == "INT" and "factor" in cls:
        codes = np.ma.filled(v, 0).astype(np.int64) - 1  # NA -> -1
        return pd.Categorical.from_codes(codes, categories=_strs(_attrs(o)["levels"]), ordered="ordered" in cls)
    if kind == "STR":
        return np.array(_strs(o), dtype=object)
    if kind not in ("INT", "LGL", "REAL") or "dim" in _attrs(o):
        return None
    if not np.ma.is_masked(v):
        return np.asarray(v)
    data, mask = np.ma.getdata(v), np.ma.getmaskarray(v)
    if kind == "INT":
        return pd.arrays.IntegerArray(data.astype(np.int32), mask)
    return pd.arrays.BooleanArray(data.astype(bool), mask) if kind == "LGL" else data


def _frame(o) -> tuple[pd.DataFrame, list | None]:
    """(plain columns, row names or None) of a data.frame or an S4 DFrame/DataFrame."""
    if _null(o):
        return pd.DataFrame(), None
    o, a = _deref(o), _attrs(o)
    if o.info.type.name == "S4":
        cols, n, names = a.get("listData"), int(_deref(a["nrows"]).value[0]), a.get("rownames")
        names = None if _null(names) else _strs(names)
    else:  # row.names: character, integer, or the compact c(NA, -n) of automatic row names
        cols, rn = o, _deref(a.get("row.names"))
        if _null(rn):
            names, n = None, len(o.value[0].value) if o.value else 0
        elif rn.info.type.name == "STR":
            names, n = _strs(rn), len(rn.value)
        elif len(rn.value) == 2 and np.ma.getmaskarray(rn.value)[0]:
            names, n = None, abs(int(rn.value.data[1]))
        else:
            names, n = [str(x) for x in np.ma.getdata(rn.value)], len(rn.value)
    data = {k: c for k, v in _named(cols).items() if (c := _column(v)) is not None and len(c) == n}
    return pd.DataFrame(data, index=pd.RangeIndex(n)), names


def _dimnames(o) -> tuple:
    dn = list(_named(o).values())
    return tuple(None if _null(v) else _strs(v) for v in dn) if len(dn) == 2 else (None, None)


def _shape(o) -> tuple[int, ...] | None:
    dim = (a := _attrs(o)).get("Dim", a.get("dim"))
    return None if dim is None else tuple(int(x) for x in np.ma.getdata(_deref(dim).value))


def _matrix(o) -> tuple:
    """(cells x genes matrix, gene names, cell names) of an R genes x cells matrix."""
    o, a, cls = _deref(o), _attrs(o), _classes(o)
    name, shape = (cls or [o.info.type.name])[0], _shape(o)
    if any(s in name for s in ("Delayed", "HDF5", "TileDB")):
        raise _Bad(f"holds a {name} (DelayedArray / HDF5-backed), which is not supported; in R, realize it "
                   "(e.g. assay(x) <- as(assay(x), 'dgCMatrix')) and saveRDS() the object again")
    kind = name[1:3] if o.info.type.name == "S4" and name.endswith("Matrix") else "base"
    if shape is None or len(shape) != 2 or kind not in ("gC", "gR", "gT", "ge", "base"):
        raise _Bad(f"holds {_describe(o)} as its matrix, which is not supported; {_RESAVE}")
    if kind == "base":
        v = np.ma.filled(o.value.astype(np.float64), np.nan) if np.ma.is_masked(o.value) else np.asarray(o.value)
        v = v.astype(np.float64) if v.dtype == bool else v
        return v.reshape(shape[1], shape[0]), *_dimnames(a.get("dimnames"))  # column-major: rows of v are cells
    vec = lambda s, t: np.ma.getdata(_deref(a[s]).value).astype(t)
    x = vec("x", np.float64) if "x" in a else np.ones(len(_deref(a["i" if kind != "gR" else "j"]).value))
    if kind == "ge":
        m = x.reshape(shape[1], shape[0])
    elif kind == "gT":
        m = sparse.coo_matrix((x, (vec("i", np.int32), vec("j", np.int32))), shape=shape).T.tocsr()
    else:
        fmt = sparse.csc_matrix if kind == "gC" else sparse.csr_matrix
        m = fmt((x, vec("i" if kind == "gC" else "j", np.int32), vec("p", np.int32)), shape=shape).T.tocsr()
    return m, *_dimnames(a.get("Dimnames"))


# --- object layouts -----------------------------------------------------------------------------------------------
def _pick(mats: dict, wanted: str | None, what: str, key: str) -> tuple:
    """(name, matrix, names present) of ``mats``: ``wanted``, else the first of ASSAY_ORDER; ``key`` is the
    catalog key that chooses (``datasets.<name>.assay`` / ``.layer``)."""
    mats = {k: v for k, v in mats.items() if not _null(v) and _shape(v) != (0, 0)}  # Seurat keeps empty slots
    name = wanted if wanted is not None else next((n for n in ASSAY_ORDER if n in mats), None)
    if name not in mats:
        missing = f"no {wanted!r}" if wanted is not None else f"none of {', '.join(ASSAY_ORDER)}"
        hint = " (split Seurat v5 layers need JoinLayers() in R first)" if any("." in k for k in mats) else ""
        raise _Bad(f"has {missing} in its {what}; set {key} to one of: {', '.join(mats) or 'none'}{hint}")
    return name, mats[name], list(mats)


def _seurat_assay(assays: dict, active: str | None, choice: _Choice):
    """The Seurat assay to read: ``choice.assay``, else the active one, unless RNA is there and not active."""
    key = f"{choice.keys}assay"
    if not assays:
        raise _Bad("holds a Seurat object without assays")
    name = choice.assay or (active if active in assays else next(iter(assays)))
    if name not in assays:
        raise _Bad(f"has no Seurat assay {name!r}; set {key} to one of: {', '.join(assays)}")
    if choice.assay is None and len(assays) > 1 and name != "RNA" and "RNA" in assays:
        n = _shape(_attrs(assays[name]).get("counts", _attrs(assays[name]).get("data")))
        size = f" ({n[0]} features)" if n else ""
        raise _Bad(f"is a Seurat object whose active assay is {name}{size}, not RNA; set {key} to one of: "
                   f"{', '.join(assays)} (RNA for gene expression)")
    return name, assays[name]


def _logmap(o, layer: str) -> list | None:
    """Row names of a SeuratObject LogMap (a logical matrix, one column per layer) present in ``layer``."""
    if _null(o) or _shape(o) is None:
        return None
    rows, cols = _dimnames(_attrs(o).get("dimnames"))
    if rows is None or not cols or layer not in cols:
        return rows
    keep = np.ma.filled(_deref(o).value, False).astype(bool).reshape(len(cols), len(rows))[cols.index(layer)]
    return [r for r, k in zip(rows, keep) if k]


def _looks_like_metadata(table: pd.DataFrame, numeric: list) -> bool:
    """A data.frame that is not a genes x cells table: no numeric column, a logical column (doublet / QC flags),
    or fewer than two numeric (cell) columns per descriptive one (a gene table has at most a few annotation
    columns beside hundreds of cells)."""
    other = table.shape[1] - len(numeric)
    logical = any(pd.api.types.is_bool_dtype(table[c]) for c in table)
    return not numeric or logical or len(numeric) < 2 * other


def _convert(o, choice: _Choice) -> ad.AnnData:
    kind, cls, a = o.info.type.name, _classes(o), _attrs(o)
    obs, obs_rows, cells, var, genes, names = pd.DataFrame(), None, None, pd.DataFrame(), None, []
    layer = None
    if kind == "LIST":  # an .RData file
        if len(objs := _pairs(o)) != 1:
            raise _Bad(f"is an .RData file of {len(objs)} objects; saveRDS() the one to read")
        return _convert(objs[0][1], choice)
    if kind == "S4" and "assays" in a and "meta.data" in a:  # Seurat
        active = _strs(a["active.assay"])[0] if "active.assay" in a else None
        assay, sa = _seurat_assay(_named(a["assays"]), active, choice)
        sl = _attrs(sa)
        slots = _named(sl["layers"]) if "layers" in sl else {k: sl[k] for k in ("counts", "data") if k in sl}
        name, mat, names = _pick(slots, choice.layer, f"Seurat assay {assay}", f"{choice.keys}layer")
        names = [f"{assay}/{n}" for n in names]
        obs, obs_rows = _frame(a["meta.data"])
        if "layers" in sl:  # v5 layers carry no dimnames
            cells, genes = _logmap(sl.get("cells"), name), _logmap(sl.get("features"), name)
        layer, name = name, f"{assay}/{name}"
    elif kind == "S4" and "assays" in a and "colData" in a:  # (Ranged/SingleCell)SummarizedExperiment
        if choice.layer is not None:
            raise _Bad(f"is a {cls[0]}, which has assays, not layers; remove {choice.keys}layer and set "
                       f"{choice.keys}assay")
        held = _attrs(a["assays"])
        held = held["data"] if "data" in held else _env_get(held[".xData"], "data") if ".xData" in held else a["assays"]
        name, mat, names = _pick(_named(_attrs(held).get("listData", held)), choice.assay, cls[0],
                                 f"{choice.keys}assay")
        obs, obs_rows = _frame(a["colData"])
        cells = obs_rows
        if not _null(rr := a.get("rowRanges")):
            inner = _attrs(rr).get("partitioning", _attrs(rr).get("ranges"))
            genes = None if _null(nm := _attrs(inner).get("NAMES")) else _strs(nm)
            var = _frame(_attrs(rr).get("elementMetadata"))[0]
        genes = genes or (None if _null(a.get("NAMES")) else _strs(a["NAMES"]))
        var = var if var.shape[1] else _frame(a.get("elementMetadata"))[0]
    elif kind == "VEC" and "data.frame" in cls:  # a genes x cells table
        table, genes = _frame(o)
        cells = [c for c in table if isinstance(table[c].values, np.ndarray) and table[c].dtype.kind in "iuf"]
        if _looks_like_metadata(table, cells):
            shown = ", ".join(map(str, table.columns[:6])) + (", ..." if table.shape[1] > 6 else "")
            raise _Bad(f"holds a data.frame of {table.shape[0]} rows x {table.shape[1]} columns ({shown}) that "
                       "looks like cell metadata, not a genes x cells expression table; point source at the "
                       "expression object, and give the metadata as obs_table (write.csv() it in R)")
        x, name, var = table[cells].to_numpy(np.float64).T.copy(), "data.frame", table.drop(columns=cells)
    elif kind in ("S4", "INT", "REAL", "LGL") and _shape(o) is not None:
        mat, name = o, "matrix"
    else:
        raise _Bad(f"holds {_describe(o)}, which is not supported; {_RESAVE}")
    if name != "data.frame":
        x, mgenes, mcells = _matrix(mat)
        genes, cells = genes or mgenes, cells or mcells or obs_rows
    for what, labels, n in (("cell", cells, x.shape[0]), ("gene", genes, x.shape[1])):
        if labels is not None and len(labels) != n:
            raise _Bad(f"has {len(labels)} {what} names for the {n} {what}s of assay {name}; {_RESAVE}")
    if obs_rows and cells and list(obs_rows) != list(cells):  # align the cell table to the matrix by name
        pos = {c: i for i, c in enumerate(obs_rows)}
        obs = obs.iloc[[pos[c] for c in cells]] if all(c in pos for c in cells) else pd.DataFrame()
    obs = obs if len(obs) == x.shape[0] else pd.DataFrame(index=pd.RangeIndex(x.shape[0]))
    var = var if len(var) == x.shape[1] else pd.DataFrame(index=pd.RangeIndex(x.shape[1]))
    obs.index = pd.Index([str(c) for c in cells] if cells else [str(i) for i in range(x.shape[0])])
    var.index = pd.Index([str(g) for g in genes] if genes else [str(i) for i in range(x.shape[1])])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.uns["rds_assay"], adata.uns["rds_assays"] = name, names or [name]
    if layer is not None:  # the Seurat slot read into X: preprocess's datasets.<name>.layer may name it
        adata.uns["source_layer"] = layer
    return adata
