"""Downloaded bytes -> one h5ad: the *convert* step between download (src/cellduality/data/download.py) and
preprocess (src/cellduality/data/preprocess.py).

A dataset's ``source`` may be whatever a repository publishes: an h5ad (maybe gzipped), a loom file, a CellRanger
HDF5, 10x Matrix Market triples, a dense csv/tsv table, an R ``.rds`` object, or a tar/zip archive holding any of
these (a GEO ``*_RAW.tar`` of sample-prefixed triples or of per-sample archives, an ArrayExpress zip, a packed
local folder). :func:`convert_source` finds the format from the content (a file name that claims another format is
an error), reads the matrix as found (counts, TPM or log values stay as they are; preprocess decides which
they are), joins an optional per-cell table (catalog ``obs_table``: a separate download or a member of the
archive; csv/tsv or an xlsx sheet, values written once per block forward-filled), derives columns (``obs_recode``:
labels that live in sample names or free text), keeps the cells ``obs_filter`` asks for and writes cells x genes
atomically; gene names stay as written (repeats included: preprocess.duplicate_genes decides). Every problem with
the input is one CellDualityError line naming the catalog field to fix. :func:`convert_file` is the rule's entry point: an
h5ad that needs none of this is hard-linked, not rewritten (a 10 GB atlas is neither copied nor loaded).
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import fnmatch
import glob
import gzip
import itertools
import json
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.io import mmread

from cellduality.errors import CellDualityError
from cellduality.io import atomic_path

FORMATS = ("h5ad", "h5ad.gz", "loom", "10x_h5", "10x_mtx", "csv", "rds", "tar", "zip")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CHUNK = 1 << 20  # bytes per copy step when extracting or decompressing
BLOCK_VALUES = 5_000_000  # matrix entries per dense block read from csv/loom (40 MB as float64)
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, KeyError, IndexError, TypeError,
               tarfile.TarError, zipfile.BadZipFile)
_MTX = re.compile(r"^(?P<prefix>.*?)(?P<role>matrix\.mtx|(?:barcodes|features|genes)\.(?:tsv|txt))(?:\.gz)?$")
_EXTENSIONS = re.compile(r"(\.(csv|tsv|txt|mtx|h5ad|h5|hdf5|loom|rds|tar))?(\.(gz|bz2|xz|zip))?$", re.I)
_RDS = re.compile(rb"RD[XAB][23]\n|X\n\0\0\0[\x02\x03]|A\n[23]\n|B\n[\x02\x03]\0\0\0")
_REPEAT = "\x00repeat"  # joins a repeated gene name to its ordinal while samples are concatenated
_TRUNCATED = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


@dataclass(frozen=True)
class ConvertSpec:
    """How to read one dataset's download: the catalog keys of the same names (config/schema.yaml)."""

    format: str = "auto"  # one of "auto" + FORMATS
    member: str | None = None  # fnmatch glob picking the matrix file(s) inside an archive (basename or full path)
    transpose: bool = False  # csv: rows are genes, columns are cells
    obs_member: str | None = None  # fnmatch glob of the per-cell table inside the archive
    obs_id_column: str | None = None  # per-cell table column holding cell ids (None: its first column / index)
    cell_id_template: str = "{id}"  # matrix cell id -> per-cell table id, fields {id} and {sample}
    obs_skip_rows: int = 0  # lines (xlsx rows) before the per-cell table's header
    obs_sheet: str | int | None = None  # xlsx: the sheet (name or 0-based position) holding the per-cell table
    obs_forward_fill: bool | list = False  # columns (True: all) whose empty cells repeat the value above
    assay: str | None = None  # .rds: the SCE/SE assay, or the Seurat assay
    layer: str | None = None  # .rds Seurat objects: the assay's slot / layer (counts, data)
    obs_filter: dict = field(default_factory=dict)  # {obs column: [values to keep]}, last
    obs_recode: dict = field(default_factory=dict)  # {column: {from, values: {regex: value}, default}}, after the join

    @classmethod
    def from_entry(cls, entry: dict) -> ConvertSpec:
        """From a catalog entry (its ``obs_table`` mapping gives the obs_* fields); missing or null keys keep
        their defaults."""
        table = entry.get("obs_table") or {}
        flat = {**entry, "obs_member": table.get("member"), "obs_id_column": table.get("id_column"),
                "cell_id_template": table.get("cell_id_template"), "obs_skip_rows": table.get("skip_rows"),
                "obs_sheet": table.get("sheet"), "obs_forward_fill": table.get("forward_fill")}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in names and v is not None})


@dataclass
class _Job:
    """State of one conversion: where to extract, what was read, which catalog fields to blame."""

    dataset: str
    spec: ConvertSpec
    work: Path
    members: list = field(default_factory=list)
    obs_path: Path | None = None
    counter: itertools.count = field(default_factory=itertools.count)

    def at(self, name: str) -> str:
        return f"datasets.{self.dataset}.{name}"

    def scratch(self, name: str) -> Path:
        return self.work / f"{next(self.counter)}_{posixpath.basename(name) or 'file'}"


# ---------------------------------------------------------------------------------------------- detection


def _open(path: Path):
    """Binary file object of ``path``, decompressing gzip/bzip2/xz as its first bytes say."""
    with open(path, "rb") as fh:
        raw = fh.read(6)
    if raw.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if raw.startswith(b"BZh") and raw[3:4].isdigit():
        return bz2.open(path, "rb")
    if raw.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _sniff(path: Path) -> tuple[str, str]:
    """``(kind, detail)``: a FORMATS entry, or what else arrived (html, empty, truncated, hdf5, ...)."""
    if path.is_dir():
        return ("10x_mtx", "") if _mtx_groups(_list(path, "dir")) else ("folder", "")
    with open(path, "rb") as fh:
        raw = fh.read(8)
    if raw.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip", ""
    try:
        with _open(path) as fh:
            head = fh.read(4096)
    except (*_TRUNCATED, OSError) as err:
        return "truncated", str(err)
    if head.startswith(HDF5_MAGIC):
        return ("h5ad.gz", "") if not raw.startswith(HDF5_MAGIC) else _hdf5_kind(path)
    if head[257:262] == b"ustar":
        return "tar", ""
    if _RDS.match(head):
        return "rds", ""
    text = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if not text:
        return "empty", ""
    if b"\0" in head:
        return "binary", repr(head[:12])
    if re.match(r"<!doctype html|<html", text, re.I) or "<html" in text[:2000].lower():
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        return "html", " ".join(title[1].split())[:100] if title else ""
    if text.startswith(("<", "{", "[")):
        return "markup", repr(text[:40])
    if text.startswith("%%MatrixMarket"):
        return "mtx", ""
    return "csv", ""


def _hdf5_kind(path: Path) -> tuple[str, str]:
    try:
        with h5py.File(path, "r") as f:
            keys = set(f)
            if {"X", "obs"} <= keys:
                return "h5ad", ""
            if {"matrix", "row_attrs", "col_attrs"} <= keys:
                return "loom", ""
            if any(isinstance(f[k], h5py.Group) and {"barcodes", "data", "indptr"} <= set(f[k]) for k in keys):
                return "10x_h5", ""
            return "hdf5", ", ".join(sorted(keys)[:10]) or "none"
    except OSError as err:
        return "truncated", f"HDF5: {err}"


def _not_data(kind: str, detail: str, where: str, label: str) -> CellDualityError:
    expected = f"set format: one of {', '.join(FORMATS)}"
    what = {
        "empty": "is empty; the download failed, fetch it again",
        "truncated": f"is truncated or corrupt ({detail}); the download stopped early, fetch it again",
        "html": f"is an HTML page (<title>{detail}</title>), not a data file; point source at the file itself "
        f"(GEO: the supplementary file URL, .../suppl/...) and {expected}",
        "markup": f"is an XML/JSON document (starting {detail}), not a data file; point source at the file "
        f"itself and {expected}",
        "mtx": "is a lone Matrix Market matrix; point source at a folder or tar/zip holding it together with its "
        "barcodes and features/genes files (format: 10x_mtx)",
        "hdf5": f"is an HDF5 file of unknown layout (top-level keys: {detail}); {expected}",
        "folder": "is a folder without 10x matrix.mtx/barcodes.tsv/features.tsv files",
    }.get(kind, f"is not a recognized data file (starts with {detail}); {expected}")
    return CellDualityError(f"{where}: the download {label} {what}")


_NAMED = {".h5ad": ("h5ad", "h5ad.gz"), ".h5ad.gz": ("h5ad.gz",), ".loom": ("loom",), ".h5": ("10x_h5", "hdf5"),
          ".rds": ("rds",), ".tar": ("tar",), ".tar.gz": ("tar",), ".tgz": ("tar",), ".zip": ("zip",)}


def _check_name(name: str | None, kind: str, path: Path, job: _Job) -> None:
    """A source named like one format (``x.h5ad``) whose bytes are another (a text table, an error page)."""
    base = posixpath.basename(str(name or "").split("?")[0]).lower()
    ending = next((e for e in sorted(_NAMED, key=len, reverse=True) if base.endswith(e)), None)
    if ending is None or kind in _NAMED[ending] or kind in ("empty", "truncated", "html"):
        return  # no claim, a match, or a failure _not_data explains better
    what = {"csv": "a text table", "markup": "an XML/JSON document", "mtx": "a Matrix Market matrix"}.get(kind, kind)
    raise CellDualityError(f"{job.at('source')}: {base} is named {ending} but {path} holds {what}, not a "
                           f"{_NAMED[ending][0]} file; fetch the right file, or fix source (and format)")


def detect_format(path: str | Path, *, field: str = "source") -> str:
    """The FORMATS entry of ``path``, by content (magic bytes / first bytes / HDF5 keys), never by file name.

    Anything else (an HTML page, empty or truncated file, unknown bytes) raises one CellDualityError line
    starting with ``field``."""
    path = Path(path)
    if not path.exists():
        raise CellDualityError(f"{field}: {path} not found; run the download step first")
    kind, detail = _sniff(path)
    if kind not in FORMATS:
        raise _not_data(kind, detail, field, str(path))
    return kind


# ---------------------------------------------------------------------------------------------- readers


@contextlib.contextmanager
def _reading(where: str, label: str, kind: str):
    """Turn a library error while reading ``label`` into one CellDualityError line."""
    try:
        yield
    except READ_ERRORS as err:
        hint = ("the file is truncated or corrupt, download it again" if isinstance(err, _TRUNCATED)
                else "check that the file and the declared format match")
        text = str(err).strip()[:300] or "no details"
        raise CellDualityError(f"{where}: cannot read {label} as {kind} ({type(err).__name__}: {text}); {hint}") \
            from None


def _frame(attrs: dict, names: np.ndarray, unique: bool = True) -> pd.DataFrame:
    """A table indexed by ``names``: made unique for cells; genes keep repeats (preprocess.duplicate_genes decides)."""
    index = pd.Index(np.asarray(names).astype(str))
    return pd.DataFrame(attrs, index=ad.utils.make_index_unique(index) if unique else index)


def _read_h5ad_gz(path: Path, job: _Job, label: str) -> ad.AnnData:
    inner = job.scratch("decompressed.h5")
    with _open(path) as src, open(inner, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    kind = _hdf5_kind(inner)[0]
    adata = READERS[kind if kind in ("loom", "10x_h5") else "h5ad"](inner, job, label)
    inner.unlink()
    return adata


def _h5_columns(group: h5py.Group, n: int) -> dict:
    return {k: (ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]) for k, ds in group.items()
            if isinstance(ds, h5py.Dataset) and ds.shape == (n,)}


def _read_loom(path: Path, job: _Job, label: str) -> ad.AnnData:
    with h5py.File(path, "r") as f:
        matrix = f["matrix"]
        n_genes, n_cells = matrix.shape
        step = max(1, BLOCK_VALUES // max(n_cells, 1))
        X = sparse.vstack([sparse.csr_matrix(matrix[i:i + step]) for i in range(0, n_genes, step)]).T.tocsr()
        rows, cols = _h5_columns(f["row_attrs"], n_genes), _h5_columns(f["col_attrs"], n_cells)
    frames = []
    for attrs, keys, where in ((cols, ("CellID", "obs_names"), "col_attrs"),
                               (rows, ("Gene", "gene_names", "var_names"), "row_attrs")):
        key = next((k for k in keys if k in attrs), None)
        if key is None:
            raise KeyError(f"no {where} {'/'.join(keys)} (has: {', '.join(attrs) or 'none'})")
        frames.append(_frame(attrs, attrs.pop(key), unique=where == "col_attrs"))
    return ad.AnnData(X, obs=frames[0], var=frames[1])


def _read_10x_h5(path: Path, job: _Job, label: str) -> ad.AnnData:
    import scanpy as sc

    try:
        return sc.read_10x_h5(path)
    except Exception:  # scanpy wants every optional dataset of its layout; read the CSC arrays directly
        pass
    with h5py.File(path, "r") as f:
        g = next((f[k] for k in f if isinstance(f[k], h5py.Group) and "barcodes" in f[k]), None)
        if g is None:
            raise KeyError("no group holding barcodes/data/indices/indptr/shape")
        feats = g["features"] if "features" in g else g
        n_genes, n_cells = g["shape"][:2]
        X = sparse.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_genes, n_cells))
        ids = feats["id" if "id" in feats else "genes"].asstr()[()]
        names = feats["name" if "name" in feats else "gene_names"].asstr()[()]
        return ad.AnnData(X.T.tocsr(), obs=_frame({}, g["barcodes"].asstr()[()]),
                          var=_frame({"gene_ids": ids}, names, unique=False))


def _read_rds(path: Path, job: _Job, label: str) -> ad.AnnData:
    try:
        from cellduality.data.rds import read_rds
    except ImportError:
        raise CellDualityError(f"{job.at('source')}: {label} is an R .rds object, but this installation has no "
                               "rds reader (cellduality.data.rds); convert it to h5ad in R first") from None
    return read_rds(path, field=job.at("source"), assay=job.spec.assay, layer=job.spec.layer,
                    keys=f"datasets.{job.dataset}.")


def _separator(path: Path) -> tuple[str, int]:
    """The delimiter of a text table (tab, comma or whitespace, from its first lines) and its header's field count."""
    with _open(path) as fh:
        lines = [fh.readline(1 << 20).decode("utf-8", "replace").strip() for _ in range(3)]
    sep = "\t" if any("\t" in s for s in lines) else "," if any("," in s for s in lines) else r"\s+"
    return sep, len(re.split(sep, lines[0]))


def _read_csv(path: Path, job: _Job, label: str) -> ad.AnnData:
    """Dense table, header row and id column, read in blocks into CSR (never held dense as a whole)."""
    sep, n_columns = _separator(path)
    blocks, ids, columns = [], [], None
    with _open(path) as fh:
        for chunk in pd.read_csv(fh, sep=sep, index_col=0, chunksize=max(1, BLOCK_VALUES // n_columns)):
            if chunk.empty:
                continue
            values = chunk
            if not all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in chunk.dtypes):
                values = chunk.apply(pd.to_numeric, errors="coerce")
            bad = np.argwhere(values.isna().to_numpy())
            if len(bad):
                r, c = bad[0]
                value = "an empty/NA value" if pd.isna(chunk.iat[r, c]) else f"{chunk.iat[r, c]!r}"
                raise CellDualityError(
                    f"{job.at('source')}: {label} line {len(ids) + r + 2} (row '{chunk.index[r]}', column "
                    f"'{chunk.columns[c]}') holds {value}, not a number; a csv source must be a numeric table with "
                    "a header row and an id column")
            blocks.append(sparse.csr_matrix(values.to_numpy()))
            ids += [str(i) for i in chunk.index]
            columns = [str(c) for c in chunk.columns] if columns is None else columns
    if not blocks:
        raise ValueError("no data rows below the header")
    with _open(path) as fh:  # the header as written: pandas renames a repeated name (HES4 -> HES4.1)
        header = next(csv.reader([fh.readline().decode("utf-8", "replace").rstrip("\r\n")],
                                 delimiter=sep if sep != r"\s+" else " ", skipinitialspace=sep == r"\s+"))
    header = [h for h in header if h != ""] if sep == r"\s+" else header
    if len(header) >= len(columns):
        columns = [str(c).strip() for c in header[len(header) - len(columns):]]
    X, obs, var = sparse.vstack(blocks, format="csr"), ids, columns
    if job.spec.transpose:
        X, obs, var = X.T.tocsr(), var, obs
    return ad.AnnData(X, obs=_frame({}, obs), var=_frame({}, var, unique=False))


def _read_mtx(files: dict[str, Path]) -> ad.AnnData:
    with _open(files["matrix"]) as fh:
        X = sparse.csr_matrix(mmread(fh).T)
    with _open(files["barcodes"]) as fh:
        cells = pd.read_csv(fh, sep="\t", header=None, dtype=str)[0].to_numpy()
    with _open(files["features"]) as fh:
        feats = pd.read_csv(fh, sep="\t", header=None, dtype=str)
    if X.shape != (len(cells), len(feats)):
        raise ValueError(f"matrix.mtx is {X.shape[1]} genes x {X.shape[0]} cells, but there are {len(feats)} "
                         f"features and {len(cells)} barcodes")
    if feats.shape[1] > 2 and (gex := (feats[2] == "Gene Expression").to_numpy()).any():  # as scanpy's 10x readers
        X, feats = X[:, gex], feats[gex]
    var = {"gene_ids": feats[0].to_numpy()} | ({"feature_types": feats[2].to_numpy()} if feats.shape[1] > 2 else {})
    return ad.AnnData(X, obs=_frame({}, cells), var=_frame(var, feats[min(1, feats.shape[1] - 1)], unique=False))


READERS = {"h5ad": lambda path, job, label: ad.read_h5ad(path), "h5ad.gz": _read_h5ad_gz, "loom": _read_loom,
           "10x_h5": _read_10x_h5, "csv": _read_csv, "rds": _read_rds}


# ---------------------------------------------------------------------------------------------- archives


def _list(path: Path, kind: str) -> list[str]:
    if kind == "dir":
        names = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
    elif kind == "tar":
        with tarfile.open(path, "r:*") as tf:
            names = [m.name for m in tf if m.isfile()]
    else:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    return [n for n in names if not posixpath.basename(n).startswith(".") and not n.startswith("__MACOSX/")]


def _extract(path: Path, kind: str, names: set[str], job: _Job) -> dict[str, Path]:
    """``{member: local file}``, streamed member by member (a folder's files are used in place)."""
    if kind == "dir":
        return {n: path / n for n in names}
    files = {}
    with contextlib.ExitStack() as stack:
        if kind == "tar":
            tf = stack.enter_context(tarfile.open(path, "r:*"))
            members = ((m.name, lambda m=m: tf.extractfile(m)) for m in tf if m.isfile() and m.name in names)
        else:
            zf = stack.enter_context(zipfile.ZipFile(path))
            members = ((n, lambda n=n: zf.open(n)) for n in zf.namelist() if n in names)
        for name, opener in members:
            files[name] = job.scratch(name)
            with opener() as src, open(files[name], "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
    return files


def _mtx_groups(names: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    """10x triples by (folder, file name prefix): ``{key: {"matrix"|"barcodes"|"features": member}}``."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for name in names:
        folder, base = posixpath.split(name)
        if m := _MTX.match(base):
            role = m["role"].split(".")[0].replace("genes", "features")
            groups.setdefault((folder, m["prefix"]), {})[role] = name
    return groups


def _one_kind(names: list[str]) -> bool:
    """Several files of one kind (every name with the same extensions, e.g. per-sample ``GSM*.tar.gz`` or
    ``GSM*_counts.txt.gz`` of a GEO series): read as samples of one dataset."""
    endings = {_EXTENSIONS.search(posixpath.basename(n))[0].lower() for n in names}
    return len(endings) == 1 and endings != {""}


def _distinct_folders(folders: list[str]) -> dict[str, str]:
    """Each folder's part that tells it from the others: ``a/outs/filtered_feature_bc_matrix`` and
    ``b/outs/filtered_feature_bc_matrix`` -> ``a`` and ``b`` (path parts shared by all dropped from both ends)."""
    split = {f: f.split("/") if f else [] for f in folders}
    if len(split) < 2:
        return {f: "" for f in folders}
    head = len(os.path.commonprefix(list(split.values())))
    tail = len(os.path.commonprefix([p[head:][::-1] for p in split.values()]))
    return {f: "/".join(p[head:len(p) - tail]) for f, p in split.items()}


def _match(names: list[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(posixpath.basename(n), pattern)]


def _read_container(path: Path, kind: str, job: _Job, label: str, top: bool) -> list[tuple[str, ad.AnnData]]:
    """Parts ``[(sample, adata)]`` of a tar, zip or folder: 10x triples grouped by prefix, other files by format."""
    spec = job.spec
    with _reading(job.at("source"), label, kind):
        names = _list(path, kind)
    listed = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    obs_name = None
    if top and spec.obs_member:
        hits = _match(names, spec.obs_member)
        if len(hits) != 1:
            raise CellDualityError(f"{job.at('obs_table.member')}: '{spec.obs_member}' matches {len(hits)} files of {label}"
                                   f" (one needed); members: {listed or 'none'}")
        obs_name = hits[0]
        names.remove(obs_name)
    if top and spec.member:
        chosen = _match(names, spec.member)
        if not chosen:
            raise CellDualityError(f"{job.at('member')}: '{spec.member}' matches no file of {label}; members: "
                                   f"{listed or 'none'}")
    else:
        chosen = [n for n in names if _MTX.match(posixpath.basename(n))] or names
        if len(chosen) != 1 and not _mtx_groups(chosen) and not _one_kind(chosen):
            raise CellDualityError(f"{job.at('member')}: {label} holds {len(names)} files of different kinds "
                                   f"({listed or 'none'}); set member: a glob (fnmatch, basename or full path) "
                                   "picking the matrix file(s)")
    groups = {key: g for key, g in _mtx_groups(names).items() if set(g.values()) & set(chosen)}
    singles = [n for n in chosen if not _MTX.match(posixpath.basename(n))]
    wanted = {n for g in groups.values() for n in g.values()} | set(singles) | ({obs_name} if obs_name else set())
    with _reading(job.at("source"), label, kind):
        files = _extract(path, kind, wanted, job)
    if obs_name:
        job.obs_path = files[obs_name]
    parts = []
    folders = _distinct_folders([folder for folder, _ in groups])
    for (folder, prefix), group in groups.items():
        sample = "/".join(p for p in (folders[folder], prefix.rstrip("_-. ")) if p) or posixpath.basename(folder)
        missing = {"matrix", "barcodes", "features"} - set(group)
        if missing:
            raise CellDualityError(f"{job.at('member')}: {label} has {', '.join(group.values())} but no "
                                   f"{'/'.join(sorted(missing))} file for sample '{sample}'")
        with _reading(job.at("source"), f"{label}:{group['matrix']}", "10x_mtx"):
            parts.append((sample, _read_mtx({role: files[n] for role, n in group.items()})))
        job.members += sorted(group.values()) if top else []
    for name in singles:
        sub_label = f"{label}:{name}"
        sub, detail = _sniff(files[name])
        if sub not in FORMATS:
            raise _not_data(sub, detail, job.at("member" if top and spec.member else "source"), sub_label)
        stem = _EXTENSIONS.sub("", posixpath.basename(name))
        try:
            got = _read(files[name], sub, job, sub_label, top=False)
        except CellDualityError as err:
            if not (top and len(singles) > 1 and not spec.member):
                raise
            raise CellDualityError(f"{err}; {label} was read as {len(singles)} samples (every member, as member is "
                                   "not set): set member to the matrix files, and obs_table.member to a cell "
                                   "table among them") from None
        parts += [(stem if len(got) == 1 else f"{stem}/{s}", a) for s, a in got]
        job.members += [name] if top else []
    return parts


def _read(path: Path, kind: str, job: _Job, label: str, top: bool = True) -> list[tuple[str, ad.AnnData]]:
    if kind in ("tar", "zip") or path.is_dir():
        return _read_container(path, "dir" if path.is_dir() else kind, job, label, top)
    with _reading(job.at("source"), label, kind):
        return [("", READERS[kind](path, job, label))]


# ---------------------------------------------------------------------------------------------- obs


def _combine(parts: list[tuple[str, ad.AnnData]]) -> tuple[ad.AnnData, pd.DataFrame]:
    """One AnnData (outer join on genes, missing = 0) and per-cell ``id``/``sample`` (the join keys)."""
    samples, seen = [], set()
    for i, (sample, _) in enumerate(parts):
        name = sample or f"sample{i + 1}"
        name = f"{name}_{i + 1}" if name in seen else name
        samples.append(name if len(parts) > 1 else sample)
        seen.add(name)
    for _, adata in parts:
        adata.obs_names, adata.var_names = adata.obs_names.astype(str), adata.var_names.astype(str)
    keys = pd.DataFrame({"id": np.concatenate([a.obs_names.to_numpy() for _, a in parts]),
                         "sample": np.repeat(samples, [a.n_obs for _, a in parts])})
    if len(parts) == 1:
        return parts[0][1], keys
    for sample, (_, adata) in zip(samples, parts):
        adata.obs_names = [f"{sample}:{c}" for c in adata.obs_names]
        adata.obs["sample"] = sample
        # the k-th repeat of a gene name joins the k-th repeat of the other samples; preprocess then applies
        # preprocess.duplicate_genes to the repeats as written
        adata.var_names = [f"{g}{_REPEAT}{k}" if k else g for g, k in
                           zip(adata.var_names, adata.var.groupby(adata.var_names, sort=False).cumcount())]
    combined = ad.concat([a for _, a in parts], join="outer", fill_value=0, merge="first")
    combined.var_names = [g.split(_REPEAT)[0] for g in combined.var_names]
    return combined, keys


def _read_obs_table(path: Path, job: _Job, where: str, label: str) -> pd.DataFrame:
    skip, sheet = job.spec.obs_skip_rows, job.spec.obs_sheet
    with _reading(job.at(where), label, "obs table (csv/tsv/xlsx)"):
        if _is_xlsx(path):
            table = _read_sheet(path, sheet, skip, job, label)
        else:
            if sheet is not None:
                raise CellDualityError(f"{job.at('obs_table.sheet')}: {label} is a text table, not an xlsx "
                                       "workbook; remove sheet")
            with _open(path) as fh:
                table = pd.read_csv(fh, sep=_separator(path)[0], dtype=str, skiprows=skip)
    table.columns = [str(c).strip() for c in table.columns]
    table = _forward_fill(table, job.spec.obs_forward_fill, job, label)
    column = job.spec.obs_id_column
    if column and "{" in column:  # a template over several columns, e.g. "{Plate#}_{Well position}"
        try:
            table.index = pd.Index([column.format(**row) for row in table.fillna("").to_dict("records")])
        except (KeyError, IndexError, ValueError) as err:
            raise CellDualityError(f"{job.at('obs_table.id_column')}: '{column}' names a column {label} does not "
                                   f"have ({err}); columns: {', '.join(map(str, table.columns[:20]))}") from None
    elif column:
        if column not in table.columns:
            raise CellDualityError(f"{job.at('obs_table.id_column')}: {label} has no column '{column}'; columns: "
                                   f"{', '.join(map(str, table.columns[:20]))}")
        table = table.set_index(column)
    elif isinstance(table.index, pd.RangeIndex):  # no implicit index (header as long as the rows): first column
        table = table.set_index(table.columns[0])
    table.index = table.index.astype(str)
    duplicated = table.index[table.index.duplicated()]
    if len(duplicated):
        blank = "empty parts in its ids suggest values written once per block: set obs_table.forward_fill to " \
            "those columns; " if re.search(r"^[_\W]|[_\W]$|[_\W]{2}", duplicated[0]) else ""
        raise CellDualityError(f"{job.at('obs_table.id_column')}: {label} lists cell id '{duplicated[0]}' more than "
                               f"once ({len(duplicated)} repeats); {blank}set obs_table.id_column to a column (or "
                               "template of columns) with unique cell ids")
    return table


def _read_sheet(path: Path, sheet, skip: int, job: _Job, label: str) -> pd.DataFrame:
    """``sheet`` (a name or 0-based position; None: the first) of an xlsx workbook, as text."""
    import openpyxl

    names = openpyxl.load_workbook(path, read_only=True).sheetnames
    if sheet is not None and sheet not in names and not (isinstance(sheet, int) and 0 <= sheet < len(names)):
        raise CellDualityError(f"{job.at('obs_table.sheet')}: {label} has no sheet {sheet!r}; sheets: "
                               f"{', '.join(names)}")
    return pd.read_excel(path, sheet_name=0 if sheet is None else sheet, dtype=str, skiprows=skip, engine="openpyxl")


def _forward_fill(table: pd.DataFrame, columns, job: _Job, label: str) -> pd.DataFrame:
    """``obs_table.forward_fill``: empty cells of these columns (True: of all) take the value above them, for
    sheets that write a plate's or sample's value once at the top of its block."""
    if not columns:
        return table
    names = list(table.columns) if columns is True else [str(c) for c in columns]
    if missing := [c for c in names if c not in table.columns]:
        raise CellDualityError(f"{job.at('obs_table.forward_fill')}: {label} has no column "
                               f"{', '.join(map(repr, missing))}; columns: {', '.join(map(str, table.columns[:20]))}")
    table = table.copy()
    table[names] = table[names].replace(r"^\s*$", np.nan, regex=True).ffill()
    return table


def _is_xlsx(path: Path) -> bool:
    """An Excel workbook (a zip holding xl/workbook.xml), e.g. a GEO cell-info sheet."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return "xl/workbook.xml" in archive.namelist()


def _join_obs(adata: ad.AnnData, keys: pd.DataFrame, table: pd.DataFrame, job: _Job, label: str) -> int:
    """Add the table's columns to the cells it lists; return how many cells it does not list."""
    template = job.spec.cell_id_template
    try:
        wanted = pd.Index([template.format(id=i, sample=s) for i, s in zip(keys["id"], keys["sample"])])
    except (KeyError, IndexError, ValueError) as err:
        raise CellDualityError(f"{job.at('obs_table.cell_id_template')}: '{template}' is not a valid template ({err!r}); use "
                               "the fields {id} and {sample}") from None
    found = wanted.isin(table.index)
    if not found.any():
        raise CellDualityError(
            f"{job.at('obs_table.cell_id_template')}: no cell matches a row of {label}: matrix cells map to "
            f"{', '.join(wanted[:3])} ({template}), the table's ids are like {', '.join(table.index[:3])}; set "
            "obs_table.cell_id_template / obs_table.id_column so they agree")
    joined = table.reindex(wanted)
    for column in map(str, joined.columns):  # a column the matrix already has keeps its value where the table is silent
        values = joined[column].to_numpy(dtype=object)
        adata.obs[column] = np.where(found, values, adata.obs[column].to_numpy(dtype=object)) \
            if column in adata.obs else values
    return int((~found).sum())


def _obs_recode(adata: ad.AnnData, samples: pd.Series, job: _Job) -> None:
    """``obs_recode``: each target column gets, per cell, the value of the first regex of ``values`` found in
    its ``from`` value (``sample``: the archive member it came from), else ``default``."""
    for target, rule in job.spec.obs_recode.items():
        where = job.at(f"obs_recode.{target}")
        if not isinstance(rule, dict):
            raise CellDualityError(f"{where}: expected a mapping with from / values / default")
        source, default = rule.get("from"), rule.get("default")
        if source is None:
            adata.obs[target] = None if default is None else str(default)
            continue
        if source in adata.obs:
            values = adata.obs[source].astype("string").fillna("")
        elif source == "sample":
            values = pd.Series(samples.to_numpy(), index=adata.obs_names, dtype="string")
        else:
            raise CellDualityError(f"{where}.from: no obs column '{source}'; available: "
                                   f"{', '.join(map(str, adata.obs.columns)) or 'none'} (or sample)")
        result = np.full(adata.n_obs, None if default is None else str(default), dtype=object)
        decided = np.zeros(adata.n_obs, dtype=bool)
        for pattern, value in (rule.get("values") or {}).items():
            try:
                hit = values.str.contains(pattern, regex=True).fillna(False).to_numpy(bool) & ~decided
            except re.error as err:
                raise CellDualityError(f"{where}.values: '{pattern}' is not a regular expression ({err})") from None
            result[hit], decided = str(value), decided | hit
        adata.obs[target] = result


def _obs_filter(adata: ad.AnnData, job: _Job) -> ad.AnnData:
    keep = np.ones(adata.n_obs, dtype=bool)
    for column, allowed in job.spec.obs_filter.items():
        if column not in adata.obs:
            available = ", ".join(map(str, adata.obs.columns)) or "none (add an obs table or obs_recode)"
            raise CellDualityError(f"{job.at('obs_filter')}: no obs column '{column}'; available: {available}")
        allowed = allowed if isinstance(allowed, list | tuple | set) else [allowed]
        keep &= adata.obs[column].astype(str).isin([str(v) for v in allowed]).to_numpy()
    if not keep.any():
        seen = {c: list(adata.obs[c].astype(str).unique()[:5]) for c in job.spec.obs_filter}
        raise CellDualityError(f"{job.at('obs_filter')}: keeps no cell; values present: {seen}")
    return adata if keep.all() else adata[keep].copy()


def _tidy(frame: pd.DataFrame) -> None:
    """Object/string columns -> str, or categoricals of str where values are missing, so h5ad writing never trips."""
    frame.columns = frame.columns.astype(str)
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            missing = values.isna()
            frame[column] = pd.Categorical(values.where(missing, values.astype(str))) if missing.any() \
                else values.astype(str).astype(object)


# ---------------------------------------------------------------------------------------------- entry point


def convert_source(source: str | Path, out: str | Path, spec: ConvertSpec, *, dataset: str,
                   obs_table: str | Path | None = None, name: str | None = None) -> dict:
    """Write ``out`` (h5ad, cells x genes) atomically from the downloaded ``source``; return a JSON-able report.
    ``name``: the catalog's source (URL or path), whose file name must not contradict the content."""
    source, out = Path(source), Path(out)
    job = _Job(dataset, spec, out.parent)
    if spec.format not in ("auto", *FORMATS):
        raise CellDualityError(f"{job.at('format')}: unknown format '{spec.format}'; one of auto, {', '.join(FORMATS)}")
    if not isinstance(spec.obs_filter, dict) or not isinstance(spec.obs_recode, dict):
        raise CellDualityError(f"{job.at('obs_filter')}/obs_recode: expected mappings (see config/schema.yaml)")
    if not source.exists():
        raise CellDualityError(f"{job.at('source')}: {source} not found; run the download step first")
    kind, detail = _sniff(source)
    fmt = spec.format if kind == "hdf5" and spec.format in ("h5ad", "loom", "10x_h5") else kind
    _check_name(name, kind, source, job)
    if fmt not in FORMATS:
        raise _not_data(kind, detail, job.at("source"), str(source))
    if spec.assay is not None and fmt not in ("rds", "tar", "zip"):
        raise CellDualityError(f"{job.at('assay')}: chooses a matrix of an R .rds object, but {source} is {fmt}; "
                               "remove assay (an h5ad's matrix is chosen by layer)")
    if spec.format not in ("auto", fmt) and not (spec.format == "10x_mtx" and fmt in ("tar", "zip")):
        raise CellDualityError(f"{job.at('format')}: declared {spec.format}, but the content of {source} is {fmt}; "
                               f"set format: {fmt} (or auto), or point source at the {spec.format} file")
    if (spec.member or spec.obs_member) and fmt not in ("tar", "zip", "10x_mtx"):
        raise CellDualityError(f"{job.at('member')}: member/obs_member select files inside an archive, but {source} "
                               f"is {fmt}; remove them or point source at the tar/zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.convert.*"):  # extractions of a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.convert.") as work:
        job.work = Path(work)
        adata, keys = _combine(_read(source, fmt, job, str(source)))
        table_label = str(obs_table) if obs_table is not None else f"{source}:{spec.obs_member}"
        table_path = Path(obs_table) if obs_table is not None else job.obs_path
        where = "obs_table.source" if obs_table is not None else "obs_table.member"
        without_obs = None
        if table_path is not None:
            if not table_path.is_file():
                raise CellDualityError(f"{job.at(where)}: {table_path} not found")
            without_obs = _join_obs(adata, keys, _read_obs_table(table_path, job, where, table_label), job,
                                    table_label)
    _obs_recode(adata, keys["sample"], job)
    n_read = adata.n_obs
    adata = _obs_filter(adata, job)
    _tidy(adata.obs)
    _tidy(adata.var)
    adata.obs_names_make_unique()
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    return {"dataset": dataset, "source": str(source), "format_detected": kind, "format": fmt,
            "members": job.members, "samples": sorted(set(keys["sample"]) - {""}),
            "obs_table": table_label if table_path is not None else None, "n_cells_read": n_read,
            "cells_without_obs": without_obs, "cells_dropped_by_obs_filter": n_read - adata.n_obs,
            "n_cells": adata.n_obs, "n_genes": adata.n_vars,
            "x": f"{'sparse' if sparse.issparse(adata.X) else 'dense'} {adata.X.dtype}"}


def convert_file(source: str | Path, out: str | Path, report_path: str | Path, entry: dict, *, dataset: str,
                 obs_table: str | Path | None = None) -> dict:
    """The convert rule: :func:`convert_source` per the catalog ``entry``, its report written as JSON beside. A
    plain h5ad with nothing to join, recode or filter becomes ``out`` by a hard link (a copy across file systems)."""
    spec = ConvertSpec.from_entry(entry)
    plain = not (obs_table or spec.obs_member or spec.obs_recode or spec.obs_filter or spec.member)
    if plain and Path(source).is_file() and detect_format(source, field=f"datasets.{dataset}.source") == "h5ad" \
            and spec.format in ("auto", "h5ad"):
        with atomic_path(out) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            with _reading(f"datasets.{dataset}.source", str(source), "h5ad"):
                backed = ad.read_h5ad(tmp, backed="r")  # obs and var only; X stays on disk
                shape = backed.shape
                backed.file.close()
        report = {"dataset": dataset, "source": str(source), "format_detected": "h5ad", "format": "h5ad",
                  "linked": True, "n_cells": shape[0], "n_genes": shape[1]}
    else:
        report = convert_source(source, out, spec, dataset=dataset, obs_table=obs_table, name=entry.get("source"))
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report
