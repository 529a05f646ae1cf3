"""read_rds on genuine R serializations built in Python (R is not needed).

rdata can write data.frames and plain arrays (``rdata.write_rds``, used for those cases) but not S4 objects or
environments, so ``_Writer`` below is a minimal writer of R's XDR serialization (formats 2 and 3): the header
``X\\n`` + versions (+ native encoding in format 3), then one record per SEXP: a flags int (type, object bit,
attribute bit, tag bit, gp levels incl. the S4 bit) followed by the data, then the attribute pairlist. Symbols and
environments go into the reference table and repeat as REFSXP, as R does. Its output is checked by parsing it with
``rdata.parser`` (and rdata's own conversion for non-S4 objects), and by writing objects of which R-made files
ship with rdata's tests (a named matrix, a data.frame with a factor, an S4 object, an environment): the bytes
are identical to R's.

The objects follow the slot layouts of the R classes (SingleCellExperiment/RangedSummarizedExperiment with a
CompressedGRangesList rowRanges, SummarizedExperiment with ShallowSimpleListAssays, Seurat v4 Assay, Seurat v5
Assay5 with LogMaps, dgCMatrix).
"""

from __future__ import annotations

import gzip
import struct
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import rdata
import scipy.sparse as sp

from cellduality.data.rds import read_rds
from cellduality.errors import CellDualityError

FIELD = "datasets.Xin-2016.source"
NIL, SYM, LIST, ENV, CHAR, LGL, INT, REAL, STR, VEC, S4SXP, ALTREP, GLOBALENV, REF = (
    254, 1, 2, 4, 9, 10, 13, 14, 16, 19, 25, 238, 253, 255)
NA_INT = -(2**31)


# --- a minimal R serialization writer -------------------------------------------------------------------------
class R:
    """One R object: SEXP type, value, attributes [(name, R)], S4 bit."""

    def __init__(self, sexptype, value=None, attrs=(), *, s4=False):
        self.type, self.value, self.attrs, self.s4 = sexptype, value, list(attrs), s4


NULL = R(NIL)


def chr_(*xs):
    return R(STR, list(xs))


def int_(xs, attrs=()):
    return R(INT, [NA_INT if x is None else int(x) for x in xs], attrs)


def real(xs, attrs=()):
    return R(REAL, [float(x) for x in xs], attrs)


def lst(items: dict | list):
    names = [("names", chr_(*items))] if isinstance(items, dict) else []
    return R(VEC, list(items.values()) if isinstance(items, dict) else items, names)


def cls_attr(name, package=None):
    return ("class", R(STR, [name], [("package", chr_(package))] if package else []))


def s4(name, package, slots: dict):
    return R(S4SXP, None, [*slots.items(), cls_attr(name, package)], s4=True)


def factor(values, levels):
    return int_([None if v is None else levels.index(v) + 1 for v in values],
                [("levels", chr_(*levels)), ("class", chr_("factor"))])


def data_frame(cols: dict, row_names=None):
    rn = chr_(*row_names) if row_names is not None else int_([None, -len(next(iter(cols.values())).value)])
    return R(VEC, list(cols.values()), [("names", chr_(*cols)), ("class", chr_("data.frame")), ("row.names", rn)])


def dframe(cols: dict, nrows, rownames=None):
    return s4("DFrame", "S4Vectors", {"rownames": chr_(*rownames) if rownames else NULL, "nrows": int_([nrows]),
                                      "elementType": chr_("ANY"), "elementMetadata": NULL, "metadata": lst([]),
                                      "listData": lst(cols)})


def dgc(m, rows=None, cols=None):
    """A Matrix::dgCMatrix of the genes x cells array ``m``."""
    c = sp.csc_matrix(m)
    dimnames = lst([chr_(*rows) if rows else NULL, chr_(*cols) if cols else NULL])
    return s4("dgCMatrix", "Matrix", {"i": int_(c.indices), "p": int_(c.indptr), "Dim": int_(m.shape),
                                      "Dimnames": dimnames, "x": real(c.data), "factors": lst([])})


def dense(m, rows, cols):
    """A base R matrix (column-major) of the genes x cells array ``m``."""
    make = int_ if m.dtype.kind == "i" else real
    return make(m.ravel(order="F"), [("dim", int_(m.shape)), ("dimnames", lst([chr_(*rows), chr_(*cols)]))])


def compact_intseq(n):
    """1:n as R >= 3.5 serializes it (an ALTREP compact_intseq)."""
    return R(ALTREP, (R(LIST, [(None, R(SYM, "compact_intseq")), (None, R(SYM, "base")), (None, int_([INT]))]),
                      real([n, 1, 1])))


def _pjw(name):
    h = 0
    for ch in name.encode():
        h = ((h << 4) + ch) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 24 if h & 0xF0000000 else 0
        h &= 0x0FFFFFFF
    return h


class _Writer:
    def __init__(self, version):
        self.out, self.refs, self.version = bytearray(), {}, version

    def ints(self, *xs):
        self.out += struct.pack(f">{len(xs)}i", *xs)

    def flags(self, t, *, obj=False, attr=False, tag=False, levels=0):
        self.ints(t | obj << 8 | attr << 9 | tag << 10 | levels << 12)

    def ref(self, key) -> bool:
        if key in self.refs:
            self.ints(self.refs[key] << 8 | REF)
            return True
        self.refs[key] = len(self.refs) + 1
        return False

    def char(self, s):
        if s is None:
            return self.ints(CHAR, -1)
        b = s.encode()
        self.flags(CHAR, levels=64 if s.isascii() else 8)  # ASCII_MASK / UTF8_MASK
        self.ints(len(b))
        self.out += b

    def sym(self, name):
        if not self.ref(("sym", name)):
            self.flags(SYM)
            self.char(name)

    def pairlist(self, items):
        for tag, node in items:
            self.flags(LIST, tag=tag is not None)
            if tag is not None:
                self.sym(tag)
            self.item(node)
        self.flags(NIL)

    def item(self, n: R):
        if n.type == NIL:
            return self.flags(NIL)
        if n.type == SYM:
            return self.sym(n.value)
        if n.type == LIST:
            return self.pairlist(n.value)
        if n.type == ENV:  # hashed environment: locked, enclosure, frame, hash table, attributes
            if not self.ref(("env", id(n))):
                self.ints(ENV, 0, GLOBALENV, NIL)
                buckets = [[] for _ in range(29)]  # new.env()'s size; R_Newhashpjw picks the bucket
                for k, v in n.value.items():
                    buckets[_pjw(k) % 29].insert(0, (k, v))
                self.item(lst([R(LIST, b) if b else NULL for b in buckets]))
                self.flags(NIL)
            return None
        if n.type == ALTREP and self.version < 3:  # format 2 has no ALTREP: write the expanded vector
            n_, start, _ = n.value[1].value
            return self.item(int_(range(int(start), int(start + n_))))
        if n.type == ALTREP:
            self.flags(ALTREP)
            self.item(n.value[0])
            self.item(n.value[1])
            return self.flags(NIL)
        obj = any(k == "class" for k, _ in n.attrs)
        self.flags(n.type, obj=obj, attr=bool(n.attrs), levels=16 if n.s4 else 0)
        if n.type in (INT, LGL):
            self.ints(len(n.value), *n.value)
        elif n.type == REAL:
            self.ints(len(n.value))
            self.out += struct.pack(f">{len(n.value)}d", *n.value)
        elif n.type == STR:
            self.ints(len(n.value))
            for s in n.value:
                self.char(s)
        elif n.type == VEC:
            self.ints(len(n.value))
            for e in n.value:
                self.item(e)
        if n.attrs:
            self.pairlist(n.attrs)
        return None


def write_rds(path, obj: R, *, version=3, compress=True):
    w = _Writer(version)
    w.out += b"X\n"
    w.ints(version, 0x040301, 0x030500 if version == 3 else 0x020300)
    if version == 3:
        w.ints(5)
        w.out += b"UTF-8"
    w.item(obj)
    path.write_bytes(gzip.compress(bytes(w.out)) if compress else bytes(w.out))
    return path


# --- test objects -------------------------------------------------------------------------------------------------
GENES = ["CD3E", "INS", "GCG", "MALAT1"]
CELLS = ["c1", "c2", "c3"]
COUNTS = np.array([[0, 2, 0], [5, 0, 1], [0, 0, 7], [3, 4, 0]], dtype=float)  # genes x cells, as R stores it
TYPES = ["beta", "alpha", "beta"]


def sce(assays: dict, *, ranged=True):
    """A SingleCellExperiment (ranged, SimpleAssays) or a plain SummarizedExperiment (ShallowSimpleListAssays)."""
    stage = factor(["late", None, "early"], ["early", "late"])  # an ordered factor with an NA
    stage.attrs[-1] = ("class", chr_("ordered", "factor"))
    col = dframe({"cell_type1": factor(TYPES, ["alpha", "beta", "delta"]), "age": real([31, 47.5, 60]),
                  "donor": chr_("d1", None, "Zürich-2"), "idx": compact_intseq(3), "stage": stage}, 3, CELLS)
    row = dframe({"feature_symbol": chr_(*GENES)}, 4)
    simple_list = s4("SimpleList", "S4Vectors", {"listData": lst(assays), "elementType": chr_("ANY"),
                                                 "elementMetadata": NULL, "metadata": lst([])})
    if ranged:
        partitioning = s4("PartitioningByEnd", "IRanges", {"end": int_([0] * 4), "NAMES": chr_(*GENES),
                                                            "elementType": chr_("ANY"), "elementMetadata": NULL,
                                                            "metadata": lst([])})
        row_ranges = s4("CompressedGRangesList", "GenomicRanges", {
            "unlistData": s4("GRanges", "GenomicRanges", {}), "elementMetadata": row,
            "elementType": chr_("GRanges"), "metadata": lst([]), "partitioning": partitioning})
        return s4("SingleCellExperiment", "SingleCellExperiment", {
            "int_elementMetadata": dframe({}, 4), "int_colData": dframe({}, 3), "int_metadata": lst([]),
            "rowRanges": row_ranges, "colData": col,
            "assays": s4("SimpleAssays", "SummarizedExperiment", {"data": simple_list}),
            "NAMES": NULL, "elementMetadata": dframe({}, 4), "metadata": lst([])})
    env = R(ENV, {"data": simple_list})
    ref_obj = s4("ShallowSimpleListAssays", "SummarizedExperiment", {".xData": env})
    env.value[".self"] = ref_obj  # reference-class objects point back at themselves
    return s4("SummarizedExperiment", "SummarizedExperiment", {
        "colData": col, "assays": ref_obj, "NAMES": chr_(*GENES), "elementMetadata": row, "metadata": lst([])})


def seurat(v5=False, layers=None, members=None):
    """Seurat v4 (Assay) or v5 (Assay5); ``members`` {layer: cell indices} when a layer has only some cells."""
    log = np.log1p(COUNTS)
    if v5:
        layers = layers or {"counts": dgc(COUNTS), "data": dgc(log)}

        def logmap(names, members=None):  # a logical matrix names x layers, stored column-major
            keys = list(layers)
            cols = [[int(i in (members or {}).get(k, range(len(names)))) for i in range(len(names))] for k in keys]
            return R(LGL, [v for col in cols for v in col], [
                ("dim", int_([len(names), len(keys)])), ("dimnames", lst([chr_(*names), chr_(*keys)])),
                cls_attr("LogMap", "SeuratObject")], s4=True)
        rna = s4("Assay5", "SeuratObject", {"layers": lst(layers), "cells": logmap(CELLS, members),
                                            "features": logmap(GENES), "default": int_([1]),
                                            "assay.orig": R(STR, []), "meta.data": data_frame({"x": real([0] * 4)}),
                                            "misc": lst([]), "key": chr_("rna_")})
        meta_names = CELLS
    else:
        rna = s4("Assay", "SeuratObject", {"counts": dgc(COUNTS, GENES, CELLS), "data": dgc(log, GENES, CELLS),
                                           "scale.data": real([], [("dim", int_([0, 0]))]), "key": chr_("rna_"),
                                           "assay.orig": R(STR, []), "var.features": R(STR, []),
                                           "meta.features": data_frame({}, GENES), "misc": NULL})
        meta_names = None  # compact row names c(NA, -3)
    meta = data_frame({"orig.ident": factor(["pbmc"] * 3, ["pbmc"]), "nCount_RNA": real(COUNTS.sum(0)),
                       "nFeature_RNA": int_((COUNTS > 0).sum(0)), "qc_pass": R(LGL, [1, 0, NA_INT])}, meta_names)
    return s4("Seurat", "SeuratObject", {
        "assays": lst({"RNA": rna}), "meta.data": meta, "active.assay": chr_("RNA"),
        "active.ident": factor(["pbmc"] * 3, ["pbmc"]), "graphs": lst([]), "neighbors": lst([]),
        "reductions": lst([]), "images": lst([]), "project.name": chr_("pbmc"), "misc": lst([]),
        "version": lst([int_([5, 0, 1])]), "commands": lst([]), "tools": lst([])})


# --- the writer itself ------------------------------------------------------------------------------------------
R_MADE = {  # files R wrote, shipped with rdata's own tests, and the code that made them
    # matrix(1:6, nrow=2, byrow=TRUE, dimnames=list(my_dim_0=c("dim0_0", "dim0_1"), my_dim_1=c("dim1_0", ...)))
    "test_full_named_matrix": int_([1, 4, 2, 5, 3, 6], [("dim", int_([2, 3])), ("dimnames", lst({
        "my_dim_0": chr_("dim0_0", "dim0_1"), "my_dim_1": chr_("dim1_0", "dim1_1", "dim1_2")}))]),
    # data.frame(class=factor(c("a", "b", "b")), value=c(1L, 2L, 3L), row.names=c("Madrid", ...))
    "test_dataframe_rownames": data_frame({"class": factor(["a", "b", "b"], ["a", "b"]), "value": int_([1, 2, 3])},
                                          ["Madrid", "Frankfurt", "Herzberg am Harz"]),
    # setClass("Person", representation(name="character", age="numeric")); new("Person", name="Carlos", age=28)
    "test_s4": s4("Person", ".GlobalEnv", {"name": chr_("Carlos"), "age": real([28])}),
    # e <- new.env(); assign("string", "test", envir=e)
    "test_environment_global_default": R(ENV, {"string": chr_("test")}),
}


def _r_made(name, version):
    path = rdata.TESTDATA_PATH / "generated" / f"{name}__xdr__version_{version}.rds"
    if not path.is_file():
        pytest.skip("this rdata build does not ship its R-made test files")
    return path


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("name", list(R_MADE))
def test_writer_matches_r_byte_for_byte(tmp_path, name, version):
    data = _r_made(name, version).read_bytes()
    data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    ours = write_rds(tmp_path / "x.rds", R_MADE[name], version=version, compress=False).read_bytes()
    assert ours[14:] == data[14:]  # all but the R version that wrote it


@pytest.mark.parametrize("version", [2, 3])
def test_writer_output_parses_with_rdata(tmp_path, version):
    df = data_frame({"a": real([1.5, 2]), "f": factor(["x", "y"], ["y", "x"]), "s": chr_("u", None)}, ["r1", "r2"])
    got = rdata.read_rds(write_rds(tmp_path / "df.rds", df, version=version))  # rdata's own conversion
    assert list(got.index) == ["r1", "r2"] and got["a"].tolist() == [1.5, 2.0]
    assert list(got["f"].cat.categories) == ["y", "x"] and got["f"].tolist() == ["x", "y"]
    assert got["s"].tolist()[0] == "u" and pd.isna(got["s"].tolist()[1])
    parsed = rdata.parser.parse_file(write_rds(tmp_path / "sce.rds", sce({"counts": dgc(COUNTS)})))
    assert parsed.object.info.type.name == "S4" and parsed.versions.format == 3
    assert parsed.object.info.gp == 16  # S4 bit


# --- layouts ----------------------------------------------------------------------------------------------------
def test_single_cell_experiment(tmp_path):
    log = np.log2(COUNTS + 1)
    a = read_rds(write_rds(tmp_path / "x.rds", sce({"logcounts": dense(log, GENES, CELLS), "counts": dgc(COUNTS)})),
                 field=FIELD)
    assert sp.issparse(a.X) and a.X.format == "csr"
    np.testing.assert_array_equal(a.X.toarray(), COUNTS.T)
    assert list(a.obs_names) == CELLS and list(a.var_names) == GENES
    assert a.uns["rds_assay"] == "counts" and list(a.uns["rds_assays"]) == ["logcounts", "counts"]
    assert list(a.obs["cell_type1"].cat.categories) == ["alpha", "beta", "delta"]
    assert a.obs["cell_type1"].tolist() == TYPES
    assert a.obs["age"].tolist() == [31.0, 47.5, 60.0] and a.obs["idx"].tolist() == [1, 2, 3]
    assert a.obs["donor"].tolist()[::2] == ["d1", "Zürich-2"] and a.obs["donor"].tolist()[1] is None
    assert a.obs["stage"].cat.ordered and list(a.obs["stage"].cat.categories) == ["early", "late"]
    assert a.obs["stage"].tolist()[::2] == ["late", "early"] and pd.isna(a.obs["stage"].tolist()[1])
    assert a.var["feature_symbol"].tolist() == GENES
    a.write_h5ad(tmp_path / "x.h5ad")  # what the convert step does with it
    assert ad.read_h5ad(tmp_path / "x.h5ad").obs["stage"].tolist()[0] == "late"
    b = read_rds(tmp_path / "x.rds", field=FIELD, assay="logcounts")
    np.testing.assert_array_equal(b.X, log.T)
    assert b.uns["rds_assay"] == "logcounts"


def test_summarized_experiment_with_reference_class_assays(tmp_path):
    norm = COUNTS / COUNTS.sum(0) * 1e4
    obj = sce({"normcounts": dense(norm, GENES, CELLS), "logcounts": dense(np.log2(norm + 1), GENES, CELLS)},
              ranged=False)
    a = read_rds(write_rds(tmp_path / "old.rds", obj, version=2, compress=False), field=FIELD)
    assert a.uns["rds_assay"] == "normcounts"
    np.testing.assert_array_equal(a.X, norm.T)
    assert list(a.var_names) == GENES and a.var["feature_symbol"].tolist() == GENES
    assert a.obs["cell_type1"].tolist() == TYPES


@pytest.mark.parametrize("v5", [False, True])
def test_seurat(tmp_path, v5):
    a = read_rds(write_rds(tmp_path / "s.rds", seurat(v5)), field=FIELD)
    np.testing.assert_array_equal(a.X.toarray(), COUNTS.T)
    assert list(a.obs_names) == CELLS and list(a.var_names) == GENES and a.uns["rds_assay"] == "RNA/counts"
    assert a.uns["source_layer"] == "counts"
    assert a.obs["nCount_RNA"].tolist() == COUNTS.sum(0).tolist()
    assert a.obs["nFeature_RNA"].tolist() == [2, 2, 2]
    assert a.obs["qc_pass"].tolist()[:2] == [True, False] and a.obs["qc_pass"].isna().tolist()[2]
    assert a.obs["orig.ident"].dtype == "category"
    d = read_rds(tmp_path / "s.rds", field=FIELD, layer="data")
    np.testing.assert_allclose(d.X.toarray(), np.log1p(COUNTS).T)


def test_seurat_v5_layer_with_some_cells(tmp_path):
    obj = seurat(True, {"counts": dgc(COUNTS[:, [0, 2]]), "data": dgc(np.log1p(COUNTS))}, {"counts": [0, 2]})
    a = read_rds(write_rds(tmp_path / "s.rds", obj), field=FIELD)
    np.testing.assert_array_equal(a.X.toarray(), COUNTS[:, [0, 2]].T)
    assert list(a.obs_names) == ["c1", "c3"] and a.obs["nCount_RNA"].tolist() == COUNTS.sum(0)[[0, 2]].tolist()
    assert read_rds(tmp_path / "s.rds", field=FIELD, layer="data").n_obs == 3


@pytest.mark.parametrize("cls", ["dgTMatrix", "dgRMatrix", "dgeMatrix", "ngCMatrix"])
def test_other_matrix_classes(tmp_path, cls):
    names = lst([chr_(*GENES), chr_(*CELLS)])
    if cls == "dgeMatrix":
        slots = {"x": real(COUNTS.ravel(order="F"))}
    else:
        m = {"dgT": sp.coo_matrix, "dgR": sp.csr_matrix, "ngC": sp.csc_matrix}[cls[:3]](COUNTS)
        slots = {"i": int_(m.row), "j": int_(m.col)} if cls == "dgTMatrix" else (
            {"j": int_(m.indices), "p": int_(m.indptr)} if cls == "dgRMatrix" else
            {"i": int_(m.indices), "p": int_(m.indptr)})
        slots |= {} if cls == "ngCMatrix" else {"x": real(m.data)}
    obj = s4(cls, "Matrix", {**slots, "Dim": int_(COUNTS.shape), "Dimnames": names, "factors": lst([])})
    a = read_rds(write_rds(tmp_path / "m.rds", obj), field=FIELD)
    want = (COUNTS > 0).astype(float) if cls == "ngCMatrix" else COUNTS
    np.testing.assert_array_equal(a.X.toarray() if sp.issparse(a.X) else a.X, want.T)
    assert list(a.obs_names) == CELLS and list(a.var_names) == GENES


def test_dense_matrices(tmp_path):
    m = np.arange(12, dtype=np.int32).reshape(4, 3)  # genes x cells, not square: orientation matters
    a = read_rds(write_rds(tmp_path / "m.rds", dense(m, GENES, CELLS)), field=FIELD)
    np.testing.assert_array_equal(a.X, m.T)
    assert list(a.obs_names) == CELLS and list(a.var_names) == GENES
    rdata.write_rds(tmp_path / "np.rds", m.astype(float))  # rdata's writer: column-major, no dimnames
    b = read_rds(tmp_path / "np.rds", field=FIELD)
    np.testing.assert_array_equal(b.X, m.T)
    assert list(b.obs_names) == ["0", "1", "2"]
    c = read_rds(write_rds(tmp_path / "c.rds", dgc(COUNTS, GENES, CELLS), version=2), field=FIELD)
    np.testing.assert_array_equal(c.X.toarray(), COUNTS.T)


def test_data_frame(tmp_path):
    df = pd.DataFrame({"symbol": ["a", "b", "c", "d"], **{c: COUNTS[:, i] for i, c in enumerate(CELLS)}},
                      index=GENES)
    rdata.write_rds(tmp_path / "df.rds", df)
    a = read_rds(tmp_path / "df.rds", field=FIELD)
    np.testing.assert_array_equal(a.X, COUNTS.T)
    assert list(a.obs_names) == CELLS and list(a.var_names) == GENES and a.var["symbol"].tolist() == list("abcd")


def test_r_made_files():
    a = read_rds(_r_made("test_full_named_matrix", 3), field=FIELD)
    np.testing.assert_array_equal(a.X, [[1, 4], [2, 5], [3, 6]])
    assert list(a.obs_names) == ["dim1_0", "dim1_1", "dim1_2"] and list(a.var_names) == ["dim0_0", "dim0_1"]
    # a factor beside one numeric column is a metadata table, not genes x one cell
    assert "looks like cell metadata" in _error(_r_made("test_dataframe_rownames", 2))
    assert "class Person (package .GlobalEnv)" in _error(_r_made("test_s4", 3))


def test_rdata_file_with_one_object(tmp_path):
    rdata.write_rda(tmp_path / "x.RData", {"mat": COUNTS})
    np.testing.assert_array_equal(read_rds(tmp_path / "x.RData", field=FIELD).X, COUNTS.T)


# --- errors -----------------------------------------------------------------------------------------------------
def _error(path, **kw) -> str:
    with pytest.raises(CellDualityError) as err:
        read_rds(path, field=FIELD, **kw)
    msg = str(err.value)
    assert msg.startswith(f"{FIELD}: ") and "\n" not in msg and "Traceback" not in msg
    return msg


def test_errors(tmp_path):
    (tmp_path / "page.rds").write_bytes(b"<!DOCTYPE html><html><body>Not found</body></html>")
    assert "not a readable R serialization" in _error(tmp_path / "page.rds")
    (tmp_path / "text.rds").write_bytes(gzip.compress(b"gene,c1\nCD3E,1\n"))
    assert "not a readable R serialization" in _error(tmp_path / "text.rds")
    (tmp_path / "cut.rds").write_bytes(gzip.compress(write_rds(tmp_path / "s.rds", seurat(), compress=False)
                                                     .read_bytes()[:300]))
    assert "not a readable R serialization" in _error(tmp_path / "cut.rds")
    assert "cannot read" in _error(tmp_path / "missing.rds")
    msg = _error(write_rds(tmp_path / "foo.rds", s4("Foo", "bar", {"x": int_([1])})))
    assert "class Foo (package bar)" in msg and "not supported" in msg
    msg = _error(write_rds(tmp_path / "n.rds", sce({"normcounts": dgc(COUNTS), "tpm": dgc(COUNTS)})),
                 assay="counts")
    assert "no 'counts'" in msg and "set assay to one of: normcounts, tpm" in msg
    assert "none of counts" in _error(write_rds(tmp_path / "t.rds", sce({"tpm": dgc(COUNTS)})))
    delayed = s4("DelayedMatrix", "DelayedArray", {"seed": s4("HDF5ArraySeed", "HDF5Array", {})})
    msg = _error(write_rds(tmp_path / "d.rds", sce({"counts": delayed})))
    assert "DelayedMatrix" in msg and "not supported" in msg and "saveRDS" in msg
    odd = s4("SummarizedExperiment", "SummarizedExperiment", {"assays": lst({"counts": dgc(COUNTS)}),
                                                              "colData": int_([1])})
    assert "laid out unlike" in _error(write_rds(tmp_path / "odd.rds", odd))
    split = seurat(v5=True, layers={"counts.1": dgc(COUNTS), "counts.2": dgc(COUNTS)})
    assert "JoinLayers" in _error(write_rds(tmp_path / "split.rds", split))


def test_missing_rdata_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdata", None)
    monkeypatch.setitem(sys.modules, "rdata.parser", None)
    assert "pip install rdata" in _error(tmp_path / "any.rds")
