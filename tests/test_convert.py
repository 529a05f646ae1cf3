"""The convert step (src/cellduality/data/convert.py): every supported download format becomes the same h5ad, and
every bad download is one CellDualityError line naming the catalog field, with no output left behind."""

import gzip
import io
import json
import lzma
import shutil
import tarfile
import zipfile

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from cellduality.data.convert import ConvertSpec, convert_source, detect_format
from cellduality.errors import CellDualityError

N_CELLS, N_GENES = 30, 20
CELLS = [f"c{i}" for i in range(N_CELLS)]
GENES = [f"G{i}" for i in range(N_GENES)]


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(7)
    return rng.poisson(0.8, size=(N_CELLS, N_GENES)).astype(np.int64)


def dense(adata):
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def convert(src, tmp_path, spec=None, **kwargs):
    out = tmp_path / "out" / "d.h5ad"
    report = convert_source(src, out, spec or ConvertSpec(), dataset="d", **kwargs)
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.h5ad"]  # no temp files left
    return ad.read_h5ad(out), report


def assert_same(adata, X, cells=CELLS, genes=GENES):
    assert list(adata.obs_names) == cells and list(adata.var_names) == genes
    np.testing.assert_array_equal(dense(adata), X)


def csv_text(X, sep=",", transpose=False):
    frame = pd.DataFrame(X, index=CELLS[: len(X)], columns=GENES)
    return (frame.T if transpose else frame).to_csv(sep=sep, index_label="id")


def gz_bytes(data: bytes | str) -> bytes:
    return gzip.compress(data.encode() if isinstance(data, str) else data)


def add(archive, name, data: bytes | str):
    data = data.encode() if isinstance(data, str) else data
    if isinstance(archive, zipfile.ZipFile):
        archive.writestr(name, data)
    else:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def mtx_triple(X, cells, genes, symbols) -> dict[str, bytes]:
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(X.T))
    features = "".join(f"{g}\t{s}\tGene Expression\n" for g, s in zip(genes, symbols))
    return {"matrix.mtx.gz": gz_bytes(buf.getvalue()), "barcodes.tsv.gz": gz_bytes("\n".join(cells) + "\n"),
            "features.tsv.gz": gz_bytes(features)}


# ---------------------------------------------------------------------------------------------- formats


def test_h5ad_and_gzipped_h5ad_named_without_extension(tmp_path, X):
    src = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=pd.DataFrame({"cell_type": ["B", "T"] * 15}, index=CELLS),
                     var=pd.DataFrame(index=GENES))
    src.write_h5ad(tmp_path / "a.h5ad")
    adata, report = convert(tmp_path / "a.h5ad", tmp_path)
    assert_same(adata, X)
    assert list(adata.obs["cell_type"]) == ["B", "T"] * 15
    assert report["format"] == "h5ad" and report["n_cells"] == N_CELLS and report["n_genes"] == N_GENES
    with open(tmp_path / "a.h5ad", "rb") as fin, gzip.open(tmp_path / "download", "wb") as fout:
        shutil.copyfileobj(fin, fout)
    assert detect_format(tmp_path / "download") == "h5ad.gz"
    adata, report = convert(tmp_path / "download", tmp_path, ConvertSpec(format="h5ad.gz"))
    assert_same(adata, X)
    assert report["format"] == "h5ad.gz"


def test_loom_written_with_h5py(tmp_path, X):
    with h5py.File(tmp_path / "x.loom", "w") as f:
        f["matrix"] = X.T.astype(np.float32)  # genes x cells
        f["row_attrs/Gene"] = np.array(GENES, dtype="S")
        f["row_attrs/Accession"] = np.array([f"ENSG{i:011d}" for i in range(N_GENES)], dtype="S")
        f["col_attrs/CellID"] = np.array(CELLS, dtype="S")
        f.create_dataset("col_attrs/cluster", data=["k1", "k2", "k3"] * 10, dtype=h5py.string_dtype())
        f["col_attrs/nUMI"] = X.sum(1)
        f.create_group("layers")
    assert detect_format(tmp_path / "x.loom") == "loom"
    adata, _ = convert(tmp_path / "x.loom", tmp_path)
    assert_same(adata, X)
    assert list(adata.obs["cluster"]) == ["k1", "k2", "k3"] * 10
    np.testing.assert_array_equal(adata.obs["nUMI"], X.sum(1))
    assert adata.var["Accession"].iloc[3] == "ENSG00000000003"


def test_10x_h5_v3_written_with_h5py(tmp_path, X):
    csc = sp.csc_matrix(X.T)  # genes x cells, one column per cell
    with h5py.File(tmp_path / "filtered.h5", "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(CELLS, dtype="S")
        g["data"], g["indices"], g["indptr"] = csc.data.astype(np.int32), csc.indices, csc.indptr
        g["shape"] = np.array([N_GENES, N_CELLS], dtype=np.int32)
        g["features/id"] = np.array([f"ENSG{i}" for i in range(N_GENES)], dtype="S")
        g["features/name"] = np.array(GENES, dtype="S")
        g["features/feature_type"] = np.array(["Gene Expression"] * N_GENES, dtype="S")
        g["features/genome"] = np.array(["GRCh38"] * N_GENES, dtype="S")
    assert detect_format(tmp_path / "filtered.h5") == "10x_h5"
    adata, _ = convert(tmp_path / "filtered.h5", tmp_path)
    assert_same(adata, X)
    assert adata.var["gene_ids"].iloc[2] == "ENSG2"


def test_10x_mtx_folder_with_duplicate_symbols(tmp_path, X):
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    symbols = [*GENES[:5], "G4", *GENES[6:]]
    for name, data in mtx_triple(X, CELLS, [f"ENSG{i}" for i in range(N_GENES)], symbols).items():
        (folder / name).write_bytes(data)
    adata, report = convert(folder, tmp_path)
    assert_same(adata, X, genes=symbols)  # the repeat kept as written: preprocess.duplicate_genes decides
    assert list(adata.var["gene_ids"]) == [f"ENSG{i}" for i in range(N_GENES)]
    assert report["format"] == "10x_mtx" and "sample" not in adata.obs


def test_geo_prefixed_10x_triples_of_two_samples_in_a_tar(tmp_path, X):
    with tarfile.open(tmp_path / "GSE1_RAW.tar", "w:gz") as tar:  # a gzipped tar, whatever the name says
        for prefix, rows, genes in (("GSM1_sampleA_", slice(0, 12), GENES),
                                    ("GSM2_sampleB_", slice(12, 30), GENES[:15])):
            cols = [GENES.index(g) for g in genes]
            triple = mtx_triple(X[rows][:, cols], CELLS[rows], genes, genes)
            for name, data in triple.items():
                add(tar, prefix + name.replace("features", "genes"), data)
    adata, report = convert(tmp_path / "GSE1_RAW.tar", tmp_path, ConvertSpec(format="10x_mtx"))
    assert report["format"] == "tar" and report["samples"] == ["GSM1_sampleA", "GSM2_sampleB"]
    assert list(adata.obs_names) == [f"GSM1_sampleA:{c}" for c in CELLS[:12]] + [
        f"GSM2_sampleB:{c}" for c in CELLS[12:]]
    assert list(adata.var.loc[GENES, "gene_ids"]) == GENES  # the 1st column of genes.tsv, kept through the join
    json.dumps(report)
    assert list(adata.obs["sample"]) == ["GSM1_sampleA"] * 12 + ["GSM2_sampleB"] * 18
    expected = X.copy()
    expected[12:, 15:] = 0  # sample B lacks G15..G19: outer join, missing = 0
    np.testing.assert_array_equal(dense(adata[:, GENES]), expected)


def test_csv_and_transposed_tsv_gz(tmp_path, X):
    (tmp_path / "x.csv").write_text(csv_text(X))
    assert detect_format(tmp_path / "x.csv") == "csv"
    adata, _ = convert(tmp_path / "x.csv", tmp_path)
    assert_same(adata, X)
    # genes x cells, R-style header without a name for the id column, gzipped, tab-separated
    text = "\t".join(CELLS) + "\n" + "".join(f"{g}\t" + "\t".join(map(str, col)) + "\n" for g, col in zip(GENES, X.T))
    (tmp_path / "x.tsv.gz").write_bytes(gz_bytes(text))
    adata, report = convert(tmp_path / "x.tsv.gz", tmp_path, ConvertSpec(transpose=True))
    assert_same(adata, X)
    assert report["format"] == "csv"


def geo_csv_tar(tmp_path, X) -> tuple:
    """A GEO-style tar of two gzipped csv members and a per-cell table keyed '<sample>#<id>' (one cell unlisted)."""
    frame = pd.DataFrame(X, index=CELLS, columns=GENES)
    meta = pd.DataFrame({"barcode": [f"GSM1_ctrl#{c}" for c in CELLS[:10]] + [f"GSM2_treat#{c}" for c in CELLS[10:29]],
                         "cell_type": ["B", "T"] * 14 + ["NK"]})
    with tarfile.open(tmp_path / "GSE2_RAW.tar", "w") as tar:
        add(tar, "GSM1_ctrl.csv.gz", gz_bytes(frame.iloc[:10].to_csv()))
        add(tar, "GSM2_treat.csv.gz", gz_bytes(frame.iloc[10:].to_csv()))
        add(tar, "GSE2_metadata.tsv", meta.to_csv(sep="\t", index=False))
    spec = dict(member="*.csv.gz", obs_member="*metadata*", obs_id_column="barcode", cell_id_template="{sample}#{id}")
    return tmp_path / "GSE2_RAW.tar", spec, meta


def test_geo_tar_of_csv_members_with_obs_member(tmp_path, X):
    src, spec, meta = geo_csv_tar(tmp_path, X)
    adata, report = convert(src, tmp_path, ConvertSpec(**spec))
    assert_same(adata, X, cells=[f"GSM1_ctrl:{c}" for c in CELLS[:10]] + [f"GSM2_treat:{c}" for c in CELLS[10:]])
    assert list(adata.obs["sample"][9:11]) == ["GSM1_ctrl", "GSM2_treat"]
    assert list(adata.obs["cell_type"][:29]) == list(meta["cell_type"]) and pd.isna(adata.obs["cell_type"].iloc[29])
    assert report["cells_without_obs"] == 1 and report["members"] == ["GSM1_ctrl.csv.gz", "GSM2_treat.csv.gz"]


def test_obs_recode_then_obs_filter(tmp_path, X):
    src, spec, _ = geo_csv_tar(tmp_path, X)
    table = {"member": spec["obs_member"], "id_column": spec["obs_id_column"],
             "cell_id_template": spec["cell_id_template"], "source": None, "sha256": None}
    entry = {"member": spec["member"], "obs_table": table, "source": "ignored", "sha256": None,
             "obs_recode": {"condition": {"from": "sample", "values": {"ctrl": "control", "treat$": "treated"}},
                            "dose": {"default": 1}, "kind": {"from": "cell_type", "values": {"^T$": "lymphoid"}}},
             "obs_filter": {"condition": ["treated"], "cell_type": ["B", "T"]}}
    adata, report = convert(src, tmp_path, ConvertSpec.from_entry(entry))
    assert list(adata.obs_names) == [f"GSM2_treat:{c}" for c in CELLS[10:29]][:18]
    assert set(adata.obs["condition"]) == {"treated"} and set(adata.obs["dose"]) == {"1"}
    kinds = [None if pd.isna(k) else k for k in adata.obs["kind"]]
    assert kinds == [("lymphoid" if t == "T" else None) for t in adata.obs["cell_type"]]
    np.testing.assert_array_equal(dense(adata), X[10:28])
    assert report["cells_dropped_by_obs_filter"] == 12 and report["n_cells"] == 18


def test_zip_with_member_glob_on_basename(tmp_path, X):
    with zipfile.ZipFile(tmp_path / "E-MTAB-1.zip", "w") as zf:
        add(zf, "README.txt", "nothing to see")
        add(zf, "counts/matrix_a.csv", csv_text(X))
        add(zf, "counts/other.csv", csv_text(X[:2]))
    adata, report = convert(tmp_path / "E-MTAB-1.zip", tmp_path, ConvertSpec(member="matrix_a.csv"))
    assert_same(adata, X)
    assert report["format"] == "zip" and report["members"] == ["counts/matrix_a.csv"]


def test_obs_table_argument_with_implicit_index(tmp_path, X):
    (tmp_path / "x.csv").write_text(csv_text(X))
    (tmp_path / "meta.csv").write_text("donor\n" + "".join(f"{c},d{i % 3}\n" for i, c in enumerate(CELLS)))
    adata, report = convert(tmp_path / "x.csv", tmp_path, obs_table=tmp_path / "meta.csv")
    assert list(adata.obs["donor"]) == [f"d{i % 3}" for i in range(N_CELLS)] and report["cells_without_obs"] == 0


@pytest.mark.parametrize("data", [b"X\n\0\0\0\x03\0\x04\x04\x02", b"RDX3\nX\n", b"A\n3\n263168\n"])
def test_rds_detected_plain_and_compressed(tmp_path, data):
    for i, blob in enumerate((data, gzip.compress(data), lzma.compress(data))):
        (tmp_path / f"f{i}").write_bytes(blob)
        assert detect_format(tmp_path / f"f{i}") == "rds"


def test_from_entry_defaults_and_unknown_keys():
    spec = ConvertSpec.from_entry({"source": "https://x", "format": None, "member": "*.csv.gz", "transpose": True})
    assert spec == ConvertSpec(member="*.csv.gz", transpose=True)
    assert spec.format == "auto" and spec.cell_id_template == "{id}" and spec.obs_filter == {}


# ---------------------------------------------------------------------------------------------- errors


def fails(src, tmp_path, spec=None, match="", **kwargs) -> str:
    out = tmp_path / "out" / "d.h5ad"
    with pytest.raises(CellDualityError, match=match) as err:
        convert_source(src, out, spec or ConvertSpec(), dataset="d", **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith("datasets.d.")
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])
    return message


def test_html_landing_page(tmp_path):
    (tmp_path / "page").write_text("<!DOCTYPE html>\n<html><head><title>GEO Accession viewer\n</title></head></html>")
    msg = fails(tmp_path / "page", tmp_path, match=r"^datasets\.d\.source: .* is an HTML page")
    assert "(<title>GEO Accession viewer</title>)" in msg and "/suppl/" in msg and "10x_mtx" in msg


def test_unknown_bytes_empty_file_and_truncated_gzip(tmp_path, X):
    (tmp_path / "blob").write_bytes(b"\x00\x01\x02garbage" * 10)
    fails(tmp_path / "blob", tmp_path, match=r"datasets\.d\.source: .*not a recognized data file")
    (tmp_path / "empty").write_bytes(b"")
    fails(tmp_path / "empty", tmp_path, match=r"datasets\.d\.source: .*empty")
    whole = gz_bytes(csv_text(X))
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    fails(tmp_path / "cut.gz", tmp_path, match=r"datasets\.d\.source: .*truncated")
    big = np.random.default_rng(1).integers(0, 1000, size=(3000, N_GENES))  # sniffing passes, reading does not
    whole = gz_bytes(pd.DataFrame(big, columns=GENES).to_csv())
    (tmp_path / "cut2.gz").write_bytes(whole[: len(whole) // 2])
    fails(tmp_path / "cut2.gz", tmp_path, match=r"datasets\.d\.source: cannot read .* truncated")


def test_member_glob_matching_nothing_lists_members(tmp_path, X):
    src, spec, _ = geo_csv_tar(tmp_path, X)
    msg = fails(src, tmp_path, ConvertSpec(member="*.h5ad"), match=r"datasets\.d\.member: '\*\.h5ad' matches no file")
    assert "GSM1_ctrl.csv.gz, GSM2_treat.csv.gz, GSE2_metadata.tsv" in msg
    fails(src, tmp_path, match=r"datasets\.d\.member: .* holds 3 files .*; set member")


def test_obs_table_matching_no_cell_shows_examples(tmp_path, X):
    src, spec, _ = geo_csv_tar(tmp_path, X)
    spec_ids = ConvertSpec(**{**spec, "cell_id_template": "{id}"})
    msg = fails(src, tmp_path, spec_ids, match=r"datasets\.d\.obs_table\.cell_id_template: no cell matches")
    assert "c0, c1, c2" in msg and "GSM1_ctrl#c0, GSM1_ctrl#c1, GSM1_ctrl#c2" in msg
    fails(src, tmp_path, ConvertSpec(**spec, obs_filter={"tissue": ["x"]}),
          match=r"datasets\.d\.obs_filter: no obs column 'tissue'; available: sample, cell_type")


def test_declared_format_contradicting_content(tmp_path, X):
    (tmp_path / "x.csv").write_text(csv_text(X))
    fails(tmp_path / "x.csv", tmp_path, ConvertSpec(format="loom"),
          match=r"datasets\.d\.format: declared loom, but the content of .*x\.csv is csv")


def test_non_numeric_csv_value_names_row_and_column(tmp_path, X):
    lines = csv_text(X).splitlines()
    fields = lines[5].split(",")
    fields[3] = "oops"
    lines[5] = ",".join(fields)
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    fails(tmp_path / "x.csv", tmp_path,
          match=r"datasets\.d\.source: .*x\.csv line 6 \(row 'c4', column 'G2'\) holds 'oops', not a number")


def test_xlsx_obs_table_with_header_rows_and_an_id_template(tmp_path, X):
    """A GEO cell-info sheet: a title block above the header, cells named '<Plate#>_<Well position>'."""
    frame = pd.DataFrame(X, index=[f"P{i // 10}_{chr(65 + i % 10)}1" for i in range(N_CELLS)], columns=GENES)
    (tmp_path / "counts.csv").write_text(frame.T.to_csv())
    info = pd.DataFrame({"Plate#": [f"P{i // 10}" for i in range(N_CELLS)],
                         "Well position": [f"{chr(65 + i % 10)}1" for i in range(N_CELLS)],
                         "Sample name": ["RESISTANT x" if i % 2 else "parental" for i in range(N_CELLS)]})
    with pd.ExcelWriter(tmp_path / "info.xlsx") as writer:
        pd.DataFrame({"title": ["GSE110894 cell info", "", ""]}).to_excel(writer, index=False, header=False)
        info.to_excel(writer, index=False, startrow=3)
    spec = ConvertSpec(transpose=True, obs_id_column="{Plate#}_{Well position}", obs_skip_rows=3,
                       obs_recode={"sensitivity": {"from": "Sample name", "values": {"RESISTANT": "Resistant"},
                                                   "default": "Sensitive"}})
    adata, report = convert(tmp_path / "counts.csv", tmp_path, spec, obs_table=tmp_path / "info.xlsx")
    assert_same(adata, X, cells=list(frame.index))
    assert list(adata.obs["sensitivity"][:2]) == ["Sensitive", "Resistant"] and report["cells_without_obs"] == 0
    bad = ConvertSpec(transpose=True, obs_id_column="{Plate}_{Well position}", obs_skip_rows=3)
    (tmp_path / "bad").mkdir()
    fails(tmp_path / "counts.csv", tmp_path / "bad", bad, match=r"obs_table.id_column: '\{Plate\}_",
          obs_table=tmp_path / "info.xlsx")


def test_convert_file_links_a_plain_h5ad_and_writes_its_report(tmp_path, X):
    import json

    from cellduality.data.convert import convert_file

    src = tmp_path / "raw.download"
    ad.AnnData(X=X, obs=pd.DataFrame(index=CELLS), var=pd.DataFrame(index=GENES)).write_h5ad(src)
    out, report_path = tmp_path / "converted" / "d.h5ad", tmp_path / "converted" / "d.convert.json"
    report = convert_file(src, out, report_path, {"format": "auto", "obs_table": {}, "obs_filter": {}}, dataset="d")
    assert report["linked"] and (report["n_cells"], report["n_genes"]) == (N_CELLS, len(GENES))
    assert out.stat().st_ino == src.stat().st_ino and json.loads(report_path.read_text()) == report
    filtered = convert_file(src, out, report_path, {"obs_recode": {"x": {"default": "y"}}}, dataset="d")
    assert "linked" not in filtered and out.stat().st_ino != src.stat().st_ino
    assert set(ad.read_h5ad(out).obs["x"]) == {"y"}
