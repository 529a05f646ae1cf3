import math

import numpy as np
import pandas as pd
import pytest

from cellduality.errors import CellDualityError
from cellduality.evaluation.settings import EmbeddingSettings, EvaluationSettings
from cellduality.report.tables import (
    ABLATION_VARIANTS,
    layout_table,
    load_paper_results,
    paper_tables,
    protocol_note,
    render_html,
    render_markdown,
)


def _value(paper, table, model, dataset, metric):
    row = next(r for r in paper.tables[table]["rows"] if r["model"] == model)
    return row["values"][dataset][metric]


def test_published_numbers_spot_checks():
    paper = load_paper_results()
    assert sorted(paper.tables) == ["table2", "table3", "table4", "table5", "table6"]
    assert _value(paper, "table2", "scBERT", "He-2020-Liver", "accuracy") == 95.28
    assert _value(paper, "table2", "CellDuality", "Bastidas-Ponce-2019", "macro_f1") == {"mean": 78.12, "std": 0.31}
    assert _value(paper, "table3", "InstructCell-instruct", "GSE117872", "accuracy") == 100.0
    assert _value(paper, "table4", "C2S-Scale (GRPO w/ GT)", "sci-Plex3", "wasserstein") == 0.21
    assert _value(paper, "table5", "scGPT", "Human Immune", "gw_distance") == {"mean": 2989.81, "std": 4.9229}
    assert _value(paper, "table6", "Llama-3.2-3B-Instruct", "sci-Plex3", "scfid") is None
    assert _value(paper, "table6", "SFT-only", "He-2020-Liver", "accuracy") == {"mean": 95.83, "std": 0.21}
    counts = {k: len(t["rows"]) for k, t in paper.tables.items()}
    assert counts == {"table2": 7, "table3": 7, "table4": 7, "table5": 7, "table6": 4}
    assert {r["variant"] for r in paper.tables["table6"]["rows"]} == set(ABLATION_VARIANTS)
    for name, info in paper.metrics.items():
        assert info["direction"] in ("up", "down") and info["unit"] in ("%", ""), name
    assert paper.metric("scfid")["direction"] == "down" and paper.metric("accuracy")["unit"] == "%"
    long = paper.long()
    assert len(long) == 7 * 10 + 7 * 6 + 7 * 3 + 7 * 5 + 4 * 6
    assert long["value"].isna().sum() == 2  # the two "-" of Table 6


def _results():
    rows = [
        ("grpo_duality", "annotation", "pbmc68k", "test", "accuracy", 0.50),
        ("grpo_duality", "annotation", "pbmc68k", "test", "accuracy", 0.60),  # a second seed
        ("grpo_duality", "annotation", "pbmc68k", "test", "macro_f1", 0.40),
        ("logreg", "annotation", "pbmc68k", "test", "accuracy", 0.83),
        ("sft", "annotation", "he_2020_liver", "test", "accuracy", 0.90),  # an alias of He-2020-Liver
        ("sft", "annotation", "Ma-2020", "ood", "accuracy", 0.70),
        ("base", "annotation", "pbmc68k", "test", "format_error_rate", 0.25),
        ("sft", "perturbation", "pbmc_perturb", "test", "scfid", 3.2),
        ("grpo_oracle", "perturbation", "pbmc_perturb", "test", "scfid", 2.0),
        ("copy_control", "perturbation", "pbmc_perturb", "test", "scfid", 9.0),
        ("logreg", "cellpuzzles", "pbmc68k", "test", "batch_accuracy", 0.75),
    ]
    return pd.DataFrame(rows, columns=["model", "task", "dataset", "split", "metric", "value"])


def test_layout_places_our_rows_beside_the_paper():
    t = layout_table(_results(), "table2", extra_metrics=["format_error_rate"])
    paper_groups = [("ID", "He-2020-Liver"), ("ID", "Segerstolpe-2016"), ("ID", "Xin-2016"), ("OOD", "Ma-2020"),
                    ("OOD", "Bastidas-Ponce-2019")]
    groups = list(dict.fromkeys(c[:2] for c in t.values.columns))
    assert groups[:5] == paper_groups and groups[5:] == [("ID", "pbmc68k")]
    assert t.values.loc[("paper", "scBERT"), ("ID", "He-2020-Liver", "accuracy")] == 95.28
    assert t.std.loc[("paper", "CellDuality"), ("OOD", "Ma-2020", "macro_f1")] == 0.39
    assert t.values.loc[("ours", "SFT-only"), ("ID", "He-2020-Liver", "accuracy")] == pytest.approx(90.0)
    assert t.values.loc[("ours", "SFT-only"), ("OOD", "Ma-2020", "accuracy")] == pytest.approx(70.0)
    duality = ("ours", "GRPO + duality reward (CellDuality)")
    assert t.values.loc[duality, ("ID", "pbmc68k", "accuracy")] == pytest.approx(55.0)
    assert t.std.loc[duality, ("ID", "pbmc68k", "accuracy")] == pytest.approx(np.std([50, 60], ddof=1))
    assert t.values.loc[("ours", "base model (no training)"), ("ID", "pbmc68k", "format_error_rate")] == 25.0
    ours = [r for r in t.values.index if r[0] == "ours"]
    assert ours == [("ours", "base model (no training)"), ("ours", "SFT-only"), duality,
                    ("ours", "baseline: logistic regression")]
    assert t.best().loc[("paper", "InstructCell-instruct"), ("ID", "Segerstolpe-2016", "accuracy")]
    text = t.formatted()
    assert text.loc[duality, ("ID", "pbmc68k", "accuracy")] == "55.00 ± 7.07"
    assert text.loc[("paper", "scBERT"), ("ID", "pbmc68k", "accuracy")] == "–"
    only_paper = layout_table(None, "table3")
    assert list(only_paper.values.index.get_level_values(0).unique()) == ["paper"]
    mapped = layout_table(_results(), "table2", dataset_map={"pbmc68k": "Xin-2016"}, include_paper=False)
    assert mapped.values.loc[duality, ("ID", "Xin-2016", "accuracy")] == pytest.approx(55.0)


def test_ablation_interleaves_paper_and_our_variants():
    t = layout_table(_results(), "table6")
    rows = list(t.values.index)
    assert rows == [("paper", "Llama-3.2-3B-Instruct"), ("paper", "SFT-only"), ("ours", "SFT-only"),
                    ("paper", "RL with Ground-Truth"), ("ours", "GRPO + ground-truth reward"),
                    ("paper", "Ours (Self-Supervised RL)"), ("ours", "GRPO + duality reward (CellDuality)")]
    assert t.values.loc[("ours", "GRPO + ground-truth reward"), ("ID", "pbmc_perturb", "scfid")] == 2.0
    assert math.isnan(t.values.loc[("paper", "Llama-3.2-3B-Instruct"), ("ID", "sci-Plex3", "scfid")])
    assert t.best().loc[("ours", "GRPO + ground-truth reward"), ("ID", "pbmc_perturb", "scfid")]  # lower wins
    assert ("ID", "pbmc_perturb", "wasserstein") not in t.values.columns  # Table 6 shows scFID and MMD only


def test_rendering_and_extra_tables():
    layouts = paper_tables(_results())
    assert list(layouts) == ["table2", "table3", "table4", "table5", "table6", "cellpuzzles"]  # CellPuzzles: ours
    markdown = render_markdown(layouts)
    assert "**Table 4: Perturbation Response Generation (sci-Plex3).**" in markdown
    assert "| paper | scGen | Supervised | 0.95 | 1.05 | 0.98 |" in markdown  # Table 4's supervision type
    supervision = layouts["table4"].row_info["supervision"]
    assert supervision[("paper", "C2S-Scale (GRPO w/ GT)")] == "Ground-Truth RL"
    assert supervision[("ours", "GRPO + ground-truth reward")] == "Ground-Truth RL"
    assert supervision[("ours", "baseline: copy the control cell")] == "Reference baseline"
    assert "scFID ↓" in markdown and "Acc. (%) ↑" in markdown and "| ours | baseline: copy the control cell" in markdown
    html = render_html(layouts)
    assert html.count("<figure") == 6 and "<b>" in html and "C2S-Scale (GRPO w/ GT)" in html
    puzzles = layout_table(_results(), "cellpuzzles")
    assert list(puzzles.values.columns) == [("ID", "pbmc68k", m) for m in
                                            ("cell_accuracy", "batch_accuracy", "format_error_rate")]
    assert puzzles.values.iloc[0].tolist()[1] == 75.0 and "<script" not in layout_table(
        _results().assign(model="<script>"), "cellpuzzles").to_html()


def test_bad_input():
    with pytest.raises(CellDualityError, match="unknown table"):
        layout_table(_results(), "table9")
    with pytest.raises(CellDualityError, match="lack column"):
        layout_table(_results().drop(columns="split"), "table2")
    with pytest.raises(CellDualityError, match="not found"):
        load_paper_results("/nonexistent/paper.yaml")


def test_what_the_tables_say_they_measured():
    """A single value shows its 95% CI, replicates their std (not a CI), chance is a row, our distances are marked
    as not comparable with the paper's scGPT-space values, captions describe our rows, the protocol is stated."""
    extra = pd.DataFrame([
        ("logreg", "annotation", "pbmc68k", "test", "accuracy_ci_low", 0.78),
        ("logreg", "annotation", "pbmc68k", "test", "accuracy_ci_high", 0.88),
        ("grpo_duality", "annotation", "pbmc68k", "test", "accuracy_ci_low", 0.4),  # two seeds: std wins
        ("grpo_duality", "annotation", "pbmc68k", "test", "accuracy_ci_high", 0.7),
        ("chance", "sensitivity", "gdsc", "test", "accuracy", 0.5),
    ], columns=["model", "task", "dataset", "split", "metric", "value"])
    results = pd.concat([_results(), extra], ignore_index=True)
    text = layout_table(results, "table2").formatted()
    assert text.loc[("ours", "baseline: logistic regression"), ("ID", "pbmc68k", "accuracy")] == "83.00 [78.0, 88.0]"
    assert text.loc[("ours", "GRPO + duality reward (CellDuality)"), ("ID", "pbmc68k", "accuracy")] == "55.00 ± 7.07"
    assert not any("_ci_" in c[2] for c in layout_table(results, "table2").values.columns)
    sensitivity = layout_table(results, "table3")
    assert sensitivity.values.loc[("ours", "chance: uniform guess among the candidates"),
                                  ("ID", "gdsc", "accuracy")] == 50.0
    assert sensitivity.caption.startswith("Our rows:") and "Paper rows, as published:" in sensitivity.caption
    assert "Cell2Sentence" not in layout_table(results, "table5").caption.split("Paper rows")[0]
    marked = layout_table(results, "table4", embedding_method="pca")
    assert "scFID† ↓" in marked.to_markdown() and "not in the paper's scGPT space" in marked.caption
    assert "†" not in layout_table(results, "table4", embedding_method="scgpt").to_markdown()
    note = protocol_note(EvaluationSettings(), EmbeddingSettings(), replicates=1)
    assert "greedy" in note and "4 cells per prompt at temperature 1" in note and "95% bootstrap CI" in note
    assert render_markdown(paper_tables(results), preamble=note).startswith("How these numbers")
    unconstrained = EvaluationSettings().replace(constrain_to_candidates=False)
    assert "mean ± std over 3 replicates" in protocol_note(unconstrained, EmbeddingSettings(), replicates=3)
