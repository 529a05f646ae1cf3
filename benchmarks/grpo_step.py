"""Seconds per GRPO step with the duality reward vs the ground-truth (oracle) reward, same model, one run.

    python benchmarks/grpo_step.py [--steps 6] [--sft-steps 150] [--workdir benchmarks/out/grpo]

Builds the embedded setting from scanpy's pbmc68k_reduced (annotation task, K=32), a tiny Llama, and a
short SFT on reference answers so that rollouts are well formed (otherwise no dual task would run and the
comparison would flatter the duality reward). Then runs GRPO for --steps optimizer steps with each reward
and prints the mean step time (TRL's ``step_time``, first step excluded), the ratio (target <= 1.6x),
the format-OK rate and dual generations per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellduality.data.download import fetch
from cellduality.data.preprocess import PreprocessSettings, preprocess_file
from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table
from cellduality.tasks.prompts import format_answer
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.tables import write_task_tables
from cellduality.training.grpo import run_grpo
from cellduality.training.settings import EmbeddedModelSettings, GRPOSettings, LoraSettings, SFTSettings
from cellduality.training.sft import run_sft
from cellduality.training.tiny_model import build_tiny_model


def prepare(work: Path, sft_steps: int) -> tuple[Path, Path]:
    tasks = work / "tasks.parquet"
    if not tasks.exists():
        fetch("builtin:scanpy/pbmc68k_reduced", work / "raw.h5ad")
        preprocess_file(work / "raw.h5ad", work / "processed.h5ad", work / "qc.json",
                        {"labels": {"cell_type": "bulk_labels"}, "constants": {"tissue": "peripheral blood"}},
                        PreprocessSettings(), "pbmc68k")
        write_sentence_table(work / "processed.h5ad", work / "sentences.parquet", dataset="pbmc68k",
                             cell_sentence=CellSentenceSettings(top_k=32))
        write_task_tables(work / "sentences.parquet", tasks, ["annotation"], top_k=32)
    sft_model = work / "sft"
    if not sft_model.exists():
        build_tiny_model([work / "sentences.parquet"], [tasks], work / "base", EmbeddedModelSettings(hidden_size=128))
        table = pd.read_parquet(tasks)
        sft = table[table.stage == "sft"].copy()
        sft["completion"] = [format_answer("Marker genes decide.", a) for a in sft.answer]
        sft["accepted"] = True
        sft.to_parquet(work / "sft.parquet")
        s = SFTSettings(epochs=100, max_steps=sft_steps, learning_rate=3e-3, max_length=1024, save_steps=10_000,
                        logging_steps=50)
        run_sft(str(work / "base"), [work / "sft.parquet"], sft_model, work / "sft_ckpt", s, LoraSettings())
    return sft_model, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="completions per step (train = mini batch)")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/grpo"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model, tasks = prepare(args.workdir, args.sft_steps)
    s = GRPOSettings(num_generations=args.generations, train_batch_size=args.batch, mini_batch_size=args.batch,
                     max_steps=args.steps, learning_rate=1e-5, max_completion_length=32, dual_max_new_tokens=24,
                     save_steps=10_000)
    results = {}
    for mode in ("oracle", "duality"):
        out = args.workdir / f"grpo_{mode}_{time.time_ns()}"
        run_grpo(str(model), [tasks], out, out / "ckpt", s, RewardSettings(mode=mode), LoraSettings())
        history = json.loads((out / "log_history.json").read_text())
        steps = [e for e in history if "step_time" in e][1:]
        results[mode] = {
            "s_per_step": sum(e["step_time"] for e in steps) / len(steps),
            "format_ok": sum(e.get("format_ok", 0) for e in steps) / len(steps),
            "dual_generations": sum(e.get("dual_generations", 0) for e in steps) / len(steps),
        }
    ratio = results["duality"]["s_per_step"] / results["oracle"]["s_per_step"]
    for mode, r in results.items():
        print(f"{mode:8s} {r['s_per_step']:.3f} s/step  format_ok={r['format_ok']:.2f}  "
              f"dual_generations/step={r['dual_generations']:.1f}")
    print(f"duality/oracle step-time ratio = {ratio:.2f}x (target <= 1.6x); {args.batch} completions/step, "
          f"G={args.generations}, {args.steps} steps")


if __name__ == "__main__":
    main()
