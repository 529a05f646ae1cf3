"""Duality-reward ablation: from one SFT model, GRPO on annotation with several reward settings, over seeds.

    python benchmarks/experiments/duality_ablation.py [--results results] [--config config/config.yaml] [--seeds 0 1 2]
        [--settings duality,duality_h25,duality_h50,duality_markers,duality_frozen,oracle]
        [--tlw-cells 100] [--grpo '{"max_steps": 40}'] [--out results/ablation]

Needs a finished embedded run (``snakemake --cores 2``): its cell-sentence table, annotation task table settings
and SFT model (``models/sft/rep0``). Every setting trains GRPO (the config's ``grpo`` section, annotation RL
prompts only, seed = each ``--seeds`` value) from that SFT model, then measures
- annotation accuracy and format-error rate on ALL test cells (greedy, the eval prompts), and
- "true label wins" of the trained model on ``--tlw-cells`` RL cells (does the duality reward still prefer the
  right label?).
``sft`` (no GRPO) is measured once (greedy decoding of one model: no seed variation). Settings:
``duality`` (the config's inpainting), ``duality_h25`` / ``duality_h50`` (hidden_fraction 0.25 / 0.5),
``duality_markers`` (strategy markers with ``inpainting.markers: data``: the cell types' discriminating genes
among the SFT cells are hidden first), ``duality_frozen`` (dual answers by the frozen SFT model instead of the
policy), ``oracle`` (ground-truth reward: the upper bound).
Prints a table and writes ``ablation.tsv`` (one row per run), ``ablation.md`` (mean ± std per setting) and
``ablation.png``, and ``kl_optimum.tsv``: on the SFT model's true-label-wins cells, the accuracy of the most
likely answer of GRPO's KL-regularised optimum p*(y) ~ p_sft(y) exp(r(y) / beta) for a range of beta (inf: the
SFT model alone; 0: the duality reward alone), i.e. what the duality reward could give at best with that KL
coefficient when rewards are not rescaled (``grpo.scale_rewards: none``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_folder

from run_folder import candidate_log_probs, run_folder

from cellduality.data.sentence_table import CellSentenceSettings
from cellduality.evaluation.predict import predict
from cellduality.evaluation.settings import EvaluationSettings
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import write_task_tables
from cellduality.training.grpo import run_grpo
from cellduality.training.label_signal import kl_optimum_accuracy, true_label_wins_for_model
from cellduality.training.settings import DiagnosticsSettings, GRPOSettings, LoraSettings

SETTINGS = {
    "duality": {"mode": "duality"},
    "duality_h25": {"mode": "duality", "hidden_fraction": 0.25},
    "duality_h50": {"mode": "duality", "hidden_fraction": 0.5},
    "duality_markers": {"mode": "duality", "strategy": "markers"},
    "duality_frozen": {"mode": "duality", "dual_model": "frozen"},
    "oracle": {"mode": "oracle"},
}


def table_for(setting: dict, config: dict, cells: Path, out: Path) -> tuple[Path, dict]:
    """The annotation task table with this setting's inpainting masks (RL rows differ; eval prompts do not)."""
    inpainting = {**config["inpainting"], **{k: setting[k] for k in ("hidden_fraction", "strategy") if k in setting}}
    if inpainting["strategy"] == "markers" and not inpainting.get("markers"):
        inpainting["markers"] = "data"  # every cell type's discriminating genes among the SFT cells
    name = f"h{inpainting['hidden_fraction']}_{inpainting['strategy']}"
    path = out / "tables" / f"{name}.parquet"
    if not path.exists():
        write_task_tables(cells, path, ["annotation"], tables=TaskTableSettings.from_config(config),
                          inpainting=InpaintingSettings.from_params(inpainting),
                          cellpuzzles=CellPuzzlesSettings.from_config(config),
                          top_k=CellSentenceSettings.from_config(config).top_k)
    return path, inpainting


def measure(model: Path, table: Path, inpainting: dict, config: dict, run_dir: Path, tlw_cells: int | None) -> dict:
    # every test cell, unconstrained decoding (format errors are one of the figures)
    evaluation = EvaluationSettings.from_config(config).replace(max_prompts_per_table=None, batch_size=64,
                                                                constrain_to_candidates=False)
    pred = predict(str(model), [table], run_dir / "predictions.parquet", evaluation)
    test = pred[pred["split"] == "test"]
    scores = {"n_test": len(test), "accuracy": float((test["prediction"] == test["label"]).mean()),
              "format_error_rate": float(1 - test["format_ok"].mean())}
    if not tlw_cells:
        return scores | {"tlw_win_rate": float("nan"), "tlw_chance": float("nan"), "tlw_cells": 0}
    # as the workflow runs it: the RL prompts' selection seed and the reward's dual answer length
    wins = true_label_wins_for_model(str(model), [table], run_dir / "true_label_wins.json",
                                     DiagnosticsSettings(true_label_wins_cells=tlw_cells),
                                     seed=TaskTableSettings.from_config(config).seed,
                                     max_new_tokens=GRPOSettings.from_config(config).dual_max_new_tokens)
    return scores | {"tlw_win_rate": wins["win_rate"], "tlw_chance": wins["chance_rate"], "tlw_cells": wins["n_cells"]}


def kl_optimum(model: Path, table: Path, wins_json: Path, betas: list[float]) -> pd.DataFrame:
    """Accuracy, on the true-label-wins cells, of the most likely answer of GRPO's KL-regularised optimum
    p*(y) ~ p_sft(y) exp(r(y) / beta) for each beta (inf: the SFT model; 0: the duality reward alone); p_sft is
    the SFT model's teacher-forced probability of each candidate answer, r the cell's duality reward per label."""
    from transformers import AutoModelForCausalLM

    from cellduality.training.setup import load_tokenizer

    cells = json.loads(wins_json.read_text())["per_cell"]
    labels = list(cells[0]["scores"])
    prompts = pd.read_parquet(table).set_index("prompt_id")["prompt"]
    log_prior = candidate_log_probs(AutoModelForCausalLM.from_pretrained(model), load_tokenizer(str(model)),
                                    [json.loads(prompts[c["prompt_id"]]) for c in cells], labels)
    rewards = [[c["scores"][label] for label in labels] for c in cells]
    gold = [labels.index(c["label"]) for c in cells]
    return pd.DataFrame({"beta": betas, "accuracy": [kl_optimum_accuracy(log_prior, rewards, gold, b) for b in betas],
                         "n_cells": len(cells)})


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby("setting", sort=False)
    out = pd.DataFrame({"n_seeds": g["seed"].count(), "accuracy_mean": g["accuracy"].mean(),
                        "accuracy_std": g["accuracy"].std(ddof=1).fillna(0.0),
                        "format_error_mean": g["format_error_rate"].mean(),
                        "tlw_mean": g["tlw_win_rate"].mean(), "tlw_n": g["tlw_win_rate"].count(),
                        "tlw_chance": g["tlw_chance"].mean(), "grpo_s_mean": g["grpo_s"].mean()})
    sft = out.loc["sft", "accuracy_mean"] if "sft" in out.index else float("nan")
    out["delta_vs_sft_points"] = 100 * (out["accuracy_mean"] - sft)
    return out.reset_index()


def markdown(summary: pd.DataFrame) -> str:
    lines = ["| setting | seeds | annotation accuracy (mean ± std) | Δ vs SFT (points) | format errors | "
             "true-label wins (runs measured; chance) | GRPO s/run |", "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.setting} | {r.n_seeds} | {r.accuracy_mean:.3f} ± {r.accuracy_std:.3f} | "
                     f"{r.delta_vs_sft_points:+.1f} | {r.format_error_mean:.1%} | {r.tlw_mean:.3f} ({r.tlw_n}); "
                     f"{r.tlw_chance:.3f} | {r.grpo_s_mean:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    x = range(len(summary))
    axes[0].bar(x, summary["accuracy_mean"], yerr=summary["accuracy_std"], capsize=3)
    axes[0].set_ylabel("annotation accuracy (test)")
    axes[1].bar(x, summary["tlw_mean"])
    axes[1].plot(list(x), summary["tlw_chance"], "k--", label="chance")
    axes[1].set_ylabel("true-label win rate")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(list(x), summary["setting"], rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--tlw-cells", type=int, default=100)
    parser.add_argument("--tlw-seeds", type=int, nargs="*", default=[0],
                        help="seeds whose trained model also gets the true-label-wins diagnostic (it costs "
                             "cells x candidates generations)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grpo", default="{}", help='JSON overriding config grpo settings, e.g. \'{"max_steps": 40}\'')
    args = parser.parse_args()
    config, out, cells = run_folder(args.results, args.config, args.out, "annotation", "ablation")
    sft = args.results / "models" / "sft" / "rep0"
    runs_path = out / "ablation.tsv"
    done = pd.read_csv(runs_path, sep="\t") if runs_path.exists() else pd.DataFrame()
    rows = done.to_dict("records")
    have = {(r["setting"], int(r["seed"])) for r in rows}

    def record(row: dict) -> None:
        rows.append(row)
        pd.DataFrame(rows).to_csv(runs_path, sep="\t", index=False)  # every finished run is kept
        print(json.dumps(row), flush=True)

    grpo = GRPOSettings.from_config(config).replace(**json.loads(args.grpo))
    rewards, lora = RewardSettings.from_config(config), LoraSettings.from_config(config)
    base_table, base_inpainting = table_for({}, config, cells, out)
    if ("sft", 0) not in have:
        record({"setting": "sft", "seed": 0, "grpo_s": 0.0,
                **measure(sft, base_table, base_inpainting, config, out / "sft", args.tlw_cells)})
    if (out / "sft" / "true_label_wins.json").exists():
        optimum = kl_optimum(sft, base_table, out / "sft" / "true_label_wins.json",
                             [float("inf"), 1.0, 0.5, 0.3, 0.2, 0.15, 0.1, 0.08, 0.04, 0.02, 0.0])
        optimum.to_csv(out / "kl_optimum.tsv", sep="\t", index=False)
        print(optimum.to_markdown(index=False), flush=True)
    for name in args.settings.split(","):
        setting = SETTINGS[name]
        table, inpainting = table_for(setting, config, cells, out)
        for seed in args.seeds:
            if (name, seed) in have:
                continue
            run_dir = out / name / f"seed{seed}"
            seeded = grpo.replace(seed=seed, dual_model=setting.get("dual_model", grpo.dual_model))
            start = time.perf_counter()
            run_grpo(str(sft), [table], run_dir / "model", run_dir / "checkpoints", seeded,
                     rewards.replace(mode=setting["mode"]), lora)
            seconds = time.perf_counter() - start
            record({"setting": name, "seed": seed, "grpo_s": round(seconds, 1),
                    **measure(run_dir / "model", table, inpainting, config, run_dir,
                              args.tlw_cells if seed in args.tlw_seeds else None)})
    summary = summarize(pd.DataFrame(rows))
    (out / "ablation.md").write_text(markdown(summary))
    plot(summary, out / "ablation.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
