"""The convert step on files written by the real tools (tests/data/real/, made by its make_fixtures.sh with R 4.2,
SingleCellExperiment 1.20, SummarizedExperiment 1.28, SeuratObject 4.1.3, DropletUtils 1.18, loompy, anndata,
GNU tar and openpyxl): each converts to R's values, or fails with one line naming the catalog key to set."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.io import mmread

from cellduality.data.convert import ConvertSpec, convert_file, convert_source
from cellduality.data.download import fetch
from cellduality.data.preprocess import PreprocessSettings, preprocess
from cellduality.errors import CellDualityError

REAL = Path(__file__).parent / "data" / "real"
GENES = (REAL / "genes.txt").read_text().split()
CELLS = (REAL / "expected" / "cells.txt").read_text().split()
COUNTS = mmread(REAL / "expected" / "counts.mtx").T.toarray()  # cells x genes, as R holds them transposed
LOGCOUNTS = mmread(REAL / "expected" / "logcounts.mtx").T.toarray()
COLDATA = pd.read_csv(REAL / "expected" / "coldata.csv", index_col=0, keep_default_na=False, dtype=str)
LEVELS = (REAL / "expected" / "levels.txt").read_text().splitlines()


def convert(tmp_path, path, **entry) -> ad.AnnData:
    out = tmp_path / "out.h5ad"
    convert_source(Path(path), out, ConvertSpec.from_entry(entry), dataset="x", name=entry.get("source"))
    return ad.read_h5ad(out)


def error(tmp_path, path, **entry) -> str:
    (tmp_path / "out.h5ad").unlink(missing_ok=True)
    with pytest.raises(CellDualityError) as err:
        convert(tmp_path, path, **entry)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message and not (tmp_path / "out.h5ad").exists()
    return message


def dense(X) -> np.ndarray:
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def assert_coldata(obs: pd.DataFrame) -> None:
    """R's colData: the factor with its levels in R's order (the unused one kept) and NA where R has NA."""
    assert list(obs["cell_type"].cat.categories) == LEVELS and "unused level" in LEVELS
    for column in ("cell_type", "donor", "n_umi", "doublet", "score"):
        want_na = (COLDATA[column] == "NA").to_numpy()
        np.testing.assert_array_equal(obs[column].isna().to_numpy(), want_na, err_msg=column)
        got = obs[column][~want_na].astype(str).str.replace(r"\.0$", "", regex=True).tolist()
        want = COLDATA[column][~want_na].tolist()
        if column == "doublet":
            want = [w.capitalize() for w in want]
        if column == "score":
            got, want = [float(g) for g in got], [float(w) for w in want]
        assert got == want, column


@pytest.mark.parametrize("name", ["sce_gzip", "sce_xz", "sce_bzip2", "sce_v2", "sce_plain", "se", "rse"])
def test_summarized_experiments_convert_to_r_values(tmp_path, name):
    a = convert(tmp_path, REAL / f"{name}.rds")
    np.testing.assert_array_equal(dense(a.X), COUNTS)
    assert list(a.var_names) == GENES and list(a.obs_names) == CELLS
    assert a.var["gene_id"].tolist()[:2] == ["ENSG00000000001", "ENSG00000000002"]
    assert_coldata(a.obs)
    if name.startswith("sce"):
        b = convert(tmp_path, REAL / f"{name}.rds", assay="logcounts")
        np.testing.assert_allclose(dense(b.X), LOGCOUNTS)


def test_assay_named_by_the_catalog(tmp_path):
    message = error(tmp_path, REAL / "sce_tpm_only.rds")
    assert message.startswith("datasets.x.source: ") and "set datasets.x.assay to one of: tpm" in message
    np.testing.assert_array_equal(dense(convert(tmp_path, REAL / "sce_tpm_only.rds", assay="tpm").X), COUNTS)
    assert "datasets.x.assay to one of: counts, logcounts" in error(tmp_path, REAL / "sce_gzip.rds", assay="tpm")
    assert "remove datasets.x.layer" in error(tmp_path, REAL / "sce_gzip.rds", layer="counts")


def test_seurat_v4_with_two_assays(tmp_path):
    a = convert(tmp_path, REAL / "seurat_v4.rds")
    np.testing.assert_array_equal(dense(a.X), COUNTS)
    assert list(a.var_names) == GENES and list(a.obs_names) == CELLS and a.uns["rds_assay"] == "RNA/counts"
    assert_coldata(a.obs)
    data = convert(tmp_path, REAL / "seurat_v4.rds", layer="data")
    np.testing.assert_allclose(dense(data.X), LOGCOUNTS)
    adt = convert(tmp_path, REAL / "seurat_v4.rds", assay="ADT")
    assert adt.n_vars == 20 and adt.var_names[0] == "ADT-01"
    # the active assay is ADT: no silent protein matrix
    message = error(tmp_path, REAL / "seurat_v4_adt_active.rds")
    assert "active assay is ADT (20 features)" in message and "set datasets.x.assay to one of: RNA, ADT" in message
    assert convert(tmp_path, REAL / "seurat_v4_adt_active.rds", assay="RNA").n_vars == len(GENES)
    assert "set datasets.x.layer to one of: counts, data" in error(tmp_path, REAL / "seurat_v4.rds", layer="scaled")


def test_seurat_layer_reaches_preprocess(tmp_path):
    """`layer: data` picks the Seurat slot at conversion; preprocess then takes X for it (log values, not counts)."""
    a = convert(tmp_path, REAL / "seurat_v4.rds", layer="data")
    out, report = preprocess(a, {"layer": "data", "labels": {}}, PreprocessSettings(min_genes=0), "x", where="x")
    assert report.matrix == "layer:data" and report.input_kind == "lognorm"


@pytest.mark.parametrize("name", ["dgCMatrix", "dgTMatrix", "dense_matrix"])
def test_bare_matrices(tmp_path, name):
    a = convert(tmp_path, REAL / f"{name}.rds")
    np.testing.assert_array_equal(dense(a.X), COUNTS)
    assert list(a.var_names) == GENES and list(a.obs_names) == CELLS


def test_metadata_frame_is_refused(tmp_path):
    message = error(tmp_path, REAL / "metadata_frame.rds")
    assert "looks like cell metadata" in message and "obs_table" in message


@pytest.mark.parametrize("version", ["2", "3"])
def test_dropletutils_10x(tmp_path, version):
    h5 = convert(tmp_path, REAL / f"tenx_v{version}.h5")
    np.testing.assert_array_equal(dense(h5.X), COUNTS)
    assert list(h5.var_names) == GENES and list(h5.obs_names) == CELLS
    # a local folder as the catalog source: download packs it, convert reads the pack
    raw = fetch(str(REAL / f"tenx_v{version}"), tmp_path / "x.download")
    again = fetch(str(REAL / f"tenx_v{version}"), tmp_path / "y.download")
    assert raw.read_bytes() == again.read_bytes()  # the same files give the same bytes (sha256 can be pinned)
    folder = convert(tmp_path, raw)
    np.testing.assert_array_equal(dense(folder.X), COUNTS)
    assert list(folder.var_names) == GENES and folder.var["gene_ids"].iloc[0] == "ENSG00000000001"


@pytest.mark.parametrize("name", ["loompy", "anndata"])
def test_loom(tmp_path, name):
    a = convert(tmp_path, REAL / f"{name}.loom")
    np.testing.assert_array_equal(dense(a.X), COUNTS)
    assert list(a.var_names) == GENES and list(a.obs_names) == CELLS


@pytest.mark.parametrize(("name", "samples"), [
    ("geo_flat_triples", ["GSM0001_sampleA", "GSM0002_sampleB"]),
    ("geo_nested", ["GSM0004_sampleA", "GSM0005_sampleB"]),
    ("cellranger_two_outs", ["patient1", "patient2"]),
])
def test_geo_and_cellranger_archives(tmp_path, name, samples):
    out = tmp_path / "out.h5ad"
    report = convert_source(REAL / f"{name}.tar", out, ConvertSpec(), dataset="x")
    a = ad.read_h5ad(out)
    assert report["samples"] == samples and a.n_obs == 2 * len(CELLS)
    for sample in samples:
        part = a[a.obs["sample"] == sample]
        np.testing.assert_array_equal(dense(part[:, GENES].X), COUNTS)
        assert [c.split(":", 1)[1] for c in part.obs_names] == CELLS


def test_geo_txt_triples_and_tables(tmp_path):
    a = convert(tmp_path, REAL / "geo_txt_triples.tar")
    np.testing.assert_array_equal(dense(a.X), COUNTS)
    assert list(a.var_names) == GENES
    b = convert(tmp_path, REAL / "geo_txt_tables.tar", transpose=True)
    assert sorted(set(b.obs["sample"])) == ["GSM0006_counts", "GSM0007_counts"]
    np.testing.assert_array_equal(dense(b[:, GENES].X), COUNTS)
    assert error(tmp_path, REAL / "geo_nested.tar", member="nothing*").startswith(
        "datasets.x.member: 'nothing*' matches no file of ")


def test_xlsx_sheet_and_forward_fill(tmp_path):
    entry = {"transpose": True, "obs_table": {"id_column": "{Plate#}_{Well position}"}}
    table = REAL / "cells_second_sheet.xlsx"
    with pytest.raises(CellDualityError, match="no sheet 'plates'; sheets: README, cells"):
        convert_source(REAL / "plate_counts.csv", tmp_path / "o.h5ad",
                       ConvertSpec.from_entry({**entry, "obs_table": {"sheet": "plates"}}), dataset="x",
                       obs_table=table)
    with pytest.raises(CellDualityError) as err:  # the first sheet has no such columns
        convert_source(REAL / "plate_counts.csv", tmp_path / "o.h5ad", ConvertSpec.from_entry(entry), dataset="x",
                       obs_table=table)
    assert str(err.value).startswith("datasets.x.obs_table.id_column: ")
    entry["obs_table"]["sheet"] = "cells"
    with pytest.raises(CellDualityError) as err:  # Plate# written once per block
        convert_source(REAL / "plate_counts.csv", tmp_path / "o.h5ad", ConvertSpec.from_entry(entry), dataset="x",
                       obs_table=table)
    assert "lists cell id '_A2' more than once" in str(err.value) and "obs_table.forward_fill" in str(err.value)
    entry["obs_table"]["forward_fill"] = ["Plate#"]
    convert_source(REAL / "plate_counts.csv", tmp_path / "o.h5ad", ConvertSpec.from_entry(entry), dataset="x",
                   obs_table=table)
    a = ad.read_h5ad(tmp_path / "o.h5ad")
    assert a.obs["Sample name"].value_counts().to_dict() == {"resistant": 20, "sensitive": 20}
    assert a.obs.loc["P2_B10", "Sample name"] == "sensitive"


@pytest.mark.parametrize("name", ["repeated_gene_cells_by_genes", "repeated_gene_genes_by_cells"])
def test_repeated_gene_obeys_duplicate_genes(tmp_path, name):
    a = convert(tmp_path, REAL / f"{name}.csv", transpose="genes_by" in name)
    assert list(a.var_names).count("HES4") == 2  # as written: no HES4.1 invented
    ds = {"labels": {}}
    with pytest.raises(CellDualityError, match="duplicate gene symbols"):
        preprocess(a, ds, PreprocessSettings(min_genes=0, duplicate_genes="error"), "x", where="x")
    summed, _ = preprocess(a, ds, PreprocessSettings(min_genes=0, duplicate_genes="sum", expression="counts"),
                           "x", where="x")
    assert list(summed.var_names).count("HES4") == 1


def test_a_text_file_named_h5ad(tmp_path):
    message = error(tmp_path, REAL / "not_really.h5ad", source="https://example.org/data/cells.h5ad")
    assert message.startswith("datasets.x.source: cells.h5ad is named .h5ad but") and "a text table" in message
    report = tmp_path / "r.json"
    with pytest.raises(CellDualityError, match="is named .h5ad"):
        convert_file(REAL / "not_really.h5ad", tmp_path / "out.h5ad", report, {"source": "cells.h5ad"}, dataset="x")
    assert not report.exists()


def test_members_of_one_kind_that_are_not_all_matrices(tmp_path):
    """A tar of a counts table and a cell table (both .csv.gz): read as samples, the cell table fails, and the
    line says which keys pick the matrix and the table."""
    import gzip
    import tarfile

    counts = pd.DataFrame(COUNTS[:, :5].astype(int), index=CELLS, columns=GENES[:5])
    with tarfile.open(tmp_path / "series.tar", "w") as tar:
        for name, frame in (("GSM1_counts.csv.gz", counts), ("GSM1_cells.csv.gz", COLDATA)):
            path = tmp_path / name
            path.write_bytes(gzip.compress(frame.to_csv().encode()))
            tar.add(path, arcname=name)
    message = error(tmp_path, tmp_path / "series.tar")
    assert "not a number" in message and "set member to the matrix files, and obs_table.member" in message
    a = convert(tmp_path, tmp_path / "series.tar", member="*_counts.csv.gz", obs_table={"member": "*_cells.csv.gz"})
    assert list(a.obs["cell_type"].astype(str))[:2] == list(COLDATA["cell_type"])[:2]
