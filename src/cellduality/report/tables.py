"""Our results laid out like the paper's Tables 2-6, with the published numbers beside them.

Input: a long results frame with :data:`RESULT_COLUMNS` (``model, task, dataset, split, metric, value``);
metric names are those of the metric modules (``accuracy``, ``macro_f1``, ``format_error_rate``,
``cell_accuracy``, ``batch_accuracy``, ``knn_acc_k3`` … ``knn_acc_k25``, ``gw_distance``, ``scfid``, ``mmd``,
``wasserstein``); accuracies are fractions in [0, 1] and are shown ×100 where the paper prints percent.
Several values of one (model, task, dataset, split, metric), e.g. seeds, are shown as mean ± std; a single value
with ``<metric>_ci_low`` / ``<metric>_ci_high`` rows (cellduality.evaluation.intervals) as ``value [low, high]``.

Layout (:func:`layout_table`): columns are (split, dataset, metric) groups, with split ``ID`` for our
``test`` split and ``OOD`` for ``ood``; rows are (source, model), source ``paper`` or ``ours``. A dataset of
ours goes into the paper's column when its name matches the paper's dataset or one of its aliases
(ignoring case and punctuation) and its split matches, or through ``dataset_map``; otherwise it gets its
own column group with the table's metrics. Captions say what our rows are (:data:`OUR_ROWS`) before quoting the
paper's caption; :func:`protocol_note` states how the answers were drawn and scored. Table 6 (ablation) and
``task="ablation"`` tables list the four variants (base, SFT-only, GRPO + ground-truth reward, GRPO + duality
reward), each paper row followed by ours. :data:`EXTRA_TABLES` describes tables of ours that have no paper counterpart
(CellPuzzles with Cell-o1's metrics).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cellduality.errors import CellDualityError
from cellduality.evaluation.settings import EmbeddingSettings, EvaluationSettings
from cellduality.io import RESOURCES

PAPER_RESULTS = RESOURCES / "paper_results.yaml"
RESULT_COLUMNS = ("model", "task", "dataset", "split", "metric", "value")
SPLIT_NAMES = {"test": "ID", "ood": "OOD", "train": "train"}
ABLATION_VARIANTS = ("base", "sft", "grpo_oracle", "grpo_duality")
MODEL_LABELS = {
    "base": "base model (no training)",
    "sft": "SFT-only",
    "grpo_oracle": "GRPO + ground-truth reward",
    "grpo_duality": "GRPO + duality reward (CellDuality)",
    "logreg": "baseline: logistic regression",
    "knn": "baseline: kNN in PCA space",
    "type_mean": "baseline: mean train cell of the type",
    "type_sample": "baseline: random train cell of the type",
    "copy_control": "baseline: copy the control cell",
    "drug_mean": "baseline: mean train cell of the drug",
    "control_shift": "baseline: control + mean drug shift",
    "chance": "chance: uniform guess among the candidates",
}
CI_SUFFIXES = ("_ci_low", "_ci_high")  # interval rows of a metric in results.tsv (evaluation.intervals)
# metrics of generated cells computed in our embedding space (evaluation.embedding), not the paper's scGPT space
SPACE_METRICS = ("gw_distance", "scfid", "mmd", "wasserstein")
SPACE_MARK = "†"
#: what our rows of a table are, by the table's task (the paper's caption follows, quoted)
OUR_ROWS = {
    "annotation": "Our rows: each model variant's greedy answer on the test (ID) and OOD cells of our datasets, "
                  "and reference baselines trained on the same train cells (logistic regression, kNN) and chance.",
    "sensitivity": "Our rows: each model variant's greedy answer on our test cells, beside chance (a uniform "
                   "guess between sensitive and resistant: 50%) and a kNN classifier on the same train cells.",
    "perturbation": "Our rows: each model variant's sampled responses to the held-out drug treatments of our "
                    "perturbation dataset, beside baselines (the control cell unchanged, the mean treated cell, "
                    "the control plus the mean drug shift).",
    "generation": "Our rows: cells each model variant sampled for the test prompts' cell types, compared with the "
                  "real test cells, beside baselines (the mean and a random train cell of the type); our kNN "
                  "classifier is trained on the real test cells of our dataset.",
    "ablation": "Our rows: the same SFT model, then GRPO with the ground-truth reward or the duality reward "
                "(one replicate per training seed).",
    "cellpuzzles": "Our rows: each model variant's greedy assignment of a batch's candidate types to its cells, "
                   "beside chance (a random assignment) and classifiers trained on the same train cells.",
}
SUPERVISION = {"base": "None", "sft": "Supervised", "grpo_oracle": "Ground-Truth RL",
               "grpo_duality": "Self-Supervised"}  # Table 4's "Supervision Type" of our rows; baselines: below
BASELINE_SUPERVISION = "Reference baseline"
EXTRA_METRICS = {
    "cell_accuracy": {"label": "Cell-level Acc.", "unit": "%", "direction": "up"},
    "batch_accuracy": {"label": "Batch-level Acc.", "unit": "%", "direction": "up"},
    "format_error_rate": {"label": "Format errors", "unit": "%", "direction": "down"},
}
EXTRA_TABLES = {
    "cellpuzzles": {"number": None, "title": "CellPuzzles (Cell-o1 metrics)", "task": "cellpuzzles",
                    "caption": "CellPuzzles batch-level cell type annotation: cell-level accuracy (cells right), "
                               "batch-level accuracy (batches entirely right) and format-error rate "
                               "(Cell-o1's definitions). The paper reports no CellPuzzles table.",
                    "columns": [], "rows": [], "metrics": ["cell_accuracy", "batch_accuracy", "format_error_rate"]},
}


def _key(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# ---------------------------------------------------------------- paper numbers

@dataclass(frozen=True)
class PaperResults:
    """The parsed ``paper_results.yaml``."""

    metrics: dict[str, dict]
    datasets: dict[str, dict]
    tables: dict[str, dict]
    source: str = ""

    def metric(self, name: str) -> dict:
        info = self.metrics.get(name) or EXTRA_METRICS.get(name)
        return info or {"label": name, "unit": "", "direction": "up"}

    def table(self, key: str) -> dict:
        if key in self.tables:
            return self.tables[key]
        if key in EXTRA_TABLES:
            return EXTRA_TABLES[key]
        raise CellDualityError(f"unknown table {key!r}; choose from {sorted(self.tables) + sorted(EXTRA_TABLES)}")

    def canonical_dataset(self, name: str) -> str | None:
        """The paper's dataset name that ``name`` (or an alias) spells, if any."""
        wanted = _key(name)
        for paper_name, info in self.datasets.items():
            if wanted == _key(paper_name) or wanted in {_key(a) for a in (info or {}).get("aliases", [])}:
                return paper_name
        return None

    def long(self) -> pd.DataFrame:
        """All published values: table, model, variant, dataset, split, metric, value, std."""
        records = []
        for key, table in self.tables.items():
            splits = {c["dataset"]: c["split"] for c in table["columns"]}
            for row in table["rows"]:
                for dataset, values in row["values"].items():
                    for metric, value in values.items():
                        mean, std = _mean_std(value)
                        records.append({"table": key, "model": row["model"], "variant": row.get("variant"),
                                        "dataset": dataset, "split": splits[dataset], "metric": metric,
                                        "value": mean, "std": std})
        return pd.DataFrame(records)


def _mean_std(value: object) -> tuple[float, float]:
    if value is None:
        return float("nan"), float("nan")
    if isinstance(value, Mapping):
        return float(value["mean"]), float(value.get("std", float("nan")))
    return float(value), float("nan")


def _validate(data: dict, path: Path) -> None:
    metrics = data.get("metrics") or {}
    for key, table in (data.get("tables") or {}).items():
        datasets = {c["dataset"] for c in table.get("columns", [])}
        for column in table.get("columns", []):
            unknown = [m for m in column["metrics"] if m not in metrics]
            if unknown:
                raise CellDualityError(f"{path}: {key} uses undeclared metric(s) {unknown}")
        for row in table.get("rows", []):
            extra = set(row.get("values", {})) - datasets
            if extra:
                raise CellDualityError(f"{path}: {key} row {row.get('model')!r} has values for unknown dataset(s) "
                                       f"{sorted(extra)}")


@lru_cache(maxsize=4)
def _load(path: str) -> PaperResults:
    file = Path(path)
    if not file.is_file():
        raise CellDualityError(f"paper results {file} not found")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise CellDualityError(f"{file} is not valid YAML ({err})") from None
    _validate(data, file)
    return PaperResults(metrics=data["metrics"], datasets=data.get("datasets") or {}, tables=data["tables"],
                        source=data.get("source", ""))


def load_paper_results(path: str | Path | None = None) -> PaperResults:
    """Parse (and cache) ``resources/paper_results.yaml`` or another file of that shape."""
    return _load(str(Path(path or PAPER_RESULTS).resolve()))


# ---------------------------------------------------------------- our results

def check_results(results: pd.DataFrame) -> pd.DataFrame:
    """The results frame with its required columns, ``value`` as float and text keys as str."""
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise CellDualityError(f"results lack column(s) {missing}; expected {list(RESULT_COLUMNS)}")
    out = results[list(RESULT_COLUMNS)].copy()
    for column in RESULT_COLUMNS[:-1]:
        out[column] = out[column].astype(str)
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype(float)
    return out


@dataclass
class TableLayout:
    """A laid-out table: ``values`` and ``std`` (paper units; NaN = none), row/column metadata, text."""

    key: str
    title: str
    caption: str
    values: pd.DataFrame
    std: pd.DataFrame
    directions: dict = field(default_factory=dict)  # column -> "up" | "down"
    units: dict = field(default_factory=dict)  # column -> "%" | ""
    metric_labels: dict = field(default_factory=dict)  # column -> printed metric name
    number: int | None = None
    row_info: pd.DataFrame | None = None  # text columns shown before the values (e.g. Table 4's supervision)
    ci_low: pd.DataFrame | None = None  # 95% CI of a single value (paper units; NaN = none)
    ci_high: pd.DataFrame | None = None

    @property
    def heading(self) -> str:
        return f"Table {self.number}: {self.title}" if self.number else self.title

    def formatted(self) -> pd.DataFrame:
        """Cells as text: ``mean ± std`` where a std exists, ``value [low, high]`` where a CI exists, "–" where
        no value."""
        out = pd.DataFrame("–", index=self.values.index, columns=self.values.columns, dtype=object)
        for column in self.values.columns:
            number = "{:.2f}" if self.units.get(column) == "%" else "{:.4g}"
            bound = "{:.1f}" if self.units.get(column) == "%" else "{:.3g}"
            for row in self.values.index:
                value, std = self.values.at[row, column], self.std.at[row, column]
                if not np.isfinite(value):
                    continue
                text = number.format(value) + (f" ± {std:.3g}" if np.isfinite(std) else "")
                low, high = (np.nan if frame is None else frame.at[row, column]
                             for frame in (self.ci_low, self.ci_high))
                if np.isfinite(low) and np.isfinite(high):
                    text += f" [{bound.format(low)}, {bound.format(high)}]"
                out.at[row, column] = text
        return out

    def best(self) -> pd.DataFrame:
        """True where a cell holds its column's best value (by the metric's direction)."""
        flags = pd.DataFrame(False, index=self.values.index, columns=self.values.columns)
        for column in self.values.columns:
            series = self.values[column]
            if series.notna().sum() > 1:
                target = series.max() if self.directions.get(column, "up") == "up" else series.min()
                flags[column] = series == target
        return flags

    def metric_text(self, column: tuple) -> str:
        """``Acc. (%) ↑``: the metric's label, unit and direction."""
        arrow = "↑" if self.directions.get(column, "up") == "up" else "↓"
        unit = " (%)" if self.units.get(column) == "%" else ""
        return f"{self.metric_labels.get(column, column[2])}{unit} {arrow}"

    def to_markdown(self) -> str:
        text, best = self.formatted(), self.best()
        info = self.row_info if self.row_info is not None else pd.DataFrame(index=text.index)
        header = ["source", "model", *info.columns,
                  *[f"{d} [{s}] {self.metric_text((s, d, m))}" for s, d, m in text.columns]]
        lines = [f"**{self.heading}.** {self.caption}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        for row in text.index:
            cells = [f"**{v}**" if best.at[row, c] else v for c, v in text.loc[row].items()]
            lines.append("| " + " | ".join([*map(str, row), *map(str, info.loc[row]), *cells]) + " |")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        text, best = self.formatted(), self.best()
        marked = text.copy()
        for column in text.columns:
            marked[column] = [f"<b>{html.escape(v)}</b>" if b else html.escape(v)
                              for v, b in zip(text[column], best[column])]
        columns = [(html.escape(c[0]), html.escape(c[1]), html.escape(self.metric_text(c))) for c in text.columns]
        if self.row_info is not None:
            for name in reversed(self.row_info.columns):
                marked.insert(0, name, [html.escape(str(v)) for v in self.row_info[name]])
            columns = [("", "", html.escape(str(name))) for name in self.row_info.columns] + columns
        marked.columns = pd.MultiIndex.from_tuples(columns, names=["split", "dataset", "metric"])
        marked.index = pd.MultiIndex.from_tuples([tuple(map(html.escape, r)) for r in text.index],
                                                 names=["source", "model"])
        body = marked.to_html(escape=False, classes="cellduality-table", border=0)
        return (f"<figure class=\"cellduality-table\"><figcaption><b>{html.escape(self.heading)}.</b> "
                f"{html.escape(self.caption)}</figcaption>\n{body}\n</figure>\n")


def _aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over replicates) of each (model, task, dataset, split, metric), with ``ci_low`` and
    ``ci_high`` from the metric's interval rows where there is one replicate (else NaN: the std says it)."""
    is_ci = results["metric"].str.endswith(CI_SUFFIXES)
    grouped = results[~is_ci].groupby(["model", "task", "dataset", "split", "metric"], sort=False)["value"]
    out = grouped.agg(value="mean", std=lambda s: s.std(ddof=1) if s.notna().sum() > 1 else np.nan,
                      n="count").reset_index()
    for suffix in CI_SUFFIXES:
        bounds = results[results["metric"].str.endswith(suffix)].assign(
            metric=lambda f, k=suffix: f["metric"].str.removesuffix(k))
        bounds = bounds.groupby(["model", "task", "dataset", "split", "metric"], sort=False)["value"].agg(
            "first").rename(suffix.removeprefix("_")).reset_index()
        out = out.merge(bounds, how="left", on=["model", "task", "dataset", "split", "metric"])
        out.loc[out["n"] > 1, suffix.removeprefix("_")] = np.nan
    return out.drop(columns="n")


def _table_metrics(table: dict) -> dict[str, list[str]]:
    """Task -> metrics of the paper columns (a table without columns uses its own ``metrics``)."""
    by_task: dict[str, list[str]] = {}
    for column in table["columns"]:
        task = column.get("task", table["task"])
        by_task.setdefault(task, [])
        by_task[task] += [m for m in column["metrics"] if m not in by_task[task]]
    if not table["columns"]:
        by_task[table["task"]] = list(table["metrics"])
    return by_task


def layout_table(results: pd.DataFrame | None, key: str, *, paper: PaperResults | None = None,
                 dataset_map: Mapping[str, str] | None = None, model_labels: Mapping[str, str] | None = None,
                 extra_metrics: Sequence[str] = (), include_paper: bool = True,
                 models: Sequence[str] | None = None, embedding_method: str | None = None) -> TableLayout:
    """Lay out paper table ``key`` (``table2`` … ``table6``, or an :data:`EXTRA_TABLES` key) with our rows.

    ``dataset_map`` maps our dataset names to the paper's; ``model_labels`` renames our models (default
    :data:`MODEL_LABELS`); ``extra_metrics`` adds columns of ours (e.g. ``format_error_rate``) to every
    group; ``models`` restricts and orders our rows; ``embedding_method`` (config ``evaluation.embedding.method``)
    other than ``scgpt`` marks the generated-cell distances (:data:`SPACE_METRICS`) as not comparable with the
    paper's.
    """
    paper = paper or load_paper_results()
    table = paper.table(key)
    by_task = _table_metrics(table)
    ablation = table["task"] == "ablation"
    labels = {**MODEL_LABELS, **(model_labels or {})}
    # columns: the paper's, then ours that match none of them
    columns: list[tuple[str, str, str]] = []
    units, directions, metric_labels = {}, {}, {}

    def add_column(split: str, dataset: str, metric: str) -> None:
        column = (split, dataset, metric)
        if column not in units:
            columns.append(column)
            info = paper.metric(metric)
            units[column], directions[column] = info.get("unit", ""), info.get("direction", "up")
            metric_labels[column] = info.get("label", metric)

    for column in table["columns"]:
        for metric in column["metrics"]:
            add_column(column["split"], column["dataset"], metric)
    paper_split = {column["dataset"]: column["split"] for column in table["columns"]}
    cells: dict[tuple[tuple[str, str], tuple[str, str, str]], tuple[float, ...]] = {}
    row_order: list[tuple[str, str]] = []
    paper_rows = table["rows"] if include_paper else []
    for row in paper_rows:
        row_key = ("paper", row["model"])
        row_order.append(row_key)
        for dataset, values in row["values"].items():
            for metric, value in values.items():
                cells[(row_key, (paper_split[dataset], dataset, metric))] = (*_mean_std(value), np.nan, np.nan)

    our_rows: list[tuple[str, str]] = []
    if results is not None and len(results):
        ours = _aggregate(check_results(results))
        ours = ours[ours["task"].isin(list(by_task))]
        if models is not None:
            ours = ours[ours["model"].isin(list(models))]
        elif ablation:
            ours = ours[ours["model"].isin(ABLATION_VARIANTS)]
        for rec in ours.itertuples(index=False):
            metrics = by_task[rec.task] + [m for m in extra_metrics if m not in by_task[rec.task]]
            if rec.metric not in metrics:
                continue
            split = SPLIT_NAMES.get(rec.split, rec.split)
            dataset = (dataset_map or {}).get(rec.dataset) or paper.canonical_dataset(rec.dataset) or rec.dataset
            for metric in metrics:  # the whole group, so a missing metric shows as "–"
                add_column(split, dataset, metric)
            row_key = ("ours", labels.get(rec.model, rec.model))
            if row_key not in our_rows:
                our_rows.append(row_key)
            scale = 100.0 if paper.metric(rec.metric).get("unit") == "%" else 1.0
            cells[(row_key, (split, dataset, rec.metric))] = (rec.value * scale, rec.std * scale,
                                                              rec.ci_low * scale, rec.ci_high * scale)
        our_rows = _order_rows(our_rows, labels, models)
    if ablation:
        row_order = _interleave_ablation(table, row_order, our_rows, labels)
    else:
        row_order += our_rows
    index = pd.MultiIndex.from_tuples(row_order or [("", "")], names=["source", "model"])[: len(row_order)]
    groups = list(dict.fromkeys(c[:2] for c in columns))  # keep each (split, dataset) group together
    columns.sort(key=lambda c: groups.index(c[:2]))
    col_index = pd.MultiIndex.from_tuples(columns, names=["split", "dataset", "metric"])
    frames = [pd.DataFrame(np.nan, index=index, columns=col_index) for _ in range(4)]  # value, std, CI bounds
    for (row_key, column), numbers in cells.items():
        if row_key in index:
            for frame, number in zip(frames, numbers):
                frame.at[row_key, column] = number
    caption = " ".join(str(table.get("caption", "")).split())
    if table["task"] in OUR_ROWS:
        quoted = f"Paper rows, as published: {caption}" if key in paper.tables else caption
        caption = f"{OUR_ROWS[table['task']]} {quoted}"
    if embedding_method and embedding_method != "scgpt" and any(c[2] in SPACE_METRICS for c in columns):
        for column in columns:
            if column[2] in SPACE_METRICS:
                metric_labels[column] += SPACE_MARK
        caption += (f" {SPACE_MARK} Our generated-cell distances are computed in a {embedding_method.upper()} space "
                    "of real cells after rank-to-expression inversion, not in the paper's scGPT space: compare "
                    "them between our rows only, never with the paper's values.")
    values, std, ci_low, ci_high = frames
    return TableLayout(key=key, title=table["title"], caption=caption, values=values, std=std, ci_low=ci_low,
                       ci_high=ci_high, directions=directions, units=units, metric_labels=metric_labels,
                       number=table.get("number"), row_info=_row_info(table, index, labels))


def _row_info(table: dict, index: pd.MultiIndex, labels: Mapping[str, str]) -> pd.DataFrame | None:
    """Text attributes of rows (``row_attributes`` of the table): the paper's values, ours by variant."""
    attributes = table.get("row_attributes") or []
    if not attributes:
        return None
    paper_rows = {row["model"]: row for row in table["rows"]}
    variant_of = {labels.get(v, v): v for v in SUPERVISION}
    info = pd.DataFrame("", index=index, columns=[a.replace("_", " ") for a in attributes], dtype=object)
    for source, model in index:
        for attribute, column in zip(attributes, info.columns):
            if source == "paper":
                value = paper_rows.get(model, {}).get(attribute, "")
            elif attribute == "supervision":
                value = SUPERVISION.get(variant_of.get(model, ""), BASELINE_SUPERVISION)
            else:
                value = ""
            info.at[(source, model), column] = value
    return info


def _order_rows(rows: list[tuple[str, str]], labels: Mapping[str, str],
                models: Sequence[str] | None) -> list[tuple[str, str]]:
    """``models`` order when given, else the ablation variants first and the rest (baselines) by name."""
    preferred = [labels.get(m, m) for m in (models if models is not None else ABLATION_VARIANTS)]
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(rows, key=lambda r: (rank.get(r[1], len(rank)), r[1]))


def _interleave_ablation(table: dict, paper_rows: list[tuple[str, str]], our_rows: list[tuple[str, str]],
                         labels: Mapping[str, str]) -> list[tuple[str, str]]:
    """Ablation order: for each variant, the paper's row and then ours."""
    variant_of = {row["model"]: row.get("variant") for row in table["rows"]}
    order: list[tuple[str, str]] = []
    for variant in ABLATION_VARIANTS:
        order += [r for r in paper_rows if variant_of.get(r[1]) == variant]
        order += [r for r in our_rows if r[1] == labels.get(variant, variant)]
    return order + [r for r in paper_rows + our_rows if r not in order]


def paper_tables(results: pd.DataFrame | None, *, keys: Sequence[str] | None = None,
                 **options) -> dict[str, TableLayout]:
    """All paper tables (``table2`` … ``table6``) laid out with our results, then the :data:`EXTRA_TABLES` whose
    task the results hold (options as :func:`layout_table`)."""
    paper = options.pop("paper", None) or load_paper_results()
    tasks = set() if results is None or "task" not in results else set(results["task"].astype(str))
    extra = [key for key, table in EXTRA_TABLES.items() if table["task"] in tasks]
    return {key: layout_table(results, key, paper=paper, **options) for key in (keys or [*paper.tables, *extra])}


def protocol_note(evaluation: EvaluationSettings, embedding: EmbeddingSettings, replicates: int) -> str:
    """How the answers behind the tables were drawn and scored (config ``evaluation.*``), in one paragraph."""
    decoding = ("constrained to the prompt's candidates by the answer grammar (evaluation.constrain_to_candidates)"
                if evaluation.constrain_to_candidates else "unconstrained (evaluation.constrain_to_candidates: false)")
    space = ("the scGPT embedding" if embedding.method == "scgpt" else f"a {embedding.n_components}-component "
             f"{embedding.method.upper()} of real cells (not the paper's scGPT space)")
    spread = (f"mean ± std over {replicates} replicates (training seeds)" if replicates > 1 else
              "one replicate; the brackets are its 95% bootstrap CI over the evaluated prompts")
    return (f"How these numbers were measured: label tasks and CellPuzzles take one greedy answer per prompt, "
            f"{decoding}; conditional generation and perturbation draw {evaluation.samples_per_prompt} cells per "
            f"prompt at temperature {evaluation.sample_temperature:g} (evaluation.samples_per_prompt, "
            f"evaluation.sample_temperature) and are scored as populations, the generated and real cells compared "
            f"in {space}. Our values: {spread}. "
            "Chance is the expected score of a uniform guess among each prompt's candidates.")


def render_markdown(layouts: Mapping[str, TableLayout] | Sequence[TableLayout], preamble: str = "") -> str:
    """All tables as one Markdown document (``preamble``, e.g. :func:`protocol_note`, first)."""
    items = layouts.values() if isinstance(layouts, Mapping) else layouts
    return "\n".join([*([preamble + "\n"] if preamble else []), *(layout.to_markdown() for layout in items)])


def render_html(layouts: Mapping[str, TableLayout] | Sequence[TableLayout], preamble: str = "") -> str:
    """All tables as one HTML fragment (``preamble`` as a paragraph, then a ``<figure>`` with caption per table)."""
    items = layouts.values() if isinstance(layouts, Mapping) else layouts
    head = [f"<p class=\"cellduality-protocol\">{html.escape(preamble)}</p>\n"] if preamble else []
    return "\n".join([*head, *(layout.to_html() for layout in items)])
