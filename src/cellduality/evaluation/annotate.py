"""Annotate new cells with a trained model, the way single-cell tools do: ``cellduality.annotate(adata, model)``.

    import cellduality, scanpy as sc
    adata = sc.read_h5ad("new_cells.h5ad")
    cellduality.annotate(adata, "results/models/sft/rep0")   # adata.obs["cellduality_label"], ...

The model folder's ``cellduality.json`` (:mod:`cellduality.training.model_card`) holds what the run learned
with: the label set, the preprocessing and cell-sentence settings, the species and the context its prompts
carried (``context``: e.g. ``tissue: peripheral blood``). The cells are preprocessed with those settings (on a
copy; ``adata.X`` is not changed), each becomes a top-K cell sentence, and the annotation prompt the model was
trained on (the same context line, from obs columns or the training constants) is scored, not generated: the
model's probability of answering each label of its label set, teacher-forced after the answer-only reply prefix
(:func:`cellduality.training.decoding.label_probabilities`), renormalised over the labels. So every cell gets a
label and no answer can be malformed. Written (scanpy's convention: in place, or on a copy with ``copy=True``):

- ``obs["cellduality_label"]``: the most probable label; ``unassigned`` below ``min_confidence`` and for cells
  removed by the model's QC (too few genes);
- ``obs["cellduality_confidence"]``: that label's probability (0 for cells removed by QC);
- ``obsm["cellduality_probabilities"]``: cells x labels, the label order in ``uns["cellduality"]["labels"]``;
- ``obs["cellduality_majority_voting"]`` with ``majority_voting=<obs key of a clustering>``: each cluster's most
  frequent assigned label;
- ``obs["cellduality_reasoning"]`` with ``reasoning=True`` (or a list of obs names): the model's generated
  answer with its reasoning, for those cells only (chain of thought is an option, not the price of a label).

Warnings (``cellduality warning:`` on the terminal): few of the cells' genes in the model's vocabulary, or a
confidence distribution that says the cells do not fit the model (median confidence below
:data:`FIT_MEDIAN`). Bad input is one line: no gene in the vocabulary, Ensembl ids without ``gene_symbols``, a
context column the model needs and the data lacks, a model folder without ``cellduality.json``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellduality.errors import CellDualityError, warn
from cellduality.io import atomic_path
from cellduality.tasks.prompts import annotation_prompt, is_present
from cellduality.training.decoding import label_probabilities
from cellduality.training.model_card import read_model_card

log = logging.getLogger(__name__)
UNASSIGNED = "unassigned"
KEY = "cellduality"
FIT_MEDIAN = 0.5  # median confidence below this: the cells do not look like the model's training cells
MIN_OVERLAP = 0.5  # share of the cells' expressed genes the model knows, below which annotate warns


def context_of(card: Mapping[str, Any], obs: pd.DataFrame, metadata: Mapping[str, str] | None,
               where: str) -> list[dict[str, object]]:
    """Per cell, the context line's values the model's training prompts carried (card ``context``): from the obs
    column ``metadata[key]`` names, else an obs column named ``key``, else the training constant; a key with none
    of these is one line naming it."""
    if "context" not in card:
        warn(f"{where}: the model card predates the recording of prompt context; annotate sends no context line "
             "(retrain, or check that the model was trained without metadata)", log)
    context = card.get("context") or {}
    metadata = dict(metadata or {})
    columns: dict[str, pd.Series] = {}
    for key in context.get("keys", []):
        column = metadata.get(key, key if key in obs.columns else None)
        if column is not None:
            if column not in obs.columns:
                raise CellDualityError(f"{where}: metadata maps context '{key}' to obs column '{column}', which does "
                                       f"not exist; obs columns: {', '.join(map(str, obs.columns[:10]))}")
            columns[key] = obs[column]
        elif key in context.get("constants", {}):
            columns[key] = pd.Series(context["constants"][key], index=obs.index)
        else:
            raise CellDualityError(
                f"{where}: the model's training prompts carried '{key}' (a per-cell context line), but the cells "
                f"have no obs column '{key}'; name the column holding it: metadata={{'{key}': '<obs column>'}} "
                f"(CLI: --metadata {key}=<obs column>)")
    return [{key: value for key, series in columns.items() if is_present(value := series.iloc[i])}
            for i in range(len(obs))]


def _check_symbols(adata, gene_symbols: str | None, where: str) -> None:
    from cellduality.data.preprocess import looks_like_ensembl

    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            raise CellDualityError(f"{where}: gene_symbols '{gene_symbols}' is not a var column; var columns: "
                                   f"{', '.join(map(str, adata.var.columns)) or 'none'}")
        return
    if looks_like_ensembl(adata.var_names.astype(str)):
        raise CellDualityError(f"{where}: var_names are Ensembl ids; pass gene_symbols='<var column of symbols>' "
                               "(CLI: --gene-symbols COLUMN)")


def annotate(adata, model: str | Path, *, copy: bool = False, min_confidence: float = 0.0,
             majority_voting: str | None = None, reasoning: bool | Sequence[str] = False,
             metadata: Mapping[str, str] | None = None, gene_symbols: str | None = None, batch_size: int = 128,
             max_new_tokens: int = 64, where: str = "adata"):
    """Label every cell of ``adata`` with the model in folder ``model`` (see the module notes). ``copy=False``
    writes into ``adata`` and returns None; ``copy=True`` returns an annotated copy. ``metadata`` maps the
    context keys of the model's prompts to obs columns; ``gene_symbols`` is a var column of gene symbols (when
    var_names are Ensembl ids); ``where`` names the data in messages (the CLI passes the file)."""
    from transformers import AutoModelForCausalLM

    from cellduality.data.cell_sentences import cell_sentences
    from cellduality.data.preprocess import PreprocessSettings, preprocess
    from cellduality.training.setup import load_tokenizer, on_device

    card = read_model_card(model)
    labels = list(card["labels"])
    if majority_voting is not None and majority_voting not in adata.obs.columns:
        raise CellDualityError(f"{where}: majority_voting '{majority_voting}' is not an obs column (a clustering, "
                               "e.g. leiden)")
    _check_symbols(adata, gene_symbols, where)
    entry = {"species": card.get("species", "human"), "labels": {}, "metadata": {}, "constants": {}}
    if gene_symbols is not None:
        entry["gene_symbol_key"] = gene_symbols
    processed, report = preprocess(adata, entry, PreprocessSettings.from_params(card["preprocess"]), "annotate",
                                   where=where)
    contexts = context_of(card, adata.obs.loc[processed.obs_names], metadata, where)
    tokenizer = load_tokenizer(str(model))
    _check_overlap(tokenizer, processed, card, where)
    sentences = cell_sentences(processed, card["top_k"], tie_break=card.get("tie_break", "var_order"))
    lm = on_device(AutoModelForCausalLM.from_pretrained(str(model))).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    conversations = [annotation_prompt(s.split(), c, labels) for s, c in zip(sentences, contexts)]
    probabilities = label_probabilities(lm, tokenizer, conversations, labels, batch_size)

    target = adata.copy() if copy else adata
    names = target.obs_names.astype(str)
    full = np.zeros((target.n_obs, len(labels)))
    rows = pd.Index(names).get_indexer(processed.obs_names.astype(str))
    full[rows] = probabilities
    kept = np.zeros(target.n_obs, dtype=bool)
    kept[rows] = True
    confidence = np.where(kept, full.max(axis=1), 0.0)
    best = np.array(labels, dtype=object)[full.argmax(axis=1)] if labels else np.array([], dtype=object)
    assigned = np.where(kept & (confidence >= min_confidence), best, UNASSIGNED)
    target.obs["cellduality_label"] = pd.Categorical(assigned, categories=[*labels, UNASSIGNED])
    target.obs["cellduality_confidence"] = confidence
    target.obsm["cellduality_probabilities"] = full
    if majority_voting is not None:
        target.obs["cellduality_majority_voting"] = _majority(target.obs, majority_voting, labels)
    if reasoning is not False:
        target.obs["cellduality_reasoning"] = _reasoning(lm, tokenizer, conversations, names[rows], reasoning,
                                                         labels, max_new_tokens, batch_size, target.n_obs, names)
    target.uns[KEY] = {"model": str(model), "labels": labels, "min_confidence": float(min_confidence),
                       "cells_removed_by_qc": int((~kept).sum()), "input_kind": report.input_kind,
                       "confidence": "probability of the label, renormalised over the model's labels"}
    _check_fit(confidence[kept], where)
    log.info("%s", summary_text(target.obs))
    return target if copy else None


def _check_overlap(tokenizer, processed, card: Mapping[str, Any], where: str) -> None:
    known = set(tokenizer.init_kwargs.get("answer_items") or [])
    if not known:
        return
    overlap = sum(g in known for g in processed.var_names)
    if overlap == 0:
        raise CellDualityError(f"{where}: none of its {processed.n_vars} genes is in the model's gene vocabulary "
                               f"(e.g. {', '.join(map(str, processed.var_names[:3]))}); use gene symbols of the "
                               f"same species ({card.get('species')}) as the training data")
    share = overlap / processed.n_vars
    (warn if share < MIN_OVERLAP else log.info)(
        f"{where}: {overlap} of its {processed.n_vars} genes ({share:.0%}) are in the model's vocabulary"
        + ("; cells of another tissue or species than the model's training data cannot be described well"
           if share < MIN_OVERLAP else ""))


def _check_fit(confidence: np.ndarray, where: str) -> None:
    if len(confidence) and np.median(confidence) < FIT_MEDIAN:
        warn(f"{where}: median confidence {np.median(confidence):.2f} (below {FIT_MEDIAN}): the cells do not look "
             "like the model's training cells; check its labels (cellduality info MODEL) or set min_confidence")


def _majority(obs: pd.DataFrame, key: str, labels: Sequence[str]) -> pd.Categorical:
    """Each cluster of obs ``key``: its most frequent assigned label (``unassigned`` when it has none)."""
    voted = obs.groupby(key, observed=True)["cellduality_label"].agg(
        lambda s: s[s != UNASSIGNED].mode().iloc[0] if (s != UNASSIGNED).any() else UNASSIGNED)
    return pd.Categorical(obs[key].map(voted).astype(object).fillna(UNASSIGNED), categories=[*labels, UNASSIGNED])


def _reasoning(lm, tokenizer, conversations, kept_names, reasoning, labels, max_new_tokens, batch_size, n,
               names) -> pd.Series:
    from cellduality.training.decoding import generate_chat

    wanted = set(kept_names) if reasoning is True else set(map(str, reasoning))
    rows = [i for i, name in enumerate(kept_names) if name in wanted]
    replies = generate_chat(lm, tokenizer, [conversations[i] for i in rows], max_new_tokens=max_new_tokens,
                            batch_size=batch_size, allowed_labels=[labels] * len(rows))
    out = pd.Series([""] * n, index=names, dtype=object)
    out.loc[[kept_names[i] for i in rows]] = replies
    return out.to_numpy()


def summary_text(obs: pd.DataFrame) -> str:
    """Per label: cells and mean confidence (the end of an annotate run)."""
    table = obs.groupby("cellduality_label", observed=True)["cellduality_confidence"].agg(["size", "mean"])
    lines = [f"{label}: {int(row['size'])} cells, mean confidence {row['mean']:.2f}"
             for label, row in table.sort_values("size", ascending=False).iterrows()]
    return "annotated {} cells\n  {}".format(len(obs), "\n  ".join(lines))


def check_output(out: str | Path) -> Path:
    """The output path, checked before any model is loaded: its folder must be a folder (created if missing)
    and writable; one line otherwise."""
    import os

    out = Path(out)
    parent = out.parent
    for folder in [parent, *parent.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise CellDualityError(f"--out {out}: {folder} is a file, not a folder; choose another output path")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise CellDualityError(f"--out {out}: cannot write in {folder} (permission denied); choose a "
                                       "writable folder")
            break
    if out.is_dir():
        raise CellDualityError(f"--out {out} is a folder; give a file name")
    return out


def annotation_figure(adata, path: str | Path) -> None:
    """Two panels: the cells in an embedding coloured by their label (``obsm["X_umap"]`` when the data has one,
    else the first two principal components of the label probabilities), and the confidence histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "X_umap" in adata.obsm:
        xy, name = np.asarray(adata.obsm["X_umap"])[:, :2], "UMAP"
    else:
        centred = adata.obsm["cellduality_probabilities"] - adata.obsm["cellduality_probabilities"].mean(axis=0)
        xy, name = (np.linalg.svd(centred, full_matrices=False)[0][:, :2] if len(centred) > 2 else
                    np.zeros((len(centred), 2))), "PCA of the label probabilities"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = adata.obs["cellduality_label"].astype(str)
    for label in sorted(labels.unique()):
        chosen = (labels == label).to_numpy()
        left.scatter(xy[chosen, 0], xy[chosen, 1], s=6, label=f"{label} ({chosen.sum()})",
                     color="lightgrey" if label == UNASSIGNED else None)
    left.set_title(f"cellduality_label ({name})", fontsize=9)
    left.legend(fontsize=6, markerscale=2, loc="best")
    right.hist(adata.obs["cellduality_confidence"], bins=20, range=(0, 1), color="steelblue")
    right.set_xlabel("confidence (probability of the label)")
    right.set_ylabel("cells")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def annotate_file(model: str | Path, h5ad: str | Path, out: str | Path, figure: str | Path | None = None,
                  **options) -> pd.DataFrame:
    """:func:`annotate` of an h5ad file, written to ``out`` (atomically), with :func:`annotation_figure` at
    ``figure`` when given; returns the obs columns it added. Output paths are checked before the model loads
    (:func:`check_output`)."""
    from cellduality.data.preprocess import read_h5ad

    out = check_output(out)
    if figure is not None:
        check_output(figure)
    read_model_card(model)
    adata = read_h5ad(h5ad)
    annotate(adata, model, where=str(h5ad), **options)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    if figure is not None:
        annotation_figure(adata, figure)
    print(summary_text(adata.obs), file=sys.__stdout__, flush=True)  # the terminal, past the step's log
    return adata.obs[[c for c in adata.obs.columns if c.startswith("cellduality_")]]


def model_info(model: str | Path) -> str:
    """What ``cellduality info MODEL`` prints: labels, training data, context, metrics and settings of a model."""
    import json

    card = read_model_card(model)
    data = card.get("data") or {}
    lines = [f"model {model} ({card.get('variant', 'trained model')}; species {card.get('species', 'human')})",
             f"labels ({len(card['labels'])}): {', '.join(card['labels'])}",
             "training data: " + ("; ".join(f"{name} ({(info or {}).get('license', 'licence not stated')})"
                                            for name, info in data.items()) or "not recorded")]
    context = card.get("context") or {}
    if context.get("keys"):
        lines.append("prompt context: " + ", ".join(
            f"{k} = {context['constants'][k]!r} (constant)" if k in context.get("constants", {}) else f"{k} (per cell)"
            for k in context["keys"]))
    for name, info in data.items():
        if (info or {}).get("description"):
            lines.append(f"  {name}: {info['description']}")
    lines.append(f"cell sentences: top {card['top_k']} genes; preprocessing {json.dumps(card['preprocess'])}")
    if card.get("settings"):
        lines.append("settings: " + json.dumps(card["settings"], sort_keys=True))
    return "\n".join(lines)
