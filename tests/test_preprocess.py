import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import make_adata

from cellduality.data.preprocess import PreprocessSettings, expression_kind, preprocess, preprocess_file
from cellduality.errors import CellDualityError

DS = {"species": "human", "labels": {"cell_type": "celltype"}, "metadata": {}, "constants": {"tissue": "blood"}}
SETTINGS = PreprocessSettings(min_genes=1)  # the schema's defaults but for min_genes


def run(adata, ds=DS, settings=SETTINGS):
    return preprocess(adata, ds, settings, "d", where="in.h5ad")


def test_expression_kind_detection():
    assert expression_kind(sp.csr_matrix(np.array([[0, 2, 5.0]])), 10) == "counts"
    assert expression_kind(np.array([[0, 0.69, 1.1]]), 10) == "lognorm"
    assert expression_kind(np.array([[-0.3, 0.69, 1.1]]), 10) == "scaled"


def test_counts_are_normalized_and_log_transformed(counts_adata):
    out, report = run(counts_adata)
    assert report.input_kind == "counts" and report.matrix == "X"
    expected = np.log1p(counts_adata.X.toarray() / counts_adata.X.toarray().sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(out.X.toarray(), expected, rtol=1e-5)
    assert list(out.obs.columns) == ["cell_type", "tissue"]
    assert (out.obs["tissue"] == "blood").all()
    assert out.obs["cell_type"].tolist() == counts_adata.obs["celltype"].tolist()


def test_lognormalized_input_is_used_as_is(counts_adata):
    counts_adata.X = sp.csr_matrix(np.log1p(counts_adata.X.toarray()) / 2)
    out, report = run(counts_adata)
    assert report.input_kind == "lognorm"
    np.testing.assert_allclose(out.X.toarray(), counts_adata.X.toarray(), rtol=1e-6)


def test_scaled_input_uses_raw(counts_adata):
    counts_adata.raw = counts_adata.copy()
    counts_adata.X = sp.csr_matrix(counts_adata.X.toarray() - 1.5)
    out, report = run(counts_adata)
    assert report.matrix == "raw" and report.input_kind == "counts"


def test_scaled_without_raw_is_a_clear_error(counts_adata):
    counts_adata.X = counts_adata.X.toarray() - 1.5
    with pytest.raises(CellDualityError, match=r"in.h5ad: X looks scaled .* no \.raw; set datasets.d.layer"):
        run(counts_adata)


def test_named_layer_is_used_and_missing_layer_is_reported(counts_adata):
    counts_adata.layers["counts"] = counts_adata.X.copy()
    counts_adata.X = counts_adata.X.toarray() - 1.5
    out, report = run(counts_adata, {**DS, "layer": "counts"})
    assert report.matrix == "layer:counts"
    with pytest.raises(CellDualityError, match="layer 'umi' .* available layers: counts"):
        run(counts_adata, {**DS, "layer": "umi"})


def test_missing_label_column_names_it(counts_adata):
    with pytest.raises(CellDualityError, match="labels.cell_type names obs column 'cell_ontology'.*available: celltype"):
        run(counts_adata, {**DS, "labels": {"cell_type": "cell_ontology"}})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_rejected(counts_adata, bad):
    X = counts_adata.X.toarray()
    X[3, 4] = bad
    counts_adata.X = sp.csr_matrix(X)
    with pytest.raises(CellDualityError, match="1 NaN/infinite values"):
        run(counts_adata)


def test_empty_inputs_are_rejected():
    with pytest.raises(CellDualityError, match="empty"):
        run(make_adata(np.zeros((0, 3)), obs=pd.DataFrame({"celltype": []})))
    with pytest.raises(CellDualityError, match="every value of X is zero"):
        run(make_adata(np.zeros((3, 3))))


def test_duplicate_gene_policies(counts_adata):
    genes = [f"g{i}" for i in range(30)]
    genes[5] = genes[7] = "cd3e"  # duplicates after upper-casing too
    counts_adata.var_names = genes
    with pytest.raises(CellDualityError, match=r"1 duplicate gene symbols \(e.g. CD3E\); set preprocess.duplicate_genes"):
        run(counts_adata, settings=SETTINGS.replace(duplicate_genes="error"))
    out, report = run(counts_adata)
    assert report.duplicate_genes == 1 and "CD3E" in out.var_names and "CD3E-1" in out.var_names
    out, _ = run(counts_adata, settings=SETTINGS.replace(duplicate_genes="sum", target_sum=1.0))
    assert out.n_vars == 29 and list(out.var_names).count("CD3E") == 1
    raw = counts_adata.X.toarray()
    expected = np.log1p((raw[:, 5] + raw[:, 7]) / raw.sum(1))
    np.testing.assert_allclose(out[:, "CD3E"].X.toarray().ravel(), expected, rtol=1e-5)


def test_ensembl_ids_need_a_symbol_column(counts_adata):
    counts_adata.var_names = [f"ENSG{i:011d}" for i in range(30)]
    with pytest.raises(CellDualityError, match="Ensembl ids; set datasets.d.gene_symbol_key"):
        run(counts_adata)
    counts_adata.var["symbol"] = [f"Sym{i}" for i in range(30)]
    out, _ = run(counts_adata, {**DS, "gene_symbol_key": "symbol"})
    assert out.var_names[0] == "SYM0"
    with pytest.raises(CellDualityError, match="gene_symbol_key 'gene_name' is not a var column; available: symbol"):
        run(counts_adata, {**DS, "gene_symbol_key": "gene_name"})


def test_qc_drops_cells_and_genes(counts_adata):
    X = counts_adata.X.toarray()
    X[0] = 0
    X[0, 0] = 1  # a cell expressing one gene
    X[:, 29] = 0  # a gene expressed nowhere
    counts_adata.X = sp.csr_matrix(X)
    out, report = run(counts_adata, settings=SETTINGS.replace(min_genes=2))
    assert "cell0" not in out.obs_names and "GENE29" not in out.var_names
    assert report.dropped["cells_qc"] == 1 and report.dropped["genes_qc"] == 1


def test_mouse_symbols_keep_case(counts_adata):
    counts_adata.var_names = [f"Gm{i}" for i in range(30)]
    out, _ = run(counts_adata, {**DS, "species": "mouse"})
    assert out.var_names[0] == "Gm0"


def test_preprocess_file_writes_outputs_atomically(counts_adata, tmp_path):
    src, dest, qc = tmp_path / "in.h5ad", tmp_path / "out" / "p.h5ad", tmp_path / "out" / "qc.json"
    counts_adata.write_h5ad(src)
    report = preprocess_file(src, dest, qc, DS, SETTINGS, "d")
    assert dest.exists() and json.loads(qc.read_text())["n_cells_out"] == report.n_cells_out == 40
    bad_ds = {**DS, "labels": {"cell_type": "missing"}}
    dest.unlink()
    qc.unlink()
    with pytest.raises(CellDualityError):
        preprocess_file(src, dest, qc, bad_ds, SETTINGS, "d")
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # no partial or temp files left


def test_missing_or_corrupt_input_file(tmp_path):
    with pytest.raises(CellDualityError, match="nope.h5ad not found"):
        preprocess_file(tmp_path / "nope.h5ad", tmp_path / "o.h5ad", tmp_path / "q.json", DS, SETTINGS, "d")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("not hdf5")
    with pytest.raises(CellDualityError, match="junk.h5ad is not a readable h5ad file"):
        preprocess_file(junk, tmp_path / "o.h5ad", tmp_path / "q.json", DS, SETTINGS, "d")


def test_missing_labels_are_dropped_with_a_count_or_fail(counts_adata, caplog, capfd):
    labels = counts_adata.obs["celltype"].astype(object).to_numpy()
    labels[[1, 4]] = np.nan
    labels[7] = " "
    counts_adata.obs["celltype"] = pd.Categorical(labels)
    with caplog.at_level("WARNING"):
        out, report = run(counts_adata)
    assert out.n_obs == counts_adata.n_obs - 3 and not {"cell1", "cell4", "cell7"} & set(out.obs_names)
    assert report.dropped["cells_missing_cell_type"] == 3
    assert "dropping 3 of" in caplog.text and "'celltype'" in caplog.text
    assert "cellduality warning: " in capfd.readouterr().err  # on the terminal too, not only in the rule log
    with pytest.raises(CellDualityError, match="3 of .* cells have no value in obs column 'celltype'.*missing_labels"):
        run(counts_adata, settings=SETTINGS.replace(missing_labels="error"))
    counts_adata.obs["celltype"] = pd.Categorical([np.nan] * counts_adata.n_obs, categories=["T"])
    with pytest.raises(CellDualityError, match="every cell lacks a label"):
        run(counts_adata)


def test_qc_that_removes_every_gene_fails_here_with_the_setting(counts_adata):
    with pytest.raises(CellDualityError, match="no genes pass QC \\(preprocess.min_cells=10000"):
        run(counts_adata, settings=SETTINGS.replace(min_cells=10_000))


def test_declared_expression_kinds(counts_adata, caplog):
    X = counts_adata.X.toarray().astype(np.float32)
    tpm = counts_adata.copy()
    tpm.X = sp.csr_matrix(X * 137.5)  # TPM-like: normalized, not logged, non-integer
    with caplog.at_level("INFO"):
        auto, report = run(tpm)
    assert report.input_kind == "tpm" and report.expression_setting == "auto"  # beyond any log value: unlogged
    assert "expression detected as tpm" in caplog.text and "read as TPM/RPKM-like" in caplog.text
    out, report = run(tpm, settings=SETTINGS.replace(expression="tpm"))
    assert report.input_kind == "tpm" and report.expression_setting == "tpm"
    np.testing.assert_allclose(auto.X.toarray(), out.X.toarray())
    np.testing.assert_allclose(out.X.toarray(), np.log1p(X[out.obs_names.str.removeprefix("cell").astype(int)]
                                                          [:, :out.n_vars] * 137.5), rtol=1e-5)
    as_log, report = run(counts_adata, settings=SETTINGS.replace(expression="log1p"))  # integers kept as they are
    assert report.input_kind == "lognorm" and as_log.X.max() == pytest.approx(X.max())
    _, report = run(counts_adata, settings=SETTINGS.replace(expression="counts"))
    assert report.input_kind == "counts"
    scaled = counts_adata.copy()
    scaled.X = sp.csr_matrix(X - 1.0)
    with pytest.raises(CellDualityError, match="preprocess.expression is counts but X has negative values"):
        run(scaled, settings=SETTINGS.replace(expression="counts"))
