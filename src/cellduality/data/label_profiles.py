"""Per-label gene profiles learned from labelled cell sentences (the training cells' own marker knowledge).

Every gene of a K-gene sentence gets a rank weight, 1 at the top and 0.5 at rank K (0 when absent;
:func:`rank_factor`, which the markers teacher also scores its evidence with). Per label:

- ``typical``: the genes with the highest mean rank weight over the label's cells (what such a cell
  usually lists first: a consensus cell sentence);
- ``markers``: the genes whose mean weight in the label's cells exceeds their mean weight in all other cells
  the most (one label against the rest, like scanpy's ``rank_genes_groups`` on ranks), positive only.

``common`` ranks genes by mean weight over every cell and ``vocabulary`` is the set of genes the sentences
contain (a gene never measured cannot be among a cell's top genes). Used by the markers teacher
(:mod:`cellduality.teacher.markers.knowledge`) for labels its shipped tables do not cover and to keep its
gene lists inside the measured genes, and by the task tables for ``inpainting.markers: data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cellduality.errors import CellDualityError


@dataclass(frozen=True)
class LabelProfile:
    """One label's consensus genes (``typical``) and discriminating genes (``markers``), best first."""

    label: str
    n_cells: int
    typical: tuple[str, ...]
    markers: tuple[str, ...]


@dataclass(frozen=True)
class DataProfiles:
    """Profiles of every label, genes abundant in all cells, and the measured gene vocabulary."""

    labels: dict[str, LabelProfile]
    common: tuple[str, ...]
    vocabulary: frozenset[str]

    def marker_union(self) -> frozenset[str]:
        """Every label's markers (one gene set for all cells, so a mask built from it reveals no label)."""
        return frozenset(g for p in self.labels.values() for g in p.markers)

    def digest_text(self) -> str:
        """A stable text form (for cache keys: other training cells give other knowledge)."""
        parts = [f"{p.label}:{p.n_cells}:{','.join(p.typical)}:{','.join(p.markers)}"
                 for p in sorted(self.labels.values(), key=lambda p: p.label)]
        return "|".join(parts) + "|common:" + ",".join(self.common) + "|vocab:" + ",".join(sorted(self.vocabulary))


def rank_factor(rank: int, n_genes: int) -> float:
    """Weight of a gene at 1-based ``rank`` of an ``n_genes`` sentence: 1 at the top, 0.5 at the bottom (the
    markers teacher scores its evidence with the same factor)."""
    return 1.0 - 0.5 * (rank - 1) / max(n_genes - 1, 1)


def label_profiles(sentences: Iterable[Sequence[str] | str], labels: Iterable[object], *, n_typical: int = 40,
                   n_markers: int = 12) -> DataProfiles:
    """Profiles from cell sentences (gene lists or space-separated text) and their labels; cells with an
    empty label are used for ``common`` and ``vocabulary`` only."""
    cells = [s.split() if isinstance(s, str) else list(s) for s in sentences]
    names = ["" if lab is None or (isinstance(lab, float) and lab != lab) else str(lab).strip() for lab in labels]
    if len(cells) != len(names):
        raise CellDualityError(f"label profiles: {len(cells)} sentences but {len(names)} labels")
    genes = sorted({g.upper() for cell in cells for g in cell})
    index = {g: i for i, g in enumerate(genes)}
    weights = np.zeros((len(cells), len(genes)), dtype=np.float32)
    for row, cell in enumerate(cells):
        seen: dict[str, float] = {}
        for rank, gene in enumerate((g.upper() for g in cell), start=1):
            seen.setdefault(gene, rank_factor(rank, len(cell)))  # first occurrence
        for gene, w in seen.items():
            weights[row, index[gene]] = w
    order_common = np.argsort(-weights.mean(axis=0), kind="stable") if len(cells) else np.array([], dtype=int)
    common = tuple(genes[i] for i in order_common[:n_typical])
    label_array = np.array(names, dtype=object)
    profiles: dict[str, LabelProfile] = {}
    for label in sorted({n for n in names if n}):
        inside = label_array == label
        mean_in = weights[inside].mean(axis=0)
        mean_out = weights[~inside].mean(axis=0) if (~inside).any() else np.zeros(len(genes), dtype=np.float32)
        typical = [genes[i] for i in np.argsort(-mean_in, kind="stable")[:n_typical] if mean_in[i] > 0]
        diff = mean_in - mean_out
        markers = [genes[i] for i in np.argsort(-diff, kind="stable")[:n_markers] if diff[i] > 0]
        profiles[label] = LabelProfile(label, int(inside.sum()), tuple(typical), tuple(markers))
    return DataProfiles(profiles, common, frozenset(genes))
