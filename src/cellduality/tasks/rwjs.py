"""Rank-Weighted Jaccard Similarity (RWJS) between ranked gene lists.

w(g, x) = 1 / rank(g, x) (1-based position in x) if g is in x, else 0;
RWJS(a, b) = sum_{g in A|B} min(w(g,a), w(g,b)) / sum_{g in A|B} max(w(g,a), w(g,b)).

Conventions: two empty lists score 0. Duplicates are removed before ranking (first occurrence kept): a
repeated gene counts once and its later copies take no position, so ``rwjs(["A","B"], ["A","B","B"])`` and
``rwjs(["A","B"], ["A","A","B"])`` are both 1.0 and repeats neither help nor pad. The rewards and the teacher
filters score through this function, so the rule is the same everywhere. Genes are compared as given (exact
strings); normalise case before calling (``parsing.parse_gene_list`` upper-cases).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def as_gene_list(genes: str | Iterable[str] | None) -> list[str]:
    """A list of genes from a whitespace-separated sentence, an iterable of symbols, or None (-> [])."""
    if genes is None:
        return []
    if isinstance(genes, str):
        return genes.split()
    return [str(g) for g in genes]


def rank_weights(genes: str | Iterable[str]) -> dict[str, float]:
    """Gene -> 1/rank (1-based) in the list with duplicates removed (first occurrence kept)."""
    unique = dict.fromkeys(as_gene_list(genes))
    return {gene: 1.0 / pos for pos, gene in enumerate(unique, start=1)}


def rwjs(reference: str | Iterable[str], candidate: str | Iterable[str]) -> float:
    """RWJS of ``candidate`` against ``reference``, in [0, 1]; 0 when both are empty."""
    wa = rank_weights(reference)
    wb = rank_weights(candidate)
    num = 0.0
    den = 0.0
    for gene, a in wa.items():
        b = wb.get(gene)
        if b is None:
            den += a
        elif a < b:
            num += a
            den += b
        else:
            num += b
            den += a
    for gene, b in wb.items():
        if gene not in wa:
            den += b
    if den == 0.0:
        return 0.0
    return num / den


def mean_rwjs(references: Sequence[str | Iterable[str]], candidates: Sequence[str | Iterable[str]]) -> float:
    """Mean pairwise RWJS; 0 for empty input. Raises ValueError when lengths differ."""
    if len(references) != len(candidates):
        raise ValueError(f"mean_rwjs: {len(references)} references but {len(candidates)} candidates")
    if not references:
        return 0.0
    return sum(rwjs(r, c) for r, c in zip(references, candidates)) / len(references)
