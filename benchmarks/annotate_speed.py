"""Annotation speed and accuracy: ``cellduality.annotate`` beside CellTypist on the same cells.

    python benchmarks/annotate_speed.py --results results [--model results/models/sft/rep0] [--scale 20]

Reads a finished embedded run (``snakemake --cores 2``): the processed pbmc68k cells (log-normalized) and their
train/test split from the cell-sentence table. Annotates the held-out test cells with the run's model
(``cellduality.annotate``: preprocessing, cell sentences, one scoring pass per cell), then the same test cells
repeated ``--scale`` times (throughput at a larger size). CellTypist (when installed: ``pip install celltypist``)
is trained on the same train cells (logistic regression on the same log-normalized expression) and predicts the
same test cells. Prints one figure per line (``name: value unit``): cells/s (wall, model loading included) and
accuracy against the test cells' labels, for both tools.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def figure(name: str, value, unit: str = "") -> None:
    print(f"{name}: {value} {unit}".rstrip(), flush=True)


def with_context(model: Path, table: Path) -> Path:
    """The model folder, or, when its card predates the recording of prompt context, a copy whose card holds the
    context of the run's annotation table (so annotate sends the prompts the model was trained on)."""
    import json
    import shutil
    import tempfile

    from cellduality.training.model_card import CARD, prompt_context

    card = json.loads((model / CARD).read_text())
    if "context" in card:
        return model
    copy = Path(tempfile.mkdtemp(prefix="annotate_speed_")) / model.name
    shutil.copytree(model, copy)
    card["context"] = prompt_context([table])
    (copy / CARD).write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    print(f"(the model card predates prompt context: using a copy with the context of {table})", flush=True)
    return copy


def main() -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    from cellduality.evaluation.annotate import annotate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", type=Path, help="default: <results>/models/sft/rep0")
    parser.add_argument("--dataset", default="pbmc68k")
    parser.add_argument("--scale", type=int, default=20, help="test cells repeated this often for the throughput run")
    args = parser.parse_args()
    model = args.model or args.results / "models" / "sft" / "rep0"
    model = with_context(model, args.results / "tasks" / "annotation" / f"{args.dataset}.parquet")
    cells = ad.read_h5ad(args.results / "processed" / f"{args.dataset}.h5ad")
    split = pd.read_parquet(args.results / "cell_sentences" / f"{args.dataset}.parquet",
                            columns=["cell_id", "split"]).set_index("cell_id")["split"]
    cells.obs["split"] = split.reindex(cells.obs_names).to_numpy()
    train, test = cells[cells.obs["split"] == "train"].copy(), cells[cells.obs["split"] == "test"].copy()
    truth = test.obs["cell_type"].astype(str).to_numpy()
    figure("test_cells", test.n_obs, "cells")

    start = time.perf_counter()
    annotated = annotate(test, model, copy=True)
    seconds = time.perf_counter() - start
    figure("cellduality_cells_per_s", round(test.n_obs / seconds, 1), "cells/s")
    figure("cellduality_accuracy", round(float((annotated.obs["cellduality_label"].astype(str) == truth).mean()), 3))
    figure("cellduality_median_confidence", round(float(np.median(annotated.obs["cellduality_confidence"])), 3))

    many = ad.concat([test] * args.scale, index_unique="-")
    start = time.perf_counter()
    annotate(many, model, copy=True)
    seconds = time.perf_counter() - start
    figure("cellduality_cells_per_s_at_scale", round(many.n_obs / seconds, 1), f"cells/s ({many.n_obs} cells)")

    try:
        import celltypist
    except ImportError:
        figure("celltypist", "not installed (pip install celltypist)")
        return
    start = time.perf_counter()
    try:
        trained = celltypist.train(train, labels="cell_type", check_expression=False, n_jobs=2)
        figure("celltypist_classifier", "logistic regression")
    except TypeError:  # celltypist 1.7 passes multi_class, which scikit-learn >= 1.8 no longer takes
        start = time.perf_counter()
        trained = celltypist.train(train, labels="cell_type", check_expression=False, n_jobs=2, use_SGD=True)
        figure("celltypist_classifier", "SGD logistic regression (use_SGD: its LR path fails on this scikit-learn)")
    figure("celltypist_train_s", round(time.perf_counter() - start, 2), "s")
    start = time.perf_counter()
    predicted = celltypist.annotate(test, model=trained).predicted_labels["predicted_labels"].astype(str)
    seconds = time.perf_counter() - start
    figure("celltypist_cells_per_s", round(test.n_obs / seconds, 1), "cells/s")
    figure("celltypist_accuracy", round(float((predicted.to_numpy() == truth).mean()), 3))
    start = time.perf_counter()
    celltypist.annotate(many, model=trained)
    figure("celltypist_cells_per_s_at_scale", round(many.n_obs / (time.perf_counter() - start), 1),
           f"cells/s ({many.n_obs} cells)")


if __name__ == "__main__":
    main()
