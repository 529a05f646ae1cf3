"""Conditional gene inpainting masks (the dual task of the classification tasks).

A mask hides ``round(hidden_fraction * n)`` positions of an n-gene cell sentence (at least one hidden and one
visible gene when n >= 2; the single gene when n == 1). Masks are seeded by the prompt id (SHA-256, never
Python's salted ``hash()``), so every rollout of one prompt is judged on the same hidden genes; a different
``salt`` gives fresh masks (e.g. for RL).

Strategies: ``random`` (uniform positions), ``top`` (the highest-ranked genes), ``tail`` (the lowest-ranked),
``markers`` (genes in a given marker set first, highest-ranked first, topped up at random).

:class:`InpaintingSettings` is the config section ``inpainting``; :meth:`InpaintingSettings.masker` pairs it
with a salt (:class:`InpaintingMasker`), which makes the masks.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import ClassVar

from cellduality.config import Settings, schema_default, setting
from cellduality.errors import CellDualityError
from cellduality.seeding import stable_permutation
from cellduality.tasks.rwjs import as_gene_list

STRATEGIES = ("random", "tail", "top", "markers")
DEFAULT_HIDDEN_FRACTION = schema_default("inpainting.hidden_fraction")
DEFAULT_STRATEGY = schema_default("inpainting.strategy")
DATA_MARKERS = "data"  # inpainting.markers: learn the marker set from a task table's SFT cells


@dataclass(frozen=True)
class InpaintingMask:
    """Visible genes (original order), hidden genes (original rank order) and their 0-based positions."""

    visible: tuple[str, ...]
    hidden: tuple[str, ...]
    hidden_positions: tuple[int, ...]

    @property
    def n_hidden(self) -> int:
        return len(self.hidden)


def validate_inpainting(hidden_fraction: float, strategy: str, markers: Collection[str] | None = None) -> None:
    """Raise CellDualityError unless 0 < hidden_fraction < 1, the strategy is known and 'markers' has a marker set."""
    if strategy not in STRATEGIES:
        raise CellDualityError(f"inpainting.strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if strategy == "markers" and markers is None:
        raise CellDualityError("inpainting.strategy 'markers' needs a marker gene set (inpainting.markers)")
    numeric = isinstance(hidden_fraction, (int, float)) and not isinstance(hidden_fraction, bool)
    if not numeric or not 0.0 < float(hidden_fraction) < 1.0:
        raise CellDualityError(f"inpainting.hidden_fraction must be a number in (0, 1); got {hidden_fraction!r}")


def n_hidden_for(n_genes: int, hidden_fraction: float) -> int:
    """How many of ``n_genes`` to hide: round-half-up of the fraction, clipped to [1, n-1] (n >= 2)."""
    if n_genes <= 0:
        return 0
    if n_genes == 1:
        return 1
    k = math.floor(n_genes * hidden_fraction + 0.5)
    return min(max(k, 1), n_genes - 1)


def make_mask(
    genes: str | Iterable[str],
    prompt_id: str,
    hidden_fraction: float = DEFAULT_HIDDEN_FRACTION,
    strategy: str = DEFAULT_STRATEGY,
    salt: str | int = "",
    markers: Collection[str] | None = None,
) -> InpaintingMask:
    """Deterministic mask of a gene list for ``prompt_id`` (and ``salt``)."""
    validate_inpainting(hidden_fraction, strategy, markers)
    gene_list = as_gene_list(genes)
    n = len(gene_list)
    k = n_hidden_for(n, hidden_fraction)
    if strategy == "top":
        chosen = list(range(k))
    elif strategy == "tail":
        chosen = list(range(n - k, n))
    else:
        order = stable_permutation(n, "inpainting", salt, prompt_id)
        if strategy == "markers":
            marker_set = {m.upper() for m in markers or ()}
            is_marker = [g.upper() in marker_set for g in gene_list]
            order = [i for i in range(n) if is_marker[i]] + [i for i in order if not is_marker[i]]
        chosen = order[:k]
    hidden_pos = tuple(sorted(chosen))
    hidden_set = set(hidden_pos)
    return InpaintingMask(
        visible=tuple(g for i, g in enumerate(gene_list) if i not in hidden_set),
        hidden=tuple(gene_list[i] for i in hidden_pos),
        hidden_positions=hidden_pos,
    )


@dataclass(frozen=True)
class InpaintingSettings(Settings):
    """Config ``inpainting.*``. ``markers: data`` stands for a marker set learned from a task table's SFT cells
    (:func:`cellduality.tasks.tables.data_markers`); the table builder resolves it with :meth:`replace` before
    any mask is made."""

    SECTION: ClassVar[str] = "inpainting"

    hidden_fraction: float = setting("inpainting.hidden_fraction")
    strategy: str = setting("inpainting.strategy")
    markers: tuple[str, ...] | str | None = setting("inpainting.markers")

    def __post_init__(self) -> None:
        if isinstance(self.markers, str) and self.markers != DATA_MARKERS:
            raise CellDualityError(f"inpainting.markers must be a list of genes, null or {DATA_MARKERS}; "
                                   f"got {self.markers!r}")
        validate_inpainting(self.hidden_fraction, self.strategy, self.markers)

    def masker(self, salt: str | int = "") -> InpaintingMasker:
        """What makes masks of these settings, seeded by ``salt`` and the prompt id."""
        return InpaintingMasker(self, salt)


@dataclass(frozen=True)
class InpaintingMasker:
    """:class:`InpaintingSettings` with a ``salt``: a different salt gives fresh masks (task tables salt by
    seed and stage, so RL masks differ from SFT ones)."""

    settings: InpaintingSettings
    salt: str | int = ""

    def __post_init__(self) -> None:
        if self.settings.markers == DATA_MARKERS:
            raise CellDualityError("inpainting.markers: data is learned from a task table's SFT cells; resolve it "
                                   "(cellduality.tasks.tables.data_markers) before making masks")

    def mask(self, genes: str | Iterable[str], prompt_id: str) -> InpaintingMask:
        s = self.settings
        return make_mask(genes, prompt_id, s.hidden_fraction, s.strategy, self.salt, s.markers)
