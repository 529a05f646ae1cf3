"""Annotate new cells with a trained model: ``cellduality annotate --model DIR --h5ad IN --out OUT.h5ad``.

The model folder's ``cellduality.json`` (:mod:`cellduality.training.model_card`, written next to every trained model) holds
what the run learned with: the label set, the preprocessing and cell-sentence settings and the species. The
new h5ad is preprocessed with those settings (:func:`cellduality.data.preprocess.preprocess`, no labels
needed), each cell becomes a top-K cell sentence, and the annotation prompt over the model's label set is
answered greedily (label tokens outside the label set banned unless ``constrain`` is off), in chunks of
``chunk_size`` cells (generations are written out chunk by chunk, never all
held in memory). Output:

- ``OUT.h5ad``: the input with ``obs["cellduality_label"]`` (the answer mapped onto the label set; missing for a
  format error or a cell removed by QC), ``obs["cellduality_confidence"]`` (the model's probability of the
  tokens of its answer, teacher-forced: exp of their summed log-probabilities; 0 for a format error) and
  ``obs["cellduality_format_error"]``;
- ``OUT.reasoning.parquet``: one row per annotated cell (``obs_name``, ``response``, ``reasoning``).

Bad input is one line: no overlap between the h5ad's genes and the model's vocabulary, Ensembl ids without a
symbol column, a model folder without ``cellduality.json``.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.tasks.parsing import parse_response
from cellduality.tasks.prompts import annotation_prompt
from cellduality.tasks.registry import get_task
from cellduality.training.model_card import read_model_card

log = logging.getLogger(__name__)
def answer_probability(model, tokenizer, conversations, responses, answers, batch_size: int = 32) -> list[float]:
    """exp(sum of log-probabilities) of each answer's tokens, teacher-forced after the prompt and the response
    text before the answer (0 where the answer is None)."""
    from cellduality.training.decoding import continuation_log_probs

    contexts = [tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
                + response[: max(response.find(answer), 0)] if answer is not None else ""
                for messages, response, answer in zip(conversations, responses, answers)]
    log_probs = continuation_log_probs(model, tokenizer, contexts, [a or "" for a in answers], batch_size)
    return [math.exp(lp) if answer is not None else 0.0 for lp, answer in zip(log_probs, answers)]


def annotate(model_dir: str | Path, h5ad: str | Path, out: str | Path, *, batch_size: int = 32,
             max_new_tokens: int = 48, chunk_size: int = 2048, progress: bool = True,
             constrain: bool = True) -> pd.DataFrame:
    """Annotate every cell of ``h5ad`` (see the module docstring); returns the per-cell result table."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    from cellduality.data.cell_sentences import cell_sentences
    from cellduality.data.preprocess import PreprocessSettings, preprocess, read_h5ad
    from cellduality.training.decoding import generate_chat
    from cellduality.training.setup import load_tokenizer, on_device

    card = read_model_card(model_dir)
    labels = list(card["labels"])
    adata = read_h5ad(h5ad)
    entry = {"species": card.get("species", "human"), "labels": {}, "metadata": {}, "constants": {}}
    settings = PreprocessSettings.from_params(card["preprocess"])
    processed, report = preprocess(adata, entry, settings, "annotate", where=str(h5ad))
    tokenizer = load_tokenizer(str(model_dir))
    known = set(tokenizer.init_kwargs.get("answer_items") or [])
    if known:
        overlap = sum(g in known for g in processed.var_names)
        if overlap == 0:
            raise CellDualityError(f"{h5ad}: none of its {processed.n_vars} genes is in the model's gene vocabulary "
                                   f"(e.g. {', '.join(map(str, processed.var_names[:3]))}); use gene symbols of the "
                                   f"same species ({card.get('species')}) as the training data")
        log.info("%d of %d genes of %s are in the model's vocabulary", overlap, processed.n_vars, h5ad)
    sentences = cell_sentences(processed, card["top_k"], tie_break=card.get("tie_break", "var_order"))
    model = on_device(AutoModelForCausalLM.from_pretrained(str(model_dir)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    spec = get_task("annotation")
    names = list(processed.obs_names)
    result = pd.DataFrame({"cellduality_label": pd.Series([None] * len(names), dtype="object"),
                           "cellduality_confidence": 0.0, "cellduality_format_error": True}, index=names)
    reasoning_path = Path(str(out).removesuffix(".h5ad") + ".reasoning.parquet")
    schema = pa.schema([("obs_name", pa.string()), ("response", pa.string()), ("reasoning", pa.string())])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names), desc="annotate", unit="cell", file=sys.__stderr__)
    with atomic_path(reasoning_path) as tmp_reasoning:
        with pq.ParquetWriter(tmp_reasoning, schema) as writer:
            for start in range(0, len(names), chunk_size):
                chunk = names[start:start + chunk_size]
                conversations = [annotation_prompt(s.split(), {}, labels) for s in sentences[start:start + chunk_size]]
                responses = generate_chat(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size,
                                          allowed_labels=[labels] * len(conversations) if constrain else None)
                parsed = [parse_response(r) for r in responses]
                answers = [spec.parse_prediction(r, labels)[1] for r in responses]
                confidence = answer_probability(model, tokenizer, conversations, responses,
                                                [p.answer if a is not None else None for p, a in zip(parsed, answers)],
                                                batch_size)
                result.loc[chunk, "cellduality_label"] = answers
                result.loc[chunk, "cellduality_confidence"] = confidence
                result.loc[chunk, "cellduality_format_error"] = [a is None for a in answers]
                writer.write_table(pa.table({"obs_name": chunk, "response": responses,
                                             "reasoning": [p.think or "" for p in parsed]},
                                            schema=schema))
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        annotated = adata.copy()
        full = result.reindex(annotated.obs_names.astype(str))
        annotated.obs["cellduality_label"] = pd.Categorical(full["cellduality_label"].to_numpy(), categories=labels)
        annotated.obs["cellduality_confidence"] = full["cellduality_confidence"].fillna(0.0).to_numpy(float)
        annotated.obs["cellduality_format_error"] = full["cellduality_format_error"].fillna(True).to_numpy(bool)
        annotated.uns["cellduality_annotate"] = {"model": str(model_dir), "labels": labels,
                                                 "cells_removed_by_qc": int(adata.n_obs - processed.n_obs),
                                                 "input_kind": report.input_kind,
                                                 "confidence": "probability of the answer tokens (teacher-forced)"}
        with atomic_path(out) as tmp:
            annotated.write_h5ad(tmp)
    log.info("annotated %d cells of %s: %d format errors, median confidence %.3f", len(names), h5ad,
             int(result["cellduality_format_error"].sum()), float(np.median(result["cellduality_confidence"])))
    return result
