"""What the benchmarks that start from a finished embedded run share: its config, an output folder, the
cell-sentence table of a task's first dataset, and a model's log-probability of each candidate answer."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def run_folder(results: Path, config_path: Path, out: Path | None, task: str, name: str) -> tuple[dict, Path, Path]:
    """(validated config, ``out`` or ``<results>/<name>`` created, cell-sentence table of ``task``'s dataset)."""
    from cellduality.config import load_config

    config = load_config(config_path)
    out = out or results / name
    out.mkdir(parents=True, exist_ok=True)
    dataset = config["tasks"][task][0]
    return config, out, results / "cell_sentences" / f"{dataset}.parquet"


def candidate_log_probs(model, tokenizer, prompts: list, candidates: list[str]):
    """``len(prompts) x len(candidates)`` array: the model's teacher-forced log-probability of answering each
    prompt with each candidate, in the answer-only format the embedded default trains
    (``<think></think>`` then ``<answer>candidate</answer>``; cellduality.training.decoding.candidate_log_probs)."""
    import numpy as np

    from cellduality.training.decoding import candidate_log_probs as log_probs

    return np.maximum(np.array(log_probs(model, tokenizer, prompts, [candidates] * len(prompts))), np.log(1e-30))
