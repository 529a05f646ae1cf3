"""Non-LLM reference rows, on the same splits and prompts as the models.

Every baseline answers the eval-stage primal prompts of a task table (optionally only ``prompt_ids``, e.g.
the prompts a model was evaluated on) and returns :data:`BASELINE_COLUMNS` - the predictions table's
``prompt_id, task, dataset, split, label, prediction`` plus ``model`` - so the same metric code scores models
and baselines. Training data: the cell-sentence table's ``train`` cells of the table's dataset, with
expression rows read from the processed h5ad by ``cell_id``.

Classification (``prediction`` = a label):
- ``logreg``: multinomial logistic regression (L2, C=0.01, lbfgs) on the log-normalized expression of the
  2,000 most variable train genes, each standardized with the train mean and standard deviation;
- ``knn``: k-nearest-neighbour vote (k=15, Euclidean) in a PCA (50 components) of the train cells;
- annotation predicts ``cell_type``; sensitivity predicts ``sensitivity`` from expression with the drug
  one-hot appended (for ``knn``: neighbours only among train rows of the same drug); CellPuzzles assigns each batch's candidates to its cells one-to-one by maximizing the
  summed log-probabilities (Hungarian algorithm), giving ``"a | b | …"``.
Generation (``prediction`` = a space-joined sentence as long as the reference):
- generation: ``type_mean`` (top genes of the mean train cell of the conditioning type) and ``type_sample``
  (the sentence of a random train cell of that type, seeded);
- perturbation: ``copy_control`` (the input control cell unchanged), ``drug_mean`` (top genes of the mean
  train cell treated with that drug) and ``control_shift`` (the control cell's expression plus the train
  mean difference treated-with-drug minus control; a linear scGen-like shift).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellduality.data.cell_sentences import sentences_from_indices, top_k_gene_indices
from cellduality.errors import CellDualityError
from cellduality.evaluation.expression_inversion import read_cells, read_expression
from cellduality.evaluation.generation_metrics import PCAEmbedding
from cellduality.tasks.registry import TaskSpec, get_task, tasks_with
from cellduality.tasks.schema import decode_column, read_task_frame
from cellduality.tasks.settings import TaskTableSettings

log = logging.getLogger(__name__)
BASELINE_COLUMNS = ("model", "prompt_id", "task", "dataset", "split", "label", "prediction")
CLASSIFIERS = ("logreg", "knn")
#: generation baselines per metric family (a task's ``metric`` in the task registry)
GENERATORS = {"generation": ("type_mean", "type_sample"),
              "perturbation": ("copy_control", "drug_mean", "control_shift")}
#: metric families with classification baselines (predicting the task's ``label_column``)
CLASSIFIED_METRICS = ("classification", "cellpuzzles")
BASELINE_MODELS = {
    "logreg": "logistic regression on standardized expression (drug one-hot appended for sensitivity)",
    "knn": "15-nearest-neighbour vote in a 50-component PCA of the train cells",
    "type_mean": "top genes of the mean train cell of the requested type",
    "type_sample": "a random train cell of the requested type",
    "copy_control": "the control cell, unchanged",
    "drug_mean": "top genes of the mean train cell treated with the drug",
    "control_shift": "control cell + (mean treated-with-drug - mean control) of the train cells",
}


def _spec(task: str, families: Sequence[str], what: str) -> TaskSpec:
    spec = get_task(task)
    if spec.metric not in families:
        covered = sorted(t for family in families for t in tasks_with(metric=family))
        raise CellDualityError(f"{what} baselines cover {covered}, not {task!r}")
    return spec


def eval_prompts(task_table: str | Path | pd.DataFrame, task: str,
                 prompt_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Eval-stage primal rows of ``task`` (one dataset), optionally restricted to ``prompt_ids``."""
    table = read_task_frame(task_table) if isinstance(task_table, (str, Path)) else task_table
    rows = table[(table["task"] == task) & (table["stage"] == "eval") & (table["direction"] == "primal")]
    if prompt_ids is not None:
        rows = rows[rows["prompt_id"].isin(list(prompt_ids))]
    datasets = rows["dataset"].unique()
    if len(datasets) > 1:
        raise CellDualityError(f"task table holds {task} prompts of several datasets {list(datasets)}; pass one "
                               "dataset's table (baselines read one processed h5ad)")
    rows = rows.reset_index(drop=True)
    rows["cell_list"] = decode_column(rows, "cell_ids")
    return rows


def _output(rows: pd.DataFrame, model: str, predictions: Sequence[str | None]) -> pd.DataFrame:
    out = rows[["prompt_id", "task", "dataset", "split", "label"]].copy()
    out.insert(0, "model", model)
    out["prediction"] = list(predictions)
    return out[list(BASELINE_COLUMNS)]


# ---------------------------------------------------------------- classification

class _Features:
    """Expression rows and one-hot columns (categories fit on the train cells)."""

    def __init__(self, h5ad: str | Path, train: pd.DataFrame, onehot: Sequence[str]) -> None:
        from sklearn.preprocessing import OneHotEncoder

        self.h5ad, self.onehot = h5ad, list(onehot)
        self.encoder = OneHotEncoder(handle_unknown="ignore").fit(train[self.onehot].astype(str)) if onehot else None

    def __call__(self, cells: pd.DataFrame) -> tuple[sp.csr_matrix, np.ndarray]:
        X, _ = read_expression(self.h5ad, cells["cell_id"].tolist())
        extra = (self.encoder.transform(cells[self.onehot].astype(str)).toarray() if self.encoder is not None
                 else np.zeros((len(cells), 0)))
        return X, extra


class _LogReg:
    """Standardized expression of the most variable train genes (+ one-hot), L2 logistic regression."""

    def __init__(self, max_genes: int, C: float) -> None:
        self.max_genes, self.C = max_genes, C

    def _design(self, X: sp.csr_matrix, extra: np.ndarray) -> np.ndarray:
        dense = X[:, self.genes].toarray()
        return np.hstack([(dense - self.mean) / self.scale, extra])

    def fit(self, X: sp.csr_matrix, extra: np.ndarray, y: np.ndarray) -> _LogReg:
        from sklearn.linear_model import LogisticRegression

        mean = np.asarray(X.mean(axis=0)).ravel()
        var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
        self.genes = np.sort(np.argsort(-var, kind="stable")[: self.max_genes])
        self.mean, self.scale = mean[self.genes], np.sqrt(np.clip(var[self.genes], 1e-12, None))
        self.model = LogisticRegression(C=self.C, max_iter=1000).fit(self._design(X, extra), y)
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, X: sp.csr_matrix, extra: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._design(X, extra))


class _PCAKNN:
    """kNN vote in a PCA of the train expression; one-hot columns, scaled far beyond the embedding's
    spread, restrict neighbours to train rows of the same category (e.g. drug)."""

    def __init__(self, n_components: int, k: int, seed: int) -> None:
        self.n_components, self.k, self.seed = n_components, k, seed

    def _design(self, X: sp.csr_matrix, extra: np.ndarray) -> np.ndarray:
        return np.hstack([self.pca.transform(X), extra * self.weight])

    def fit(self, X: sp.csr_matrix, extra: np.ndarray, y: np.ndarray) -> _PCAKNN:
        from sklearn.neighbors import KNeighborsClassifier

        self.pca = PCAEmbedding.fit(X, n_components=self.n_components, seed=self.seed)
        Z = self.pca.transform(X)
        self.weight = 100.0 * (1.0 + float(np.ptp(Z, axis=0).max(initial=0.0)))
        self.model = KNeighborsClassifier(n_neighbors=min(self.k, X.shape[0])).fit(self._design(X, extra), y)
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, X: sp.csr_matrix, extra: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._design(X, extra))


def _classifier(method: str, *, n_components: int, knn_k: int, max_genes: int, C: float, seed: int):
    if method == "logreg":
        return _LogReg(max_genes, C)
    if method == "knn":
        return _PCAKNN(n_components, knn_k, seed)
    raise CellDualityError(f"unknown classification baseline {method!r}; choose from {CLASSIFIERS}")


def _assign(proba: np.ndarray, classes: Sequence[str], candidates: Sequence[str]) -> list[str]:
    """One-to-one assignment of ``candidates`` to the rows of ``proba`` maximizing summed log-probability."""
    from scipy.optimize import linear_sum_assignment

    column = {c: i for i, c in enumerate(classes)}
    score = np.full((len(proba), len(candidates)), np.log(1e-9))
    for j, cand in enumerate(candidates):
        if cand in column:
            score[:, j] = np.log(proba[:, column[cand]] + 1e-9)
    rows, cols = linear_sum_assignment(-score)
    assigned = [""] * len(proba)
    for r, c in zip(rows, cols):
        assigned[r] = candidates[c]
    return assigned


def classification_baselines(task_table: str | Path | pd.DataFrame, cells: str | Path | pd.DataFrame,
                             h5ad: str | Path, *, task: str, methods: Sequence[str] = CLASSIFIERS,
                             prompt_ids: Sequence[str] | None = None, max_train_cells: int | None = 20000,
                             knn_k: int = 15, n_components: int = 50, max_genes: int = 2000, C: float = 0.01,
                             seed: int = 0, threads: int | None = 1) -> pd.DataFrame:
    """Predictions of each classifier for the eval prompts of ``task`` (annotation, sensitivity, cellpuzzles).

    ``threads`` caps BLAS threads while fitting (None = library default); one thread is much faster than
    oversubscribed threads for these small problems on a busy machine.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _classification_baselines(task_table, cells, h5ad, task=task, methods=methods, prompt_ids=prompt_ids,
                                         max_train_cells=max_train_cells, knn_k=knn_k, n_components=n_components,
                                         max_genes=max_genes, C=C, seed=seed)


def _classification_baselines(task_table, cells, h5ad, *, task, methods, prompt_ids, max_train_cells, knn_k,
                              n_components, max_genes, C, seed) -> pd.DataFrame:
    spec = _spec(task, CLASSIFIED_METRICS, "classification")
    puzzle = spec.primal_kind == "assignment"
    rows = eval_prompts(task_table, task, prompt_ids)
    if rows.empty:
        return pd.DataFrame(columns=list(BASELINE_COLUMNS))
    label, onehot = spec.label_column, spec.baseline_onehot
    dataset = rows["dataset"].iloc[0]
    table = read_cells(cells, dataset=dataset, columns=(label, *onehot))
    train = table[(table["split"] == "train") & table[label].notna()]
    if train.empty and (table["split"] == "adapt").any():
        log.info("dataset %s (role adapt) has no labelled training cells: no %s baseline", dataset, task)
        return pd.DataFrame(columns=list(BASELINE_COLUMNS))
    if train[label].nunique() < 2:
        raise CellDualityError(f"dataset {dataset}: fewer than two {label} values among train cells; no baseline")
    if max_train_cells is not None and len(train) > max_train_cells:
        train = train.sample(n=max_train_cells, random_state=seed).sort_index()
    features = _Features(h5ad, train, onehot)
    (X_train, extra_train), y_train = features(train), train[label].astype(str).to_numpy()
    eval_ids = [i for ids in rows["cell_list"] for i in (ids if puzzle else ids[:1])]
    by_id = table.drop_duplicates("cell_id").set_index("cell_id")
    missing = [i for i in eval_ids if i not in by_id.index]
    if missing:
        raise CellDualityError(f"{len(missing)} prompt cell ids (e.g. {missing[:3]}) are not in the cell-sentence "
                               "table; build both from the same data")
    eval_cells = by_id.loc[eval_ids].reset_index()
    X_eval, extra_eval = features(eval_cells)
    outputs = []
    for method in methods:
        model = _classifier(method, n_components=n_components, knn_k=knn_k, max_genes=max_genes, C=C, seed=seed)
        model.fit(X_train, extra_train, y_train)
        proba = model.predict_proba(X_eval, extra_eval)
        if puzzle:
            sizes = np.cumsum([0] + [len(ids) for ids in rows["cell_list"]])
            predictions = [" | ".join(_assign(proba[a:b], list(model.classes_), cands))
                           for a, b, cands in zip(sizes[:-1], sizes[1:], decode_column(rows, "candidates"))]
        else:
            predictions = np.asarray(model.classes_)[proba.argmax(axis=1)].tolist()
        outputs.append(_output(rows, method, predictions))
    return pd.concat(outputs, ignore_index=True)


# ---------------------------------------------------------------- generation

def _top_sentences(X, lengths: Sequence[int], genes: Sequence[str]) -> list[str]:
    """Space-joined top-``lengths[i]`` genes of each row (ties by gene order, as cell sentences)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    if not len(lengths):
        return []
    indices, found = top_k_gene_indices(sp.csr_matrix(X, dtype=np.float32), max(int(lengths.max()), 1))
    return sentences_from_indices(indices, np.minimum(found, lengths), list(genes))


def _group_means(X: sp.csr_matrix, groups: np.ndarray) -> tuple[sp.csr_matrix, list[str]]:
    names, codes = np.unique(groups.astype(str), return_inverse=True)
    indicator = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(names), len(codes)))
    counts = np.asarray(indicator.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / counts) @ indicator @ X), list(names)


def generation_baselines(task_table: str | Path | pd.DataFrame, cells: str | Path | pd.DataFrame, h5ad: str | Path,
                         *, task: str, methods: Sequence[str] | None = None, prompt_ids: Sequence[str] | None = None,
                         control_values: Sequence[str] = TaskTableSettings.control_values,
                         seed: int = 0) -> pd.DataFrame:
    """Reference sentences for the eval prompts of ``task`` (generation or perturbation)."""
    spec = _spec(task, tuple(GENERATORS), "generation")
    family = spec.metric
    methods = GENERATORS[family] if methods is None else tuple(methods)
    unknown = sorted(set(methods) - set(GENERATORS[family]))
    if unknown:
        raise CellDualityError(f"unknown {task} baseline(s) {unknown}; choose from {GENERATORS[family]}")
    rows = eval_prompts(task_table, task, prompt_ids)
    if rows.empty:
        return pd.DataFrame(columns=list(BASELINE_COLUMNS))
    dataset = rows["dataset"].iloc[0]
    lengths = np.array([len(str(s).split()) for s in rows["reference_sentence"]])
    group_column = spec.label_column
    table = read_cells(cells, dataset=dataset, columns=(group_column,) + (("condition",) if family == "perturbation"
                                                                          else ()))
    train = table[(table["split"] == "train") & table[group_column].notna()].reset_index(drop=True)
    labels = rows["label"].astype(str).to_numpy()
    outputs = []
    if family == "perturbation":
        controls = {c.lower() for c in control_values}
        is_control = train["condition"].astype(str).str.lower().isin(controls).to_numpy()
        if "copy_control" in methods:
            outputs.append(_output(rows, "copy_control", rows["input_sentence"].tolist()))
        treated = train[~is_control]
        needs_expression = [m for m in methods if m in ("drug_mean", "control_shift")]
        if needs_expression:
            X_treated, genes = read_expression(h5ad, treated["cell_id"].tolist())
            means, names = _group_means(X_treated, treated[group_column].to_numpy())
            position = {n: i for i, n in enumerate(names)}
            _require_groups(labels, position, "drug", dataset)
            drug_rows = means[[position[d] for d in labels]]
            if "drug_mean" in methods:
                outputs.append(_output(rows, "drug_mean", _top_sentences(drug_rows, lengths, genes)))
            if "control_shift" in methods:
                X_ctrl_train, _ = read_expression(h5ad, train.loc[is_control, "cell_id"].tolist())
                if X_ctrl_train.shape[0] == 0:
                    raise CellDualityError(f"dataset {dataset}: no train control cells for the control_shift baseline")
                control_mean = np.asarray(X_ctrl_train.mean(axis=0)).ravel()
                X_ctrl, _ = read_expression(h5ad, [ids[1] for ids in rows["cell_list"]])
                shifted = X_ctrl.toarray() + (drug_rows.toarray() - control_mean)
                outputs.append(_output(rows, "control_shift", _top_sentences(shifted, lengths, genes)))
    else:
        if "type_mean" in methods:
            X_train, genes = read_expression(h5ad, train["cell_id"].tolist())
            means, names = _group_means(X_train, train[group_column].to_numpy())
            position = {n: i for i, n in enumerate(names)}
            _require_groups(labels, position, "cell type", dataset)
            outputs.append(_output(rows, "type_mean",
                                   _top_sentences(means[[position[t] for t in labels]], lengths, genes)))
        if "type_sample" in methods:
            sampled = _sample_sentences(train, labels, lengths, seed, dataset, group_column)
            outputs.append(_output(rows, "type_sample", sampled))
    return pd.concat(outputs, ignore_index=True)


def _require_groups(labels: np.ndarray, position: dict[str, int], what: str, dataset: str) -> None:
    missing = sorted(set(labels) - set(position))
    if missing:
        raise CellDualityError(f"dataset {dataset}: no train cells for {what} {missing[:3]}; the baseline needs them")


def _sample_sentences(train: pd.DataFrame, labels: np.ndarray, lengths: np.ndarray, seed: int,
                      dataset: str, group_column: str = "cell_type") -> list[str]:
    rng = np.random.default_rng(seed)
    pools = {t: group["sentence"].to_numpy() for t, group in train.groupby(group_column)}
    _require_groups(labels, pools, "cell type", dataset)
    picked = np.empty(len(labels), dtype=object)
    for t in np.unique(labels):
        where = np.flatnonzero(labels == t)
        picked[where] = pools[t][rng.integers(0, len(pools[t]), size=len(where))]
    return [" ".join(str(s).split()[:n]) for s, n in zip(picked, lengths)]

