"""Every dataset of config/paper.yaml, as a small look-alike built the way the real download is (format, archive
members, cell tables, column names, value kinds), runs convert -> preprocess -> cell sentences -> task tables with
that entry's exact catalog fields and the paper's settings (min_genes 200, min_cells 8, top-100 sentences).

The two Hemberg-lab SingleCellExperiments come from R (tests/data/real/lookalike_*.rds, written by
tests/data/real/make_fixtures.R); the rest are written here with anndata, pandas, openpyxl, gzip and tarfile."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellduality.config import load_config
from cellduality.data.convert import convert_file
from cellduality.data.preprocess import PreprocessSettings, preprocess_file
from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table
from cellduality.data.splits import SplitSettings
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import write_task_tables

ROOT = Path(__file__).parents[1]
REAL = ROOT / "tests" / "data" / "real"
CONFIG = load_config(ROOT / "config" / "paper.yaml")
HUMAN = (REAL / "genes_lookalike.txt").read_text().split()
ORTHOLOGS = pd.read_csv(ROOT / "resources" / "orthologs" / "mouse_to_human.tsv.gz", sep="\t", comment="#")
MOUSE = ORTHOLOGS.loc[ORTHOLOGS["orthology"] == "one2one", "mouse_symbol"].iloc[:300].tolist()
N = 60  # cells per look-alike


def counts(n_cells: int = N, n_genes: int = 300, seed: int = 0) -> np.ndarray:
    """Integer counts with ~95% of genes detected per cell (the paper's QC keeps cells with >= 200 genes)."""
    return np.random.default_rng(seed).poisson(3, size=(n_cells, n_genes)).astype(np.float32)


def barcodes(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def mtx_folder(X: np.ndarray, cells: list[str], genes: list[str]) -> dict[str, bytes]:
    """A Cell Ranger v3 filtered_feature_bc_matrix/ (gzipped triples)."""
    from scipy.io import mmwrite

    buffer = io.BytesIO()
    mmwrite(buffer, sparse.coo_matrix(X.T))
    features = "".join(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(genes))
    return {"matrix.mtx.gz": gzip.compress(buffer.getvalue()), "barcodes.tsv.gz": gzip.compress(
        "".join(f"{c}\n" for c in cells).encode()), "features.tsv.gz": gzip.compress(features.encode())}


# ------------------------------------------------------------------------------------------ look-alikes
def he_2020_liver(tmp: Path):
    """GEO GSE159929_RAW.tar: GSM*_<Tissue>_Counts.csv.gz (genes x cells); AHCA annotation txt (tab, ids
    <Tissue>_cDNA_<barcode>, column Cell_type_in_each_tissue)."""
    cells = barcodes(N)
    with tarfile.open(tmp / "raw", "w") as tar:
        for gsm, tissue in (("GSM4850580", "Liver"), ("GSM4850581", "Lung")):
            table = pd.DataFrame(counts().T.astype(int), index=HUMAN, columns=cells)
            add(tar, f"{gsm}_{tissue}_Counts.csv.gz", gzip.compress(table.to_csv().encode()))
    types = np.resize(["Hepatocyte", "Kupffer cell", "Endothelial cell", "T cell"], N)
    ann = pd.DataFrame({"Cell_barcode": [f"{t}_cDNA_{c}" for t in ("Liver", "Lung") for c in cells],
                        "Tissue": ["Liver"] * N + ["Lung"] * N,
                        "Cell_type_in_all_tissues": [*types, *types], "Cell_type_in_each_tissue": [*types, *types]})
    ann.to_csv(tmp / "obs", sep="\t", index=False)
    return tmp / "raw", tmp / "obs"


def rds(name: str):
    return lambda tmp: (REAL / f"lookalike_{name}.rds", None)


def h5ad(obs: dict, genes: list[str], X: np.ndarray | None = None, layers: dict | None = None, gz: bool = False):
    def build(tmp: Path):
        adata = ad.AnnData(sparse.csr_matrix(counts(len(next(iter(obs.values())))) if X is None else X),
                           obs=pd.DataFrame(obs, index=barcodes(len(next(iter(obs.values()))))),
                           var=pd.DataFrame(index=genes))
        for key, value in (layers or {}).items():
            adata.layers[key] = value(adata)
        adata.write_h5ad(tmp / "raw.h5ad")
        if gz:
            (tmp / "raw").write_bytes(gzip.compress((tmp / "raw.h5ad").read_bytes()))
            return tmp / "raw", None
        return tmp / "raw.h5ad", None
    return build


def lognorm(adata: ad.AnnData) -> sparse.csr_matrix:
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    X = sparse.diags(1e4 / np.asarray(X.sum(1)).ravel()) @ X
    X.data = np.log1p(X.data)
    return X.tocsr()


def human_immune(tmp: Path):
    """The pan-immune atlas object: X log-normalized, layers['counts'], obs Manually_curated_celltype/Organ/Donor."""
    types = np.resize(["Tem/Trm cytotoxic T cells", "Naive B cells", "Classical monocytes", "NK_CD16+",
                       "Alveolar macrophages", "Plasma cells"], N)
    n = 5 * N  # CellPuzzles needs batches of 5 distinct types in the test split
    types = np.resize(types, n)
    adata = ad.AnnData(sparse.csr_matrix(counts(n)), obs=pd.DataFrame(
        {"Manually_curated_celltype": types, "Organ": np.resize(["SPL", "LNG", "BMA"], n),
         "Donor": np.resize(["D496", "A29"], n)}, index=barcodes(n)), var=pd.DataFrame(index=HUMAN))
    adata.layers["counts"] = adata.X.copy()
    adata.X = lognorm(adata)
    adata.write_h5ad(tmp / "raw.h5ad")
    return tmp / "raw.h5ad", None


def l1000(tmp: Path):
    """chemCPA lincs_full.h5ad.gz: a gzipped h5ad of bulk L1000 profiles (log2-scale values), obs pert_id (DMSO
    vehicle), cell_id, pert_dose."""
    rng = np.random.default_rng(1)
    X = np.clip(rng.normal(8, 2, size=(N, 300)), 0.1, 15).astype(np.float32)
    obs = {"pert_id": np.resize(["DMSO", "BRD-K12345678", "BRD-K87654321"], N),
           "cell_id": np.resize(["A549", "MCF7"], N), "pert_dose": np.resize(["10.0", "1.0", "0.0"], N)}
    return h5ad(obs, HUMAN, X=X, gz=True)(tmp)


def gse149383(tmp: Path):
    """GSE149383_RAW.tar: one GSM*_<sample>_filtered_feature_bc_matrices.tar.gz per sample, each a Cell Ranger
    filtered_feature_bc_matrix/ folder."""
    with tarfile.open(tmp / "raw", "w") as tar:
        for i, (gsm, sample) in enumerate((("GSM3972651", "PC9D0"), ("GSM3972652", "PC9D3Erl"),
                                           ("GSM3972653", "PC9D11Erl"))):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w:gz") as sub:
                for name, data in mtx_folder(counts(seed=i), barcodes(N, seed=i), HUMAN).items():
                    add(sub, f"filtered_feature_bc_matrix/{name}", data)
            add(tar, f"{gsm}_{sample}_filtered_feature_bc_matrices.tar.gz", inner.getvalue())
    return tmp / "raw", None


def gse117872(tmp: Path):
    """GSE117872_good_Data_TPM.txt.gz (genes x cells, tab, TPM) + _cellinfo.txt.gz (groups, cluster, origin)."""
    cells = [f"HN{o}{p}_{i}" for o in (120, 137) for p in ("P", "CR") for i in range(15)]
    tpm = pd.DataFrame(counts().T * 37.25, index=HUMAN, columns=cells)
    (tmp / "raw").write_bytes(gzip.compress(tpm.to_csv(sep="\t").encode()))
    info = pd.DataFrame({"groups": cells, "cluster": np.resize(["Sensitive", "Resistant", "Holiday"], N),
                         "origin": [c[:5] for c in cells]})
    (tmp / "obs").write_bytes(gzip.compress(info.to_csv(sep="\t", index=False).encode()))
    return tmp / "raw", tmp / "obs"


def gse110894(tmp: Path):
    """GSE110894_gene_count.csv.gz (mouse genes x cells <plate>_<well>) + SingleCellInfo.xlsx (three title rows,
    Plate# written once atop each plate's block, Well position, Sample name)."""
    wells = [f"{r}{c}" for r in "ABC" for c in range(1, 11)]
    cells = [f"{p}_{w}" for p in ("P1", "P2") for w in wells]
    pd.DataFrame(counts().T.astype(int), index=MOUSE, columns=cells).to_csv(tmp / "counts.csv")
    (tmp / "raw").write_bytes(gzip.compress((tmp / "counts.csv").read_bytes()))
    sheet = pd.DataFrame({"Plate#": [p if i % 30 == 0 else None for i, p in enumerate(c.split("_")[0] for c in cells)],
                          "Well position": [c.split("_")[1] for c in cells],
                          "Sample name": np.resize(["MLL-AF9 RESISTANT TO I-BET", "MLL-AF9 PARENTAL"], N)})
    with pd.ExcelWriter(tmp / "obs.xlsx") as writer:
        pd.DataFrame({"GSE110894": ["Single cell info", "CEL-Seq2", ""]}).to_excel(writer, index=False, header=False)
        sheet.to_excel(writer, index=False, startrow=3)
    return tmp / "raw", tmp / "obs.xlsx"


def sciplex3(tmp: Path):
    obs = {"perturbation": np.resize(["control", "Dex", "SAHA", "Nutlin"], N),
           "cell_line": np.resize(["A549", "K562", "MCF7"], N), "dose_value": np.resize(["0", "10", "100"], N),
           "dose_unit": "nM", "time": "24"}
    return h5ad(obs, HUMAN)(tmp)


BUILDERS = {
    "He-2020-Liver": he_2020_liver,
    "Segerstolpe-2016": rds("segerstolpe"),
    "Xin-2016": rds("xin"),
    "Human-Immune-2022": human_immune,
    "Ma-2020": h5ad({"cell_type": np.resize(["Basal", "Spinous", "IRS", "Medulla", "TAC-1"], N)}, MOUSE),
    "Bastidas-Ponce-2019": h5ad({"clusters": np.resize(["Ductal", "Ngn3 high EP", "Alpha", "Beta"], N),
                                 "clusters_coarse": np.resize(["Ductal", "EP", "Endocrine", "Endocrine"], N)},
                                MOUSE, layers={"spliced": lambda a: a.X.copy(), "unspliced": lambda a: a.X.copy()}),
    "L1000": l1000,
    "GSE149383": gse149383,
    "GSE117872": gse117872,
    "GSE110894": gse110894,
    "sciPlex3": sciplex3,
    "sciPlex3-ID": sciplex3,  # source dataset:sciPlex3 reuses sciPlex3's download
}


def test_every_paper_dataset_has_a_lookalike():
    assert set(BUILDERS) == set(CONFIG["datasets"])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_lookalike_runs_the_data_stage(tmp_path, name):
    entry = CONFIG["datasets"][name]
    raw, obs_table = BUILDERS[name](tmp_path)
    converted = convert_file(raw, tmp_path / "c.h5ad", tmp_path / "c.json", entry, dataset=name, obs_table=obs_table)
    assert converted["n_cells"] > 0 and not converted.get("cells_without_obs")
    report = preprocess_file(tmp_path / "c.h5ad", tmp_path / "p.h5ad", tmp_path / "qc.json", entry,
                             PreprocessSettings.from_config(CONFIG), name)
    processed = ad.read_h5ad(tmp_path / "p.h5ad")
    assert processed.n_obs > 0 and report.n_genes_out >= 200
    if entry["species"] == "mouse":  # symbols now human (the training vocabulary)
        assert set(processed.var_names) <= set(ORTHOLOGS["human_symbol"].str.upper())
        assert processed.n_vars > 0.9 * len(MOUSE)
    for column in entry["labels"]:
        assert processed.obs[column].notna().all(), column
    splits = write_sentence_table(tmp_path / "p.h5ad", tmp_path / "s.parquet", dataset=name,
                                  cell_sentence=CellSentenceSettings.from_config(CONFIG),
                                  splits=SplitSettings.from_config(CONFIG), role=entry["role"],
                                  ood_labels=entry["ood_labels"])
    assert sum(splits.values()) == processed.n_obs
    tasks = [t for t, names in CONFIG["tasks"].items() if name in names] or (
        ["perturbation"] if name == "sciPlex3-ID" else [])
    assert tasks, f"{name} serves no task of config/paper.yaml"
    for task in tasks:
        table = write_task_tables(tmp_path / "s.parquet", tmp_path / f"{task}.parquet", [task], required=[task],
                                  tables=TaskTableSettings.from_config(CONFIG),
                                  inpainting=InpaintingSettings.from_config(CONFIG),
                                  cellpuzzles=CellPuzzlesSettings.from_config(CONFIG),
                                  top_k=CONFIG["cell_sentence"]["top_k"])
        assert len(table) > 0


def test_sample_and_sheet_labels_follow_the_catalog(tmp_path):
    """What the recodes decide: GSE149383 sensitivity from the sample names, GSE110894's from the forward-filled
    sheet, Segerstolpe's low-quality cells dropped."""
    for name, want in (("GSE149383", {"Resistant": 2 * N, "Sensitive": N}),
                       ("GSE110894", {"Resistant": N // 2, "Sensitive": N // 2})):
        raw, obs_table = BUILDERS[name](tmp_path)
        convert_file(raw, tmp_path / f"{name}.h5ad", tmp_path / f"{name}.json", CONFIG["datasets"][name],
                     dataset=name, obs_table=obs_table)
        assert ad.read_h5ad(tmp_path / f"{name}.h5ad").obs["sensitivity"].value_counts().to_dict() == want
    report = convert_file(REAL / "lookalike_segerstolpe.rds", tmp_path / "s.h5ad", tmp_path / "s.json",
                          CONFIG["datasets"]["Segerstolpe-2016"], dataset="Segerstolpe-2016")
    assert report["cells_dropped_by_obs_filter"] == N // 3
