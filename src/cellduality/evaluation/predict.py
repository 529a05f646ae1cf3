"""Answer the evaluation prompts with a model and parse every response (the input of all metrics)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cellduality.evaluation.selection import eval_rows
from cellduality.evaluation.settings import EvaluationSettings
from cellduality.io import atomic_path
from cellduality.tasks.registry import get_task
from cellduality.tasks.schema import decode_column
from cellduality.training.decoding import generate_chat
from cellduality.training.setup import load_tokenizer, on_device

log = logging.getLogger(__name__)
PREDICTION_COLUMNS = ("prompt_id", "sample", "task", "dataset", "split", "label", "candidates", "reference_sentence",
                      "input_sentence", "metadata", "cell_ids", "response", "format_ok", "prediction")


def parse_prediction(task: str, response: str, candidates: Sequence[str]) -> tuple[bool, str | None]:
    """(format OK, the task's answer) by the task's registered parser: a candidate label, a space-joined gene
    list, or a ' | '-joined CellPuzzles assignment; the answer is None for a format error or an unusable answer."""
    return get_task(task).parse_prediction(response, candidates)


def predict(model_path: str, tables: Sequence[str | Path], out: str | Path, settings: EvaluationSettings) -> pd.DataFrame:
    """Answers of ``model_path`` to the eval-stage primal prompts of ``tables``, parsed: label and CellPuzzles
    answers greedy (one per prompt; with ``settings.constrain_to_candidates`` they can only name the prompt's
    candidates, :class:`cellduality.training.decoding.CandidateItems`, for models whose tokenizer records its
    labels), gene-list answers (generation, perturbation) ``settings.samples_per_prompt`` samples each at
    ``settings.sample_temperature`` (column ``sample``), seeded by ``settings.seed``; with
    ``settings.constrain_to_candidates`` a gene list cannot hold a label token either (a cell type or drug is
    not a gene)."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = eval_rows(tables, settings.max_prompts_per_table)
    sampled = rows["task"].map(lambda task: get_task(task).kind("primal") == "genes").to_numpy(bool)
    greedy = rows[~sampled].assign(sample=0)
    population = rows[sampled].loc[rows[sampled].index.repeat(settings.samples_per_prompt)]
    population = population.assign(sample=population.groupby(level=0).cumcount())
    tokenizer = load_tokenizer(model_path)
    model = on_device(AutoModelForCausalLM.from_pretrained(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("answering %d eval prompts with %s (greedy: %d; %d gene-list prompts x %d samples at temperature %g)",
             len(rows), model_path, len(greedy), int(sampled.sum()), settings.samples_per_prompt,
             settings.sample_temperature)
    allowed = None
    if settings.constrain_to_candidates:
        allowed = [list(c) if get_task(t).kind("primal") in ("label", "assignment") and c else None
                   for t, c in zip(greedy["task"], decode_column(greedy, "candidates"))]
    greedy["response"] = generate_chat(model, tokenizer, decode_column(greedy, "prompt"),
                                       max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                                       allowed_labels=allowed)
    torch.manual_seed(settings.seed)
    population["response"] = generate_chat(model, tokenizer, decode_column(population, "prompt"),
                                           max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                                           temperature=settings.sample_temperature,
                                           gene_rows=[True] * len(population) if settings.constrain_to_candidates
                                           else None)
    rows = pd.concat([greedy, population]).sort_index(kind="stable").reset_index(drop=True)
    parsed = [parse_prediction(t, r, c)
              for t, r, c in zip(rows["task"], rows["response"], decode_column(rows, "candidates"))]
    rows["format_ok"] = [ok for ok, _ in parsed]
    rows["prediction"] = [answer for _, answer in parsed]
    result = rows[list(PREDICTION_COLUMNS)]
    with atomic_path(out) as tmp:
        result.to_parquet(tmp, index=False)
    return result
