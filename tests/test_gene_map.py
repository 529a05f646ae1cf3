"""datasets.<name>.gene_map: the builtin mouse_to_human ortholog table (resources/orthologs/), a path to a TSV,
the QC counts of unmapped genes, and one-line errors naming the setting."""

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_adata

from cellduality.data.preprocess import GENE_MAPS, PreprocessSettings, load_gene_map, preprocess, preprocess_file
from cellduality.errors import CellDualityError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = PreprocessSettings(min_genes=1)
MOUSE = {"species": "mouse", "gene_map": "mouse_to_human", "labels": {"cell_type": "celltype"}, "metadata": {},
         "constants": {}}
# one-to-one (Cd3e, Ms4a1, Actb, Cd19, mt-Co1), the same-named pair of a many-to-one group (Gapdh, beside
# Gm10358 - GAPDH), no ortholog (Gm42418, Xist), one-to-many (Cd8b1: CD8B, CD8B2), many-to-one (Ins1, Ins2: INS)
GENES = ["Cd3e", "Ms4a1", "Actb", "Cd19", "mt-Co1", "Gapdh", "Gm42418", "Xist", "Cd8b1", "Ins1", "Ins2"]
MAPPED = {"Cd3e": "CD3E", "Ms4a1": "MS4A1", "Actb": "ACTB", "Cd19": "CD19", "mt-Co1": "MT-CO1", "Gapdh": "GAPDH"}


@pytest.fixture
def mouse_adata():
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(20, len(GENES))).astype(np.float32)
    X[:, 0] += 1
    obs = pd.DataFrame({"celltype": rng.choice(["B", "T"], 20)})
    return make_adata(X, genes=list(GENES), obs=obs)


def run(adata, ds=MOUSE, settings=SETTINGS):
    return preprocess(adata, ds, settings, "d", where="in.h5ad")


def test_mouse_symbols_become_upper_cased_human_orthologs(mouse_adata):
    out, report = run(mouse_adata)
    assert list(out.var_names) == list(MAPPED.values())  # var order kept; unmapped genes dropped
    raw = mouse_adata.X.toarray()
    expected = np.log1p(1e4 * raw[:, 0] / raw[:, :6].sum(1))  # normalized over the mapped genes only
    np.testing.assert_allclose(out[:, "CD3E"].X.toarray().ravel(), expected, rtol=1e-5)
    assert report.dropped["genes_without_ortholog"] == 5  # Gm42418, Xist, Cd8b1, Ins1, Ins2
    assert report.gene_map == {"gene_map": "mouse_to_human", "genes_named": 11, "genes_mapped": 6,
                               "fraction_mapped": round(6 / 11, 4)}
    assert out.uns["cellduality_preprocess"]["gene_map"]["genes_mapped"] == 6


def test_mapped_mitochondrial_genes_count_for_the_mito_filter(mouse_adata):
    X = mouse_adata.X.toarray()
    X[0, 4] = 1000  # cell0 is almost all mt-Co1 (MT-CO1 after mapping)
    mouse_adata.X = X
    out, report = run(mouse_adata, settings=SETTINGS.replace(max_pct_mito=50))
    assert "cell0" not in out.obs_names and report.dropped["cells_high_mito"] == 1


def test_upper_cased_mouse_symbols_are_found_case_insensitively(mouse_adata):
    mouse_adata.var_names = [g.upper() for g in GENES]
    out, _ = run(mouse_adata)
    assert list(out.var_names) == list(MAPPED.values())


def test_without_gene_map_mouse_symbols_keep_their_case(mouse_adata):
    out, report = run(mouse_adata, {**MOUSE, "gene_map": None})
    assert list(out.var_names) == GENES and report.gene_map == {}


def test_symbol_column_and_ensembl_var_names(mouse_adata):
    mouse_adata.var["symbol"] = list(GENES)
    mouse_adata.var_names = [f"ENSMUSG{i:011d}" for i in range(len(GENES))]
    out, _ = run(mouse_adata, {**MOUSE, "gene_symbol_key": "symbol"})
    assert list(out.var_names) == list(MAPPED.values())
    with pytest.raises(CellDualityError, match="gene_map mouse_to_human maps gene symbols but the var_names are "
                                               "Ensembl ids; set datasets.d.gene_symbol_key"):
        run(mouse_adata)


def test_a_path_to_the_shipped_table_works_like_the_name(mouse_adata):
    out, report = run(mouse_adata, {**MOUSE, "gene_map": str(GENE_MAPS["mouse_to_human"])})
    assert list(out.var_names) == list(MAPPED.values()) and report.dropped["genes_without_ortholog"] == 5


@pytest.mark.parametrize("gz", [False, True])
def test_two_column_tsv_still_maps_ids_to_symbols(mouse_adata, tmp_path, gz):
    ids = [f"ENSMUSG{i:011d}" for i in range(len(GENES))]
    mouse_adata.var_names = ids
    text = "".join(f"{i}\t{g}\n" for i, g in zip(ids[:-1], GENES)) + f"{ids[0]}\tIgnored\n"  # first row wins
    path = tmp_path / ("map.tsv.gz" if gz else "map.tsv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    out, report = run(mouse_adata, {**MOUSE, "gene_map": str(path)})
    assert list(out.var_names) == GENES[:-1]  # a mouse id -> symbol map: mouse symbols keep their case
    assert report.dropped["genes_not_in_gene_map"] == 1 and "genes_without_ortholog" not in report.dropped
    human = {**MOUSE, "species": "human", "gene_map": str(path)}
    assert run(mouse_adata, human)[0].var_names[0] == "CD3E"


def test_few_mapped_genes_is_a_warning(mouse_adata, caplog, capfd):
    mouse_adata.var_names = [f"Gene{i}__chr1" for i in range(len(GENES) - 1)] + ["Cd3e"]
    with caplog.at_level("WARNING"):
        out, report = run(mouse_adata)
    assert list(out.var_names) == ["CD3E"] and report.dropped["genes_without_ortholog"] == 10
    assert "gives a symbol to only 1 of 11 genes (9%; unmapped e.g. Gene0__chr1" in caplog.text
    assert "cellduality warning: " in capfd.readouterr().err
    caplog.clear()
    with caplog.at_level("WARNING"):
        run(make_adata(np.ones((3, 2)), genes=["Cd3e", "Gm42418"]), MOUSE)  # half mapped: no warning
    assert "gives a symbol" not in caplog.text


def one_line_error(adata, value, match):
    with pytest.raises(CellDualityError, match=match) as err:
        run(adata, {**MOUSE, "gene_map": value})
    assert "\n" not in str(err.value) and "datasets.d.gene_map" in str(err.value)


def test_unknown_name_missing_file_and_malformed_tables_are_one_line_errors(mouse_adata, tmp_path):
    one_line_error(mouse_adata, "mouse_to_humn", r"'mouse_to_humn' is neither a builtin gene map \(mouse_to_human\)")
    one_line_error(mouse_adata, str(tmp_path / "no.tsv"), "gene_map: file .*no.tsv not found")
    (tmp_path / "one.tsv").write_text("Cd3e\nActb\n")
    one_line_error(mouse_adata, str(tmp_path / "one.tsv"), "needs two tab-separated columns .*found 1 column")
    (tmp_path / "empty.tsv").write_text("")
    one_line_error(mouse_adata, str(tmp_path / "empty.tsv"), "empty.tsv is empty")
    (tmp_path / "ragged.tsv").write_text("a\tb\nc\td\te\tf\n")
    one_line_error(mouse_adata, str(tmp_path / "ragged.tsv"), "is not a readable tab-separated table")
    (tmp_path / "bad.tsv.gz").write_bytes(b"not gzip at all")
    one_line_error(mouse_adata, str(tmp_path / "bad.tsv.gz"), "bad.tsv.gz is not a readable tab-separated table")
    (tmp_path / "orth.tsv").write_text("mouse_symbol\thuman_symbol\torthology\nIns1\tINS\tmany2one\n")
    one_line_error(mouse_adata, str(tmp_path / "orth.tsv"), "orthology column but no one2one rows")


def test_qc_summary_file_counts_genes_without_ortholog(mouse_adata, tmp_path):
    src = tmp_path / "in.h5ad"
    mouse_adata.write_h5ad(src)
    preprocess_file(src, tmp_path / "p.h5ad", tmp_path / "qc.json", MOUSE, SETTINGS, "d")
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["dropped"]["genes_without_ortholog"] == 5 and qc["gene_map"]["genes_mapped"] == 6


def test_shipped_table_is_one_to_one():
    table = load_gene_map("mouse_to_human", "w", "d")
    assert table.target == "human" and len(table.mapping) == 17_336
    assert table.mapping.index.is_unique and table.mapping.is_unique
    assert table.mapping["Cd3e"] == "CD3E" and "Ins1" not in table.mapping and "Cd8b1" not in table.mapping


def test_paper_mouse_datasets_use_the_builtin_map():
    datasets = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["datasets"]
    mouse = {name for name, ds in datasets.items() if ds.get("species") == "mouse"}
    assert mouse == {"Ma-2020", "Bastidas-Ponce-2019", "GSE110894"}
    assert all(datasets[name].get("gene_map") == "mouse_to_human" for name in mouse)


def test_build_script_reproduces_the_shipped_table():
    script = ROOT / "resources" / "orthologs" / "build_mouse_to_human.py"
    spec = importlib.util.spec_from_file_location("build_mouse_to_human", script)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    if importlib.util.find_spec("celltypist") is None:
        pytest.skip("celltypist (the table's source) is not installed")
    source = build.default_source()
    if not source.is_file():
        pytest.skip(f"{source} is not there")
    assert build.build(source) == GENE_MAPS["mouse_to_human"].read_bytes()
