"""Robust parsing of ``<think>…</think><answer>…</answer>`` responses and of their answers.

Nothing here raises on model output: malformed input yields a result with ``format_ok=False`` and an error,
and every function runs in time linear in its input (no regex backtracking), so a sampled rollout or an API
answer of any length cannot stall rewards, filtering or evaluation.
Tolerant mode (default) accepts tag case and whitespace variations and leading text before ``<think>``;
text after ``</answer>``, missing/duplicated/unclosed tags (truncated output) and an empty answer are
format errors. ``strict=True`` applies Cell-o1's released check: exactly one of each tag and the whole
string is ``<think>…</think>\\n<answer>…</answer>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# possessive quantifiers: "<" + a long whitespace run is scanned once, not split every way (linear time)
_TAG = re.compile(r"<\s*+(/?+)\s*+(think|answer)\s*+>", re.IGNORECASE)
_STRICT = re.compile(r"^<think>(.*?)</think>\n<answer>(.*?)</answer>$", re.DOTALL)
_STRICT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True)
class ParsedResponse:
    """Reasoning, answer (stripped), whether the format is valid, and why not."""

    think: str | None
    answer: str | None
    format_ok: bool
    error: str | None = None


def _bad(error: str) -> ParsedResponse:
    return ParsedResponse(think=None, answer=None, format_ok=False, error=error)


def parse_response(text: object, strict: bool = False) -> ParsedResponse:
    """Split a response into think/answer; never raises."""
    if not isinstance(text, str):
        return _bad(f"response is {type(text).__name__}, not text")
    if strict:
        return _parse_strict(text)
    tags = list(_TAG.finditer(text))
    sequence = [("/" if m.group(1) else "") + m.group(2).lower() for m in tags]
    for name in ("think", "answer"):
        opened, closed = sequence.count(name), sequence.count("/" + name)
        if opened == 0:
            return _bad(f"missing <{name}>")
        if opened > 1 or closed > 1:
            return _bad(f"more than one <{name}> block")
        if closed == 0:
            return _bad(f"unclosed <{name}> (truncated output?)")
    if sequence != ["think", "/think", "answer", "/answer"]:
        return _bad("tags out of order: expected <think>…</think><answer>…</answer>")
    between = text[tags[1].end() : tags[2].start()]
    after = text[tags[3].end() :]
    if between.strip():
        return _bad("text between </think> and <answer>")
    if after.strip():
        return _bad("text after </answer>")
    answer = text[tags[2].end() : tags[3].start()].strip()
    if not answer:
        return _bad("empty answer")
    return ParsedResponse(think=text[tags[0].end() : tags[1].start()].strip(), answer=answer, format_ok=True)


def _parse_strict(text: str) -> ParsedResponse:
    if any(text.count(tag) != 1 for tag in _STRICT_TAGS):
        return _bad("strict format: each of <think>, </think>, <answer>, </answer> must occur exactly once")
    match = _STRICT.match(text)
    if match is None:
        return _bad("strict format: response must be exactly <think>…</think>\\n<answer>…</answer>")
    answer = match.group(2).strip()
    if not answer:
        return _bad("empty answer")
    return ParsedResponse(think=match.group(1).strip(), answer=answer, format_ok=True)


# ---------------------------------------------------------------- categorical labels

_LABEL_SPACE = re.compile(r"[\s_\-/]+")
_LABEL_DROP = re.compile(r"[.,;:!?'\"`()\[\]{}*]")


def normalize_label(text: str) -> str:
    """Case-folded label with punctuation and invisible format characters (zero-width space, BOM) dropped
    ('+' kept) and ``_ - /`` and whitespace as one space."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")  # zero-width spaces, BOM, joiners
    text = _LABEL_DROP.sub(" ", text)
    return " ".join(_LABEL_SPACE.sub(" ", text).split())


class LabelMatcher:
    """Maps free-text answers onto an allowed label set (or, without one, onto synonym targets)."""

    def __init__(self, allowed: Iterable[str] | None = None, synonyms: Mapping[str, str] | None = None) -> None:
        self.allowed: tuple[str, ...] | None = None if allowed is None else tuple(dict.fromkeys(allowed))
        self._lookup: dict[str, str] = {}
        for label in self.allowed or ():
            key = normalize_label(label)
            if key in self._lookup and self._lookup[key] != label:
                raise ValueError(
                    f"labels {self._lookup[key]!r} and {label!r} are the same after normalisation; "
                    "rename one of them"
                )
            self._lookup[key] = label
        self._synonyms: dict[str, str] = {}
        for alias, target in (synonyms or {}).items():
            canonical = self._lookup.get(normalize_label(target), target) if self.allowed else target
            if self.allowed is not None and canonical not in self.allowed:
                continue  # synonym for a label that is not a candidate here
            self._synonyms[normalize_label(alias)] = canonical

    def match(self, answer: str | None) -> str | None:
        """Canonical label for ``answer``, or None when it matches nothing allowed."""
        if answer is None:
            return None
        key = normalize_label(answer)
        if not key:
            return None
        if key in self._lookup:
            return self._lookup[key]
        if key in self._synonyms:
            return self._synonyms[key]
        if self.allowed is None:
            return " ".join(str(answer).split())
        return None


def match_label(
    answer: str | None, allowed: Iterable[str] | None = None, synonyms: Mapping[str, str] | None = None
) -> str | None:
    """Canonical label for a free-text answer (see :class:`LabelMatcher`)."""
    return LabelMatcher(allowed, synonyms).match(answer)


def labels_equal(a: str | None, b: str | None, synonyms: Mapping[str, str] | None = None) -> bool:
    """True when two labels agree after normalisation and synonym mapping."""
    if a is None or b is None:
        return False
    matcher = LabelMatcher([b], synonyms)
    return matcher.match(a) == b


# ---------------------------------------------------------------- gene lists

_GENE_SPLIT = re.compile(r"[,;|\s]+")
_GENE_STRIP = "\"'`()[]{}<>*.:!?"
_GENE_OK = re.compile(r"^[A-Z0-9][A-Z0-9.\-_/@]*$")
_NOT_GENES = frozenset({"A", "AN", "AND", "ARE", "GENE", "GENES", "HIDDEN", "IS", "OF", "OR", "THE"})


def parse_gene_list(answer: str | None, vocabulary: Iterable[str] | None = None) -> list[str]:
    """Genes from a comma/space separated answer: upper-cased, de-duplicated (first kept), junk dropped.

    Junk: list numbering ("1.", "2)"), pure numbers, words like AND/THE, tokens with non-gene characters,
    and, when ``vocabulary`` is given, anything not in it (compared upper-case).
    """
    if not answer or not isinstance(answer, str):
        return []
    vocab = None if vocabulary is None else {v.upper() for v in vocabulary}
    genes: dict[str, None] = {}
    for raw in _GENE_SPLIT.split(unicodedata.normalize("NFKC", answer)):
        token = raw.strip(_GENE_STRIP).upper()
        token = re.sub(r"^\d+[.)]", "", token)  # "1.CD3D" / "2)CD3E"
        if not token or token.isdigit() or token in _NOT_GENES or not _GENE_OK.match(token):
            continue
        if vocab is not None and token not in vocab:
            continue
        genes.setdefault(token, None)
    return list(genes)


# ---------------------------------------------------------------- CellPuzzles

@dataclass(frozen=True)
class PuzzleAnswer:
    """Assigned labels (canonical candidates, in cell order) or why the answer is invalid."""

    labels: tuple[str, ...] | None
    format_ok: bool
    error: str | None = None


def parse_cellpuzzles_answer(
    answer: str | None,
    candidates: Sequence[str],
    n_cells: int | None = None,
    synonyms: Mapping[str, str] | None = None,
) -> PuzzleAnswer:
    """Parse ``"type1 | type2 | …"``: exactly N entries, each a candidate, no duplicates (Cell-o1 rules)."""
    n = len(candidates) if n_cells is None else n_cells
    if answer is None:
        return PuzzleAnswer(None, False, "no answer")
    items = [s.strip() for s in str(answer).split("|") if s.strip()]
    if len(items) != n:
        return PuzzleAnswer(None, False, f"expected {n} cell types separated by ' | ', got {len(items)}")
    matcher = LabelMatcher(candidates, synonyms)
    labels = []
    for item in items:
        label = matcher.match(item)
        if label is None:
            return PuzzleAnswer(None, False, f"{item!r} is not one of the candidate cell types")
        labels.append(label)
    if len(set(labels)) != len(labels):
        return PuzzleAnswer(None, False, "a cell type is assigned to more than one cell")
    return PuzzleAnswer(tuple(labels), True)
