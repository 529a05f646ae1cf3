"""Reward functions on plain strings and lists, ready to be wrapped as TRL GRPO reward callables.

Self-supervised (duality) rewards:
- annotation / sensitivity / CellPuzzles: RWJS between the hidden genes and the dual's reconstruction;
- conditional generation / perturbation: 1[dual's reconstructed label == the primal's input label].
Ground-truth ("oracle") rewards: classification 1[answer == label]; generation RWJS against a real cell;
CellPuzzles ``paper`` (1 only for a fully correct batch) or ``released`` ((cell accuracy + exact match) / 2).
A malformed PRIMAL response gets ``format_penalty`` (default -1, as Cell-o1) whatever the dual says; a
malformed dual response reconstructs nothing (RWJS 0, label mismatch 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cellduality.config import Settings, schema_default, setting
from cellduality.errors import CellDualityError
from cellduality.tasks.parsing import (
    ParsedResponse,
    labels_equal,
    match_label,
    parse_cellpuzzles_answer,
    parse_gene_list,
    parse_response,
)
from cellduality.tasks.rwjs import as_gene_list, rwjs

DEFAULT_FORMAT_PENALTY = schema_default("rewards.format_penalty")
CELLPUZZLES_VARIANTS = ("paper", "released")
_RELEASED_FORMAT = re.compile(r"^<think>.*?</think>\n<answer>.*?</answer>$", re.DOTALL)  # tags checked once first
REWARD_MODES = ("duality", "oracle", "shuffled")
LABEL_DUALS = ("answer", "probability")  # how a dual that names a label is scored (rewards.label_duals)


@dataclass(frozen=True)
class RewardSettings(Settings):
    """Config ``rewards.*``."""

    SECTION: ClassVar[str] = "rewards"

    mode: str = setting("rewards.mode")
    format_penalty: float = setting("rewards.format_penalty")
    cellpuzzles: str = setting("rewards.cellpuzzles")
    strict_format: bool = setting("rewards.strict_format")
    label_duals: str = setting("rewards.label_duals")

    def __post_init__(self) -> None:
        if self.label_duals not in LABEL_DUALS:
            raise CellDualityError(
                f"rewards.label_duals must be one of {', '.join(LABEL_DUALS)}; got {self.label_duals!r}")
        if self.mode not in REWARD_MODES:
            raise CellDualityError(f"rewards.mode must be one of {', '.join(REWARD_MODES)}; got {self.mode!r}")
        if self.cellpuzzles not in CELLPUZZLES_VARIANTS:
            raise CellDualityError(
                f"rewards.cellpuzzles must be one of {', '.join(CELLPUZZLES_VARIANTS)}; got {self.cellpuzzles!r}"
            )


def _parsed(response: str | ParsedResponse, strict: bool) -> ParsedResponse:
    return response if isinstance(response, ParsedResponse) else parse_response(response, strict=strict)


def _upper(genes: str | Iterable[str]) -> list[str]:
    return [g.upper() for g in as_gene_list(genes)]


# ---------------------------------------------------------------- answers

def response_label(
    response: str | ParsedResponse,
    allowed: Iterable[str] | None = None,
    synonyms: Mapping[str, str] | None = None,
    strict: bool = False,
) -> str | None:
    """A response's categorical answer mapped onto ``allowed`` (None when malformed or not allowed)."""
    parsed = _parsed(response, strict)
    return match_label(parsed.answer, allowed, synonyms) if parsed.format_ok else None


def response_genes(response: str | ParsedResponse, strict: bool = False) -> list[str] | None:
    """A response's gene-list answer (None when malformed)."""
    parsed = _parsed(response, strict)
    return parse_gene_list(parsed.answer) if parsed.format_ok else None


# ---------------------------------------------------------------- self-supervised (duality)

def inpainting_reward(
    dual_response: str | ParsedResponse, hidden_genes: str | Iterable[str], strict: bool = False
) -> float:
    """RWJS(c_hid, parsed ĉ_hid); 0 when the dual response is malformed."""
    genes = response_genes(dual_response, strict)
    return rwjs(_upper(hidden_genes), genes) if genes is not None else 0.0


def reconstruction_reward(
    dual_response: str | ParsedResponse,
    true_label: str,
    allowed: Iterable[str] | None = None,
    synonyms: Mapping[str, str] | None = None,
    strict: bool = False,
) -> float:
    """1[t̂ = t] after normalisation (and mapping onto ``allowed``); 0 when malformed."""
    label = response_label(dual_response, allowed, synonyms, strict)
    return 1.0 if labels_equal(label, true_label, synonyms) else 0.0


def with_format_penalty(
    primal_response: str | ParsedResponse,
    reward: float,
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """``format_penalty`` when the primal response is malformed, else ``reward``."""
    return reward if _parsed(primal_response, strict).format_ok else float(format_penalty)


def inpainting_duality_reward(
    primal_response: str | ParsedResponse,
    dual_response: str | ParsedResponse | None,
    hidden_genes: str | Iterable[str],
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """Annotation / sensitivity duality reward for one rollout (dual None: no dual was run)."""
    reward = 0.0 if dual_response is None else inpainting_reward(dual_response, hidden_genes, strict)
    return with_format_penalty(primal_response, reward, format_penalty, strict)


def categorical_duality_reward(
    primal_response: str | ParsedResponse,
    dual_response: str | ParsedResponse | Mapping[str, float] | None,
    true_label: str,
    allowed: Iterable[str] | None = None,
    synonyms: Mapping[str, str] | None = None,
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """Generation / perturbation duality reward: 1[dual recovers the primal's input label]; with the dual's
    probability of each candidate label (a mapping, ``rewards.label_duals: probability``) its probability of the
    input label, the expected value of that indicator."""
    reward = 0.0
    if isinstance(dual_response, Mapping):
        reward = float(sum(p for label, p in dual_response.items() if labels_equal(label, true_label, synonyms)))
    elif dual_response is not None:
        reward = reconstruction_reward(dual_response, true_label, allowed, synonyms, strict)
    return with_format_penalty(primal_response, reward, format_penalty, strict)


def cellpuzzles_duality_reward(
    primal_response: str | ParsedResponse,
    dual_responses: Sequence[str | ParsedResponse] | None,
    hidden_genes_per_cell: Sequence[str | Iterable[str]],
    candidates: Sequence[str],
    synonyms: Mapping[str, str] | None = None,
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """Mean per-cell RWJS of the duals; ``format_penalty`` for an invalid assignment (tags, length, repeats)."""
    if puzzle_assignment(primal_response, candidates, len(hidden_genes_per_cell), synonyms, strict) is None:
        return float(format_penalty)
    if not dual_responses:
        return 0.0
    if len(dual_responses) != len(hidden_genes_per_cell):
        raise ValueError(f"{len(dual_responses)} dual responses for {len(hidden_genes_per_cell)} cells")
    scores = [inpainting_reward(d, h, strict) for d, h in zip(dual_responses, hidden_genes_per_cell)]
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- ground truth (oracle)

def classification_reward(
    response: str | ParsedResponse,
    label: str,
    allowed: Iterable[str] | None = None,
    synonyms: Mapping[str, str] | None = None,
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """1[answer == label] (normalised); ``format_penalty`` when malformed."""
    reward = reconstruction_reward(response, label, allowed, synonyms, strict)
    return with_format_penalty(response, reward, format_penalty, strict)


def generation_reward(
    response: str | ParsedResponse,
    reference_genes: str | Iterable[str],
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """RWJS(real cell of the same condition, generated cell); ``format_penalty`` when malformed."""
    genes = response_genes(response, strict)
    return float(format_penalty) if genes is None else rwjs(_upper(reference_genes), genes)


def puzzle_assignment(
    response: str | ParsedResponse,
    candidates: Sequence[str],
    n_cells: int | None = None,
    synonyms: Mapping[str, str] | None = None,
    strict: bool = False,
) -> tuple[str, ...] | None:
    """The assigned candidate per cell, or None for bad format / wrong length / duplicates / non-candidates."""
    parsed = _parsed(response, strict)
    if not parsed.format_ok:
        return None
    return parse_cellpuzzles_answer(parsed.answer, candidates, n_cells, synonyms).labels


def cellpuzzles_reward(
    response: str | ParsedResponse,
    gold: Sequence[str] | str,
    candidates: Sequence[str] | None = None,
    variant: str = "paper",
    synonyms: Mapping[str, str] | None = None,
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
    strict: bool = False,
) -> float:
    """Oracle CellPuzzles reward: ``paper`` 1/0 for the whole batch; ``released`` (partial + exact) / 2.

    ``gold`` is the per-cell labels (or the ' | '-joined string); ``candidates`` defaults to the gold set.
    ``paper`` judges the answer with this project's parser (tolerant unless ``strict``; candidates and
    synonyms matched after normalisation). ``released`` is :func:`released_cellpuzzles_score` on the raw
    response text: Cell-o1's released validity rules, whatever ``candidates``, ``synonyms`` and ``strict``.
    """
    if variant not in CELLPUZZLES_VARIANTS:
        raise ValueError(
            f"CellPuzzles reward variant must be one of {', '.join(CELLPUZZLES_VARIANTS)}; got {variant!r}"
        )
    if variant == "released":
        if not isinstance(response, str):
            raise TypeError("the released CellPuzzles score needs the raw response text, not a parsed response")
        return released_cellpuzzles_score(response, gold, format_penalty)
    gold_labels = [s.strip() for s in gold.split("|") if s.strip()] if isinstance(gold, str) else list(gold)
    assigned = puzzle_assignment(response, candidates or gold_labels, len(gold_labels), synonyms, strict)
    if assigned is None:
        return float(format_penalty)
    correct = sum(labels_equal(a, g, synonyms) for a, g in zip(assigned, gold_labels))
    exact = 1.0 if correct == len(gold_labels) else 0.0
    if variant == "paper":
        return exact
    return (correct / len(gold_labels) + exact) / 2.0


def _released_answer(text: str) -> str:
    """The candidate answer as Cell-o1's scorer reads it: the rest of the first line holding ``<answer>``
    (a trailing ``</answer>`` removed), else the first line holding ``|``, else empty."""
    lines = text.splitlines()
    for line in lines:
        if "<answer>" in line:
            answer = line.split("<answer>", 1)[1].strip()
            if answer.endswith("</answer>"):
                answer = answer.replace("</answer>", "").strip()
            if answer:
                return answer
            break
    return next((line.strip() for line in lines if "|" in line), "")


def released_cellpuzzles_score(response: str, gold: Sequence[str] | str,
                               format_penalty: float = DEFAULT_FORMAT_PENALTY) -> float:
    """Cell-o1's released CellPuzzles reward (``verl/workers/reward_function/compute_score.py`` of
    ncbi-nlp/cell-o1), rule for rule, with ``format_penalty`` where it gives -1:

    - format: each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` exactly once, the whole text
      ``<think>…</think>\n<answer>…</answer>`` (a newline between the blocks, nothing before or after), and
      the answer read from one line (:func:`_released_answer`) contains ``|``;
    - the answer's ``|``-separated items (stripped, empty ones dropped) are as many as the gold labels and
      all distinct; otherwise ``format_penalty``;
    - a position is right when its item equals the gold label ignoring case only (no other normalisation; an
      item outside the candidates is simply wrong): score = (right / N + [all right]) / 2.
    """
    text = str(response)
    answer = _released_answer(text)
    tags_once = all(text.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>"))
    if not tags_once or _RELEASED_FORMAT.match(text) is None or "|" not in answer:
        return float(format_penalty)
    gold_items = [g.strip() for g in (gold.split("|") if isinstance(gold, str) else gold) if g.strip()]
    items = [a.strip() for a in answer.split("|") if a.strip()]
    if not gold_items or len(items) != len(gold_items) or len(set(items)) != len(items):
        return float(format_penalty)
    right = sum(a.lower() == g.lower() for a, g in zip(items, gold_items))
    return (right / len(gold_items) + (1.0 if right == len(gold_items) else 0.0)) / 2.0
