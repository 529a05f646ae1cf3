"""CellPuzzles on the embedded default: can the tiny model bind answer slot i to cell i?

    python benchmarks/experiments/cellpuzzles_binding.py [--results results] [--config config/config.yaml]
        [--variants answer_r8,answer_r48,answer_r48_lr1e-3,copy4_r48,labels_r48,answer_r48_g8] [--out DIR]

Needs a finished embedded run (``snakemake --cores 2``): its CellPuzzles dataset's cell-sentence table, base model
(``models/base``) and SFT model (``models/sft/rep0``). Two measurements, each on every test puzzle:

1. ``sft_per_cell``: per-cell scoring + assignment with the run's SFT model. Each cell of a puzzle gets the
   single-cell annotation prompt with the puzzle's candidates; the teacher-forced probability of each candidate
   as the answer gives an N x N score matrix, and the one-to-one assignment with the highest total
   log-probability is the answer (``per_cell_argmax_accuracy``: each cell's most likely candidate, without the
   one-to-one constraint). This is NOT the model answering the puzzle prompt: it says whether what the
   model knows about single cells would solve the puzzles if each answer slot were bound to its cell. (README's
   figures come from a one-phase SFT model; the default's two-phase model has also been trained on puzzles.)
2. Puzzle-only SFT from the base model, answers from the data (no teacher), ``R`` passes over the SFT cells
   (``cellpuzzles.train_rounds``), the config's ``sft`` settings with ``max_steps`` 300 (600 for ``lr1e-3``):
   - ``answer_rR``: ``<think></think>`` then the answer, as the embedded default trains;
   - ``copyK_rR``: reasoning lines ``Cell i: <its top K genes> -> <type>``, then the answer;
   - ``labels_rR``: reasoning lines ``Cell i: <type>``, then the answer;
   - a ``_gM`` suffix (e.g. ``answer_r48_g8``) shows each cell by its top M genes only, in training and test
     puzzles (a prompt of ~250 tokens instead of ~540; the top 4 genes already tell a logistic regression the
     cell type of 72% of pbmc68k's test cells).
   For reasoning variants it also counts how often a reasoning line copies its cell's genes exactly, names the
   cell's type, and agrees with the answer's slot.

Prints a table and writes ``puzzle_binding.tsv`` and ``puzzle_binding.md`` under ``--out``
(default ``<results>/puzzle_binding``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_folder

from run_folder import candidate_log_probs, run_folder

from cellduality.data.sentence_table import CellSentenceSettings
from cellduality.evaluation.classification_metrics import cellpuzzles_scores
from cellduality.evaluation.predict import predict
from cellduality.evaluation.score import parsed_predictions
from cellduality.evaluation.settings import EvaluationSettings
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.prompts import annotation_prompt
from cellduality.tasks.schema import decode_column
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import write_task_tables
from cellduality.training.settings import LoraSettings, SFTSettings
from cellduality.training.sft import run_sft

VARIANT = re.compile(r"^(answer|labels|copy(\d+))_r(\d+)(_g(\d+))?(_lr([0-9.e-]+))?$")


def puzzle_table(config: dict, cells: Path, rounds: int, out: Path) -> Path:
    path = out / "tables" / f"r{rounds}.parquet"
    if not path.exists():
        write_task_tables(cells, path, ["cellpuzzles"], tables=TaskTableSettings.from_config(config),
                          inpainting=InpaintingSettings.from_config(config),
                          cellpuzzles=CellPuzzlesSettings.from_config(config).replace(train_rounds=rounds),
                          top_k=CellSentenceSettings.from_config(config).top_k)
    return path


def shorter_cells(table: Path, genes: int, out: Path) -> Path:
    """``table`` with each ``Cell i:`` line of every prompt cut to its top ``genes`` genes (a shorter puzzle)."""
    rows = pd.read_parquet(table)

    def cut(prompt: str) -> str:
        messages = json.loads(prompt)
        messages[-1]["content"] = re.sub(r"^(Cell \d+: )(.*)$",
                                         lambda m: m.group(1) + ", ".join(m.group(2).split(", ")[:genes]),
                                         messages[-1]["content"], flags=re.M)
        return json.dumps(messages)

    rows["prompt"] = rows["prompt"].map(cut)
    path = out / "table.parquet"
    rows.to_parquet(path, index=False)
    return path


def cell_lines(messages: list[dict]) -> list[list[str]]:
    """The genes of each ``Cell i:`` line of a CellPuzzles prompt, in order."""
    return [genes.split(", ") for genes in re.findall(r"^Cell \d+: (.*)$", messages[-1]["content"], re.M)]


def reasoning(kind: str, k: int, messages: list[dict], answer: str) -> str:
    labels = answer.split(" | ")
    if kind == "labels":
        return "\n".join(f"Cell {i}: {label}" for i, label in enumerate(labels, 1))
    if kind == "copy":
        return "\n".join(f"Cell {i}: {' '.join(genes[:k])} -> {label}"
                         for i, (genes, label) in enumerate(zip(cell_lines(messages), labels), 1))
    return ""


def sft_data(table: Path, kind: str, k: int, out: Path) -> Path:
    rows = pd.read_parquet(table)
    rows = rows[(rows["stage"] == "sft") & (rows["direction"] == "primal")].copy()
    rows["completion"] = [f"<think>{reasoning(kind, k, m, a)}</think>\n<answer>{a}</answer>"
                          for m, a in zip(decode_column(rows, "prompt"), rows["answer"])]
    rows["accepted"] = True
    path = out / "sft.parquet"
    rows[["prompt_id", "task", "direction", "dataset", "stage", "prompt", "completion", "answer", "accepted"]] \
        .to_parquet(path, index=False)
    return path


def slots(answer) -> list[str]:
    """A parsed assignment (``"a | b"`` or a list; None for a format error) as its list of labels."""
    if answer is None:
        return []
    return [a.strip() for a in answer.split("|")] if isinstance(answer, str) else list(answer)


def slot_accuracy(pred: pd.DataFrame) -> list[float]:
    hits: dict[int, list[bool]] = {}
    for gold, answer in zip(pred["label"], map(slots, parsed_predictions(pred))):
        for slot, label in enumerate(gold.split(" | ")):
            hits.setdefault(slot, []).append(slot < len(answer) and answer[slot] == label)
    return [round(float(np.mean(hits[s])), 2) for s in sorted(hits)]


def reasoning_scores(pred: pd.DataFrame, table: Path, k: int) -> dict:
    prompts = pd.read_parquet(table).set_index("prompt_id")["prompt"]
    copied = named = agrees = n = 0
    for row, answer in zip(pred.itertuples(), map(slots, parsed_predictions(pred))):
        cells = cell_lines(json.loads(prompts[row.prompt_id]))
        gold = row.label.split(" | ")
        think = row.response.split("</think>")[0]
        for slot, (i, rest) in enumerate(re.findall(r"^(?:<think>)?Cell (\d+): (.*)$", think, re.M)):
            genes, label = rest.split(" -> ") if " -> " in rest else ("", rest)
            i = int(i) - 1
            n += 1
            copied += bool(k) and i < len(cells) and genes.split() == cells[i][:k]
            named += i < len(gold) and label.strip() == gold[i]
            agrees += slot < len(answer) and answer[slot] == label.strip()
    return {"lines": n, "copied": round(copied / max(n, 1), 3), "named": round(named / max(n, 1), 3),
            "agrees": round(agrees / max(n, 1), 3)}


def per_cell_assignment(model_dir: Path, table: Path, cells: Path) -> dict:
    """Per-cell scoring + one-to-one assignment with ``model_dir`` on the test puzzles of ``table``."""
    from scipy.optimize import linear_sum_assignment
    from transformers import AutoModelForCausalLM

    from cellduality.training.setup import load_tokenizer

    sentences = pd.read_parquet(cells, columns=["cell_id", "sentence"]).set_index("cell_id")["sentence"]
    rows = pd.read_parquet(table)
    rows = rows[(rows["stage"] == "eval") & (rows["direction"] == "primal")]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    predictions, argmax = [], []
    for ids, meta, candidates in zip(decode_column(rows, "cell_ids"), decode_column(rows, "metadata"),
                                     decode_column(rows, "candidates")):
        prompts = [annotation_prompt(sentences[cell].split(), meta, candidates) for cell in ids]
        p = candidate_log_probs(model, tokenizer, prompts, list(candidates))
        cell_idx, cand_idx = linear_sum_assignment(-p)
        predictions.append([candidates[j] for _, j in sorted(zip(cell_idx, cand_idx))])
        argmax.append([candidates[j] for j in p.argmax(axis=1)])
    gold = rows["label"].tolist()
    assigned = cellpuzzles_scores(gold, predictions).as_dict()
    right = sum(a == g for guess, truth in zip(argmax, gold) for a, g in zip(guess, truth.split(" | ")))
    return {"cell_accuracy": round(float(assigned["cell_accuracy"]), 3), "n_cells": int(assigned["n_cells"]),
            "per_cell_argmax_accuracy": round(right / int(assigned["n_cells"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--variants", default="answer_r8,answer_r48,answer_r48_lr1e-3,copy4_r48,labels_r48,answer_r48_g8")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config, out, cells = run_folder(args.results, args.config, args.out, "cellpuzzles", "puzzle_binding")
    rows = []
    started = time.time()
    default_table = puzzle_table(config, cells, 1, out)
    rows.append({"variant": "sft_per_cell", "puzzles": 0, "seconds": 0,
                 **per_cell_assignment(args.results / "models" / "sft" / "rep0", default_table, cells)})
    print(rows[-1], flush=True)
    for name in [v for v in args.variants.split(",") if v]:
        match = VARIANT.match(name)
        if not match:
            raise SystemExit(f"--variants: {name!r} is not answer_rR, labels_rR or copyK_rR (then optionally _gM, _lrX)")
        kind, k, rounds = match.group(1).rstrip("0123456789"), int(match.group(2) or 0), int(match.group(3))
        lr = float(match.group(7)) if match.group(7) else None
        run_dir = out / name
        run_dir.mkdir(exist_ok=True)
        table = puzzle_table(config, cells, rounds, out)
        if match.group(5):
            table = shorter_cells(table, int(match.group(5)), run_dir)
        data = sft_data(table, kind, k, run_dir)
        # the config's SFT in one phase (the data is puzzles only)
        sft = SFTSettings.from_config(config).replace(max_steps=600 if lr else 300, save_steps=100000,
                                                      held_back_tasks=(), second_phase_steps=0,
                                                      **({"learning_rate": lr} if lr else {}))
        timing = run_dir / "sft_seconds.txt"
        if not timing.exists():  # a variant trained by an earlier (interrupted) run is not trained again
            t0 = time.time()
            run_sft(str(args.results / "models" / "base"), [data], run_dir / "model", run_dir / "checkpoints", sft,
                    LoraSettings())
            timing.write_text(f"{time.time() - t0:.0f}\n")
        seconds = int(timing.read_text())
        evaluation = EvaluationSettings(max_new_tokens=64 + 5 * (k + 8), batch_size=64, constrain_to_candidates=True)
        pred = predict(str(run_dir / "model"), [table], run_dir / "predictions.parquet", evaluation)
        scores = cellpuzzles_scores(pred["label"].tolist(), parsed_predictions(pred)).as_dict()
        row = {"variant": name, "puzzles": int((pd.read_parquet(data)["accepted"]).sum()), "seconds": seconds,
               "cell_accuracy": round(float(scores["cell_accuracy"]), 3), "n_cells": int(scores["n_cells"]),
               "format_errors": round(float(scores["format_error_rate"]), 3), "slot_accuracy": slot_accuracy(pred)}
        if kind != "answer":
            row.update(reasoning_scores(pred, table, k))
        rows.append(row)
        print(row, flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "puzzle_binding.tsv", sep="\t", index=False)
    (out / "puzzle_binding.md").write_text(frame.to_markdown(index=False) + "\n")
    print(frame.to_markdown(index=False))
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
