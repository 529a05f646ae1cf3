"""Figures of the HTML report: confusion matrices, GRPO reward curves, UMAPs of generated vs real cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellduality.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def confusion_figure(matrices: dict[tuple[str, str, str], pd.DataFrame], path: str | Path) -> None:
    """One row-normalized heatmap per (model, task, dataset)."""
    plt = _pyplot()
    n = max(len(matrices), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for ax, ((model, task, dataset), m) in zip(axes[0], sorted(matrices.items())):
        norm = m.div(m.sum(axis=1).replace(0, 1), axis=0)
        ax.imshow(norm.to_numpy(), vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(m.shape[1]), [str(c)[:14] for c in m.columns], rotation=90, fontsize=6)
        ax.set_yticks(range(m.shape[0]), [str(r)[:14] for r in m.index], fontsize=6)
        ax.set_title(f"{model}: {task} / {dataset}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    if not matrices:
        axes[0][0].text(0.5, 0.5, "no classification predictions", ha="center")
        axes[0][0].axis("off")
    _save(fig, path)


def reward_curve_figure(curves: dict[str, str | Path], path: str | Path, label_signal: dict | None = None) -> None:
    """Mean reward and the (logged, not optimised) oracle reward per GRPO step, one panel per variant; the SFT
    model's true-label-wins summary (the label-signal gate) is written beside the duality panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(4.5 * max(len(curves), 1), 3.2), squeeze=False)
    for ax, (variant, tsv) in zip(axes[0], sorted(curves.items())):
        curve = pd.read_csv(tsv, sep="\t")
        ax.plot(curve["step"], curve["reward"], marker="o", label="training reward")
        ax.plot(curve["step"], curve["oracle_reward"], marker="s", linestyle="--", label="ground-truth reward")
        title = variant
        if label_signal and "duality" in variant:
            verdict = "above" if label_signal["win_rate"] > label_signal["chance_rate"] else "AT/BELOW"
            title += (f"\nSFT true-label wins {label_signal['win_rate']:.2f} ({verdict} chance "
                      f"{label_signal['chance_rate']:.2f}, n={label_signal['n_cells']})")
            if label_signal.get("policy_accuracy") is not None:
                title += f"; SFT accuracy on them {label_signal['policy_accuracy']:.2f}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-1.05, 1.05)
        ax.legend(fontsize=7)
    _save(fig, path)


def umap_figure(real: np.ndarray, real_labels: Sequence[str], generated: dict[str, tuple[np.ndarray, Sequence[str]]],
                path: str | Path, seed: int = 0) -> None:
    """UMAP of real cells and each model's generated cells (embedded together), coloured by cell type."""
    import umap

    plt = _pyplot()
    blocks = [real] + [g for g, _ in generated.values()]
    joint = umap.UMAP(n_neighbors=min(15, max(2, sum(len(b) for b in blocks) - 1)), random_state=seed).fit_transform(
        np.vstack(blocks))
    labels = sorted(set(real_labels))
    colours = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, 1 + len(generated), figsize=(4.2 * (1 + len(generated)), 4), squeeze=False)
    start = 0
    for ax, (name, (block, block_labels)) in zip(axes[0], [("real", (real, real_labels)), *generated.items()]):
        xy = joint[start:start + len(block)]
        start += len(block)
        ax.scatter(joint[:, 0], joint[:, 1], s=3, c="lightgrey")
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c=[colours.get(lbl, "black") for lbl in block_labels])
        ax.set_title(f"{name} ({len(block)} cells)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=lbl[:20]) for lbl, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=6)
    _save(fig, path)


def ablation_figure(table: pd.DataFrame, path: str | Path) -> None:
    """One panel per task and metric (and dataset, where a task has several): each GRPO arm's paired difference to
    SFT on the task's primary metric and its guard metrics, with its CI (the ablation table,
    :mod:`cellduality.evaluation.ablation`)."""
    plt = _pyplot()
    deltas = table[table["arm"] != "sft"]
    if "dataset" not in deltas:
        deltas = deltas.assign(dataset="all")
    if "metric" not in deltas:
        deltas = deltas.assign(metric="")
    panels = list(deltas.groupby(["task", "dataset", "metric"], sort=False).groups) or [("(no task)", "all", "")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (task, dataset, metric) in zip(axes[0], panels):
        rows = deltas[(deltas["task"] == task) & (deltas["dataset"] == dataset)
                      & (deltas["metric"] == metric)].reset_index(drop=True)
        ax.axhline(0, color="grey", lw=0.8)
        ax.errorbar(range(len(rows)), rows["delta_vs_sft"],
                    yerr=[rows["delta_vs_sft"] - rows["delta_ci_low"], rows["delta_ci_high"] - rows["delta_vs_sft"]],
                    fmt="o", capsize=4)
        ax.set_xticks(range(len(rows)), [a.removeprefix("grpo_") for a in rows["arm"]])
        ax.set_title(f"{task}{'' if dataset == 'all' else f' [{dataset}]'}: {metric}", fontsize=9)
        ax.set_ylabel("difference to SFT (95% CI)")
        ax.set_xlim(-0.5, max(len(rows), 1) - 0.5)
    _save(fig, path)


def write_report_figures(*, predictions: dict[str, str | Path], curves: dict[str, str | Path],
                         label_signal: Sequence[str | Path], data: dict[str, dict[str, str]], outputs,
                         ceiling: Sequence[str | Path] = ()) -> None:
    """All report figures and the diagnostics tables (``outputs``: confusion, rewards, umap, label_signal,
    ceiling); ``label_signal`` holds one true-label-wins JSON per replicate (the first is drawn beside the reward
    curves; its annotation ceiling, where measured, joins the ceiling table: the reward's own accuracy is its
    true-label win rate), ``ceiling`` one generation ceiling check per replicate (cellduality.evaluation.ceiling)."""
    import json

    from cellduality.evaluation.classification_metrics import is_missing
    from cellduality.evaluation.generation_metrics import make_embedding
    from cellduality.evaluation.score import ExpressionSpace, confusion_matrices

    frames = []
    for variant, path in predictions.items():
        frame = pd.read_parquet(path)
        frame["model"] = variant
        frames.append(frame)
    pred = pd.concat(frames, ignore_index=True)
    matrices = {k: m for k, m in confusion_matrices(pred).items() if k[1] == "annotation"} or confusion_matrices(pred)
    confusion_figure(matrices, outputs.confusion)
    signals = [{"replicate": i, **json.loads(Path(p).read_text())["summary"]} for i, p in enumerate(label_signal)]
    signal = signals[0] if signals else None
    reward_curve_figure(curves, outputs.rewards, signal)

    generated = pred[(pred["task"] == "generation") & ~pred["prediction"].map(is_missing)]
    reference = pred[pred["task"] == "generation"].drop_duplicates("prompt_id")
    if len(reference) >= 3:
        space = ExpressionSpace(data)
        fit = space.fit(reference["dataset"].iloc[0])
        real = fit.invert(reference["reference_sentence"].tolist()).X
        embedding = make_embedding(real, fit.genes, n_components=20)
        blocks = {v: (embedding.transform(fit.invert(g["prediction"].tolist()).X), g["label"].tolist())
                  for v, g in generated.groupby("model") if len(g) >= 2}
        umap_figure(embedding.transform(real), reference["label"].tolist(), blocks, outputs.umap)
    else:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.text(0.5, 0.5, "no conditional-generation predictions", ha="center")
        ax.axis("off")
        _save(fig, outputs.umap)

    rows = signals
    with atomic_path(outputs.label_signal) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)
    checks = [{"replicate": i, **json.loads(Path(p).read_text())["summary"]} for i, p in enumerate(ceiling)]
    checks += [{"replicate": s["replicate"], "task": "annotation", "n_prompts": s["n_cells"], "samples": 1,
                "beta": s["beta"], "judge_accuracy_real": s["win_rate"], "policy_accuracy": s["policy_accuracy"],
                "kl_optimum_accuracy": s["kl_optimum_accuracy"], "ceiling_gain": s["ceiling_gain"],
                "chance_rate": s["chance_rate"]} for s in signals if s.get("kl_optimum_accuracy") is not None]
    columns = ["replicate", "task", "n_prompts", "samples", "beta", "judge_accuracy_real", "policy_accuracy",
               "mean_reward", "kl_optimum_accuracy", "ceiling_gain", "chance_rate"]
    with atomic_path(outputs.ceiling) as tmp:
        pd.DataFrame(checks, columns=columns).to_csv(tmp, sep="\t", index=False, float_format="%.4f")
