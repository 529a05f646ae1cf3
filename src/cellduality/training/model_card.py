"""The model card of a trained model folder, written by the training steps: ``cellduality.json`` (what
``cellduality annotate`` needs to use the model on new cells: the label set, the preprocessing and cell-sentence
settings, the species, the training settings) and ``README.md`` (the Hugging Face convention, with YAML front
matter: base model, data and their licences, settings, how to use it)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.io import atomic_path
from cellduality.training.tiny_model import label_vocabulary

CARD = "cellduality.json"
CARD_VERSION = 1


def write_model_card(out_dir: str | Path, *, tables: Sequence[str | Path], preprocess: Mapping[str, Any],
                     cell_sentence: Mapping[str, Any], species: str, source: Mapping[str, Any],
                     data: Mapping[str, Mapping[str, Any]] | None = None,
                     settings: Mapping[str, Any] | None = None, variant: str | None = None) -> Path:
    """``cellduality.json`` in a trained model's folder: what ``annotate`` needs to use it on new cells, and
    ``README.md`` (:func:`model_card_text`). The label set is every label and candidate of the annotation
    ``tables``; ``data`` is the training datasets' catalog ``license`` and ``description``, ``settings`` the
    training config sections (sft, lora, ...), ``variant`` the model's name in the run's report (e.g. sft)."""
    card = {"version": CARD_VERSION, "labels": label_vocabulary(tables), "preprocess": dict(preprocess),
            "top_k": cell_sentence["top_k"], "tie_break": cell_sentence.get("tie_break", "var_order"),
            "species": species, "trained": dict(source), "context": prompt_context(tables)}
    card.update({key: dict(value) for key, value in (("data", data), ("settings", settings)) if value})
    if variant:
        card["variant"] = variant
    return _write_card(out_dir, card)


def prompt_context(tables: Sequence[str | Path]) -> dict[str, Any]:
    """The context line of the annotation prompts the model was trained on: ``keys`` (the metadata keys any prompt
    carried, e.g. tissue, donor) and ``constants`` (those with one value in every prompt, e.g. tissue: peripheral
    blood), so ``annotate`` can build the same prompt for new cells."""
    from cellduality.tasks.schema import decode_column, read_task_frame

    values: dict[str, set] = {}
    for path in tables:
        table = read_task_frame(path, columns=["prompt_id", "task", "direction", "metadata"])
        rows = table[(table["task"] == "annotation") & (table["direction"] == "primal")]
        for metadata in decode_column(rows, "metadata", path):
            for key, value in (metadata or {}).items():
                values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return {"keys": sorted(values),
            "constants": {key: json.loads(next(iter(seen))) for key, seen in sorted(values.items()) if len(seen) == 1}}


def derive_model_card(model_dir: str | Path, out_dir: str | Path, *, variant: str,
                      settings: Mapping[str, Any]) -> Path | None:
    """The card of a model trained further from ``model_dir`` (GRPO from the SFT model) into ``out_dir``: the
    same label set, data and base model, its ``settings`` added to the earlier stage's. None when ``model_dir``
    has no card."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        return None
    card = json.loads(path.read_text())
    card["settings"] = {**card.get("settings", {}), **settings}
    card["variant"] = variant
    return _write_card(out_dir, card)


def _write_card(out_dir: str | Path, card: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    with atomic_path(Path(out_dir) / "README.md") as tmp:
        tmp.write_text(model_card_text(card))
    return path


def _front_matter(card: Mapping[str, Any]) -> str:
    """YAML metadata the Hugging Face Hub reads from a model card: the weights learned from data under the
    datasets' own terms (``license: other``), and ``base_model`` when the base is a hub model."""
    import yaml

    from cellduality.training.hub import is_hub_id

    meta: dict[str, Any] = {"license": "other", "library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": ["single-cell", "cellduality"]}
    base = (card.get("trained") or {}).get("model")
    if isinstance(base, str) and is_hub_id(base):
        meta["base_model"] = base
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n"


def model_card_text(card: Mapping[str, Any]) -> str:
    """A human-readable model card (``README.md`` in the model folder, the Hugging Face convention, with its
    YAML front matter): base model, data and their licences, settings, where the metrics are, how to use it."""
    trained = card.get("trained") or {}
    labels = "\n".join(f"- {label}" for label in card["labels"])
    data = card.get("data") or {}
    def one_line(text: Any, missing: str) -> str:
        return " ".join(str(text or missing).split()).rstrip(".")

    datasets = "\n".join(
        f"- **{name}**: {one_line(entry.get('description'), 'no description')}. Licence: "
        f"{one_line(entry.get('license'), 'unknown')}." for name, entry in sorted(data.items())
    ) or "- not recorded (see the run's config: datasets.<name>.license and description)"
    settings = "\n".join(f"    {section}: {json.dumps(value, sort_keys=True)}"
                          for section, value in (card.get("settings") or {}).items()) or "    not recorded"
    variant = card.get("variant")
    which = f" (variant `{variant}`)" if variant else ""
    return f"""{_front_matter(card)}# cellduality model

A causal language model fine-tuned by the cellduality workflow to answer questions about single cells given
as cell sentences (a cell's top {card['top_k']} expressed genes, highest first).

- Base model: {trained.get('model', 'unknown')}
- Training datasets: {', '.join(trained.get('datasets', [])) or 'unknown'} (annotation on
  {', '.join(trained.get('annotation', [])) or 'none'}); species: {card.get('species')}
- Preprocessing: {json.dumps(card.get('preprocess'), sort_keys=True)}

## Data and licences

The weights were learned from these datasets, whose terms apply (hence `license: other`):

{datasets}

## Training settings

{settings}

## Metrics

Not measured when this card was written (right after training). The run's evaluation of this model{which} on
held-out cells is in its report: `results/report/results.tsv` and `results/report/tables.md`.

## Use

    cellduality annotate --model <this folder> --h5ad cells.h5ad --out cells.annotated.h5ad

The model chooses among the {len(card['labels'])} labels it was trained on:

{labels}

## Limitations

It knows only these labels and the genes of its training data; cells of other types get the closest known
label (check `cellduality_confidence`). Its accuracy is what the run's report (`results/report/`) measured on
held-out cells of the training datasets, not on new tissues or protocols.
"""


def read_model_card(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD
    if not path.is_file():
        raise CellDualityError(f"{model_dir}: no {CARD} (the label set and settings of the run); annotate a model "
                               "trained by this workflow (results/models/sft/rep0 or results/models/grpo_*/rep0)")
    try:
        card = json.loads(path.read_text())
    except ValueError as err:
        raise CellDualityError(f"{path} is not valid JSON ({err}); retrain or restore the model folder") from None
    if not card.get("labels"):
        raise CellDualityError(f"{path} holds no label set (the run had no annotation task); train with tasks.annotation")
    return card
