"""Signal quality of the annotation duality reward before RL: the "true label wins" rate for a model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cellduality.diagnostics import DiagnosticExample, true_label_wins
from cellduality.inpainting import InpaintingConfig
from cellduality.io import atomic_path
from cellduality.trainer_setup import load_tokenizer
from cellduality.training_data import rl_dataset


def true_label_wins_for_model(model_path: str, tables: Sequence[str | Path], out: str | Path, *, max_cells: int,
                              hidden_fraction: float, strategy: str, markers: Sequence[str] | None, seed: int,
                              max_new_tokens: int, batch_size: int = 32) -> dict:
    """Measure on the RL cells (the cells the reward is used on) and write a JSON summary."""
    from transformers import AutoModelForCausalLM

    from cellduality.duality_rewards import model_dual_generator

    rows = rl_dataset(tables, max_cells, seed=seed)
    examples = [DiagnosticExample(genes=row["input_sentence"].split(), label=row["label"],
                                  candidates=json.loads(row["candidates"]), prompt_id=row["prompt_id"],
                                  metadata=json.loads(row["metadata"] or "{}"))
                for row in rows if row["task"] == "annotation" and row["label"]]
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = InpaintingConfig(hidden_fraction, strategy, f"{seed}:rl", frozenset(markers) if markers else None)
    report = true_label_wins(examples, model_dual_generator(model, tokenizer, max_new_tokens, batch_size=batch_size),
                             config, batch_size=batch_size)
    summary = {"model": str(model_path), "chance_rate": _chance(examples), **report.summary()}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"summary": summary, "per_cell": report.per_cell}, indent=1))
    return summary


def _chance(examples: Sequence[DiagnosticExample]) -> float:
    return sum(1 / len(set(ex.candidates)) for ex in examples) / len(examples) if examples else 0.0
