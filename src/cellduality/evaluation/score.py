"""Score parsed predictions (models and baselines alike) per model, task, dataset and split.

Output: a long table ``model, task, dataset, split, metric, value`` (``RESULT_COLUMNS``), the input of the
paper-style tables. Classification: accuracy, macro-F1, format-error rate. CellPuzzles: cell- and batch-level
accuracy. Generation and perturbation: generated sentences and the real reference cells' sentences are
both turned into expression by the dataset's rank->expression fit (so they live in the same space), embedded
with a PCA fit on the real cells, and compared by kNN accuracy and Gromov-Wasserstein (generation) or
scFID, MMD and Wasserstein (perturbation). Format errors are excluded from distribution metrics and counted
in ``format_error_rate``. Accuracies (``accuracy``, ``cell_accuracy``, ``batch_accuracy``, ``knn_acc_k*``) come
with a 95% bootstrap CI over prompts, ``<metric>_ci_low`` and ``<metric>_ci_high``
(:mod:`cellduality.evaluation.intervals`); :func:`chance_results` gives the ``chance`` rows of label tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellduality.evaluation.classification_metrics import (
    cellpuzzles_scores,
    classification_scores,
    confusion_matrix,
    is_missing,
    puzzle_counts,
)
from cellduality.evaluation.expression_inversion import RankExpressionFit, fit_from_files
from cellduality.evaluation.generation_metrics import (
    KNN_KS,
    generation_scores,
    knn_recognised,
    make_embedding,
    perturbation_scores,
)
from cellduality.evaluation.intervals import chance_puzzle_scores, chance_scores, ci_scores
from cellduality.evaluation.settings import EmbeddingSettings
from cellduality.tasks.registry import get_task, tasks_with
from cellduality.tasks.schema import decode_value, read_task_frame

log = logging.getLogger(__name__)
RESULT_COLUMNS = ("model", "task", "dataset", "split", "metric", "value")
GENERATIVE_METRICS = ("generation", "perturbation")


def parsed_predictions(group: pd.DataFrame) -> list:
    """The prediction column with every format error as None."""
    return [None if is_missing(p) else p for p in group["prediction"]]


def attach_references(pred: pd.DataFrame, task_tables: Sequence[str | Path]) -> pd.DataFrame:
    """Add each prompt's reference sentence (the real answer cell) to predictions that lack it."""
    if "reference_sentence" in pred:
        return pred
    refs = pd.concat([read_task_frame(t, columns=["prompt_id", "reference_sentence"]) for t in task_tables])
    return pred.merge(refs.drop_duplicates("prompt_id"), on="prompt_id", how="left")


class ExpressionSpace:
    """Per-dataset rank->expression fits (fit once, on the train cells) for generated-cell metrics."""

    def __init__(self, data: Mapping[str, Mapping[str, str]], seed: int = 0) -> None:
        self.data, self.seed = data, seed
        self._fits: dict[str, RankExpressionFit] = {}

    def fit(self, dataset: str) -> RankExpressionFit:
        if dataset not in self._fits:
            files = self.data[dataset]
            self._fits[dataset] = fit_from_files(files["h5ad"], files["sentences"], dataset=dataset, seed=self.seed)
        return self._fits[dataset]

    def embed_references(self, dataset: str, sentences: Sequence[str], embedding: EmbeddingSettings,
                         seed: int = 0) -> tuple[RankExpressionFit, Any, np.ndarray]:
        """The real cells ``sentences`` of ``dataset`` inverted to expression, the embedding
        (``evaluation.embedding``) fit on them, and their embedded rows: where generated cells are compared."""
        fit = self.fit(dataset)
        real = fit.invert(list(sentences)).X
        space = make_embedding(real, fit.genes, method=embedding.method, n_components=embedding.n_components,
                               scgpt_checkpoint=embedding.scgpt_checkpoint, seed=seed)
        return fit, space, space.transform(real)


def _generative_scores(metric: str, group: pd.DataFrame, space: ExpressionSpace, embedding: EmbeddingSettings,
                       seed: int) -> dict[str, float]:
    ok = group[~group["prediction"].map(is_missing)]
    scores = {"format_error_rate": 1 - len(ok) / len(group)}
    if len(ok) < 2:
        return scores
    scores.update(distinct_cells(ok))
    references = group.drop_duplicates("prompt_id")  # a prompt's samples share one real cell
    fit, space_e, real_e = space.embed_references(group["dataset"].iloc[0],
                                                  references["reference_sentence"].fillna(""), embedding, seed)
    inverted = fit.invert(ok["prediction"].tolist())
    gen_e = space_e.transform(inverted.X)
    # words of the generated cells that are not genes of the dataset (a label token, a made-up name): reported,
    # since the inversion drops them but they shift every gene's rank (GRPO once learned to start cells with one)
    words = inverted.n_unknown.sum() + inverted.n_genes_used.sum() + inverted.n_repeated.sum()
    scores["unknown_word_fraction"] = float(inverted.n_unknown.sum() / words) if words else 0.0
    if metric == "generation":
        real_labels, labels = references["label"].tolist(), ok["label"].tolist()
        scores.update(generation_scores(real_e, real_labels, gen_e, labels, seed=seed))
        for k in (k for k in KNN_KS if k <= len(real_labels)):  # a prompt's samples are resampled together
            per_prompt = pd.Series(knn_recognised(real_e, real_labels, gen_e, labels, k)).groupby(
                ok["prompt_id"].to_numpy()).agg(["sum", "count"])
            scores.update(ci_scores(f"knn_acc_k{k}", per_prompt["sum"], per_prompt["count"], seed))
    else:
        scores.update(perturbation_scores(real_e, gen_e, seed=seed))
    return scores


def distinct_cells(ok: pd.DataFrame) -> dict[str, float]:
    """How many different cells were generated: ``distinct_cells`` (distinct gene lists among the well-formed
    answers), ``distinct_fraction`` (that over their number) and ``distinct_cells[<condition>]`` per condition (the
    prompt's label: cell type, or drug). A model that ignores its condition, or a collapsed sampler, shows here."""
    scores = {"distinct_cells": float(ok["prediction"].nunique()),
              "distinct_fraction": ok["prediction"].nunique() / len(ok) if len(ok) else float("nan")}
    for label, cells in ok.groupby("label", sort=True):
        scores[f"distinct_cells[{label}]"] = float(cells["prediction"].nunique())
    return scores


def score_predictions(pred: pd.DataFrame, task_tables: Sequence[str | Path], data: Mapping[str, Mapping[str, str]],
                      *, embedding: EmbeddingSettings | None = None, seed: int = 0) -> pd.DataFrame:
    """Metrics of every (model, task, dataset, split) group of ``pred`` (see the module notes); ``embedding`` is
    config ``evaluation.embedding`` (method pca|scgpt, n_components, scgpt_checkpoint)."""
    embedding = embedding or EmbeddingSettings()
    pred = attach_references(pred, task_tables)
    space = ExpressionSpace(data, seed)
    rows = []
    for (model, task, dataset, split), group in pred.groupby(["model", "task", "dataset", "split"], sort=True):
        predictions = parsed_predictions(group)
        metric = get_task(task).metric
        labels = group["label"].tolist()
        if metric == "classification":
            scores = classification_scores(labels, predictions).as_dict()
            scores.update(ci_scores("accuracy", [float(p is not None and p == t) for p, t in zip(predictions, labels)],
                                    seed=seed))
        elif metric == "cellpuzzles":
            scores = cellpuzzles_scores(labels, predictions).as_dict()
            right, sizes, _ = puzzle_counts(labels, predictions)
            scores.update(ci_scores("cell_accuracy", right, sizes, seed))
            scores.update(ci_scores("batch_accuracy", (right == sizes).astype(float), seed=seed))
        else:
            scores = _generative_scores(metric, group, space, embedding, seed)
        rows += [(model, task, dataset, split, metric, float(value)) for metric, value in scores.items()]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def confusion_matrices(pred: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Confusion matrix per (model, task, dataset) of the classification tasks (all eval splits pooled)."""
    out = {}
    classification = pred["task"].isin(tasks_with(metric="classification"))
    for (model, task, dataset), group in pred[classification].groupby(["model", "task", "dataset"]):
        first = group.iloc[0]
        candidates = decode_value("candidates", first["candidates"], row_id=first.get("prompt_id"))
        labels = sorted(set(group["label"]) | set(candidates))
        out[(model, task, dataset)] = confusion_matrix(group["label"].tolist(), parsed_predictions(group), labels=labels)
    return out


def run_baselines(task_tables: Sequence[str | Path], data: Mapping[str, Mapping[str, str]],
                  control_values: Sequence[str], max_prompts_per_table: int | None) -> pd.DataFrame:
    """Every non-LLM baseline on exactly the prompts the models are evaluated on (the same selection,
    :func:`cellduality.evaluation.selection.eval_rows`; config ``evaluation.max_prompts_per_table``)."""
    from cellduality.evaluation.baselines import classification_baselines, generation_baselines
    from cellduality.evaluation.selection import eval_rows

    frames = []
    for path in task_tables:
        table = read_task_frame(path)
        task, dataset = table["task"].iloc[0], table["dataset"].iloc[0]
        ids = sorted(eval_rows([path], max_prompts_per_table)["prompt_id"])
        if not ids:
            continue
        files = data[dataset]
        if get_task(task).metric in GENERATIVE_METRICS:
            frames.append(generation_baselines(table, files["sentences"], files["h5ad"], task=task, prompt_ids=ids,
                                               control_values=control_values))
        else:
            frames.append(classification_baselines(table, files["sentences"], files["h5ad"], task=task,
                                                   prompt_ids=ids))
    return pd.concat(frames, ignore_index=True)


CHANCE_MODEL = "chance"


def chance_results(task_tables: Sequence[str | Path], max_prompts_per_table: int | None) -> pd.DataFrame:
    """The ``chance`` model's rows: the expected score of a uniform guess among each evaluated prompt's candidates
    (label tasks and CellPuzzles; :mod:`cellduality.evaluation.intervals`), on the prompts the models answer."""
    from cellduality.evaluation.selection import eval_rows

    rows = []
    for path in task_tables:
        table = eval_rows([path], max_prompts_per_table)
        if table.empty or get_task(table["task"].iloc[0]).metric not in ("classification", "cellpuzzles"):
            continue
        for (task, dataset, split), group in table.groupby(["task", "dataset", "split"], sort=True):
            candidates = [decode_value("candidates", c, row_id=pid) for c, pid in zip(group["candidates"],
                                                                                     group["prompt_id"])]
            if get_task(task).metric == "classification":
                scores = chance_scores(group["label"].astype(str).tolist(), candidates)
            else:
                scores = chance_puzzle_scores([len(c) for c in candidates])
            rows += [(CHANCE_MODEL, task, dataset, split, metric, value) for metric, value in scores.items()]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
