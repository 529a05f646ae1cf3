"""What the offline markers teacher knows: marker genes, typical genes, gene programs and drug programs.

Sources (all shipped under ``resources/``, see their READMEs for licences):
- ``markers/<species>_immune_cell_markers.json`` — pegasus weighted +/- marker groups per cell type;
- ``teacher/typical_genes.yaml`` — typical abundant genes per marker-table type, descriptions, and
  transcripts abundant in every immune cell (``common_high``);
- ``teacher/label_map.yaml`` — dataset labels (e.g. ``CD8+ Cytotoxic T``) -> marker-table types;
- ``gene_sets/h.all.v7.5.1.symbols.gmt`` — MSigDB Hallmark programs;
- ``teacher/drug_knowledge.yaml`` — mechanism and target programmes of common anti-cancer drugs;
- ``drug_programs.yaml`` (optional) — drug -> {description, up: [HALLMARK_...], down: [...]}, merged over it.

:meth:`Knowledge.with_data` adds what the labelled training cells themselves show
(:mod:`cellduality.data.label_profiles`): one data type per label (its discriminating genes as one marker
group, its consensus genes as typical genes), used for labels the shipped tables do not map (``data`` mode:
for every label), the data's abundant genes ahead of the shipped ``common_high``, and the measured gene
vocabulary, outside which the teacher never proposes a gene.

Evidence is rank-aware: a gene at rank r of a K-gene cell sentence counts ``1 - 0.5 (r-1)/(K-1)`` (1 at the
top, 0.5 at the bottom). A marker group of weight w with P positive genes adds ``w * that / sqrt(P)`` per
gene found (negative markers subtract the same way); a typical gene adds ``TYPICAL_WEIGHT * that /
sqrt(#typical)``. A label's score is the mean over its label-map components of the best alternative.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from cellduality.data.label_profiles import DataProfiles, rank_factor
from cellduality.errors import CellDualityError
from cellduality.io import RESOURCES
from cellduality.tasks.parsing import normalize_label

TYPICAL_WEIGHT = 0.5
HALLMARK_GMT = "gene_sets/h.all.v7.5.1.symbols.gmt"
DATA_TYPE_PREFIX = "data: "  # marker-table type names of labels learned from the training cells
KNOWLEDGE_MODES = ("shipped", "data", "both")
DRUG_PROGRAMS = "drug_programs.yaml"


def gene_ranks(genes: Sequence[str]) -> dict[str, int]:
    """Upper-cased gene -> 1-based first rank."""
    ranks: dict[str, int] = {}
    for i, gene in enumerate(genes, start=1):
        ranks.setdefault(gene.upper(), i)
    return ranks


@dataclass(frozen=True)
class MarkerGroup:
    weight: float
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class CellTypeProfile:
    """One marker-table cell type."""

    name: str
    parent: str | None
    groups: tuple[MarkerGroup, ...]
    typical: tuple[str, ...]
    description: str

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g for grp in self.groups for g in grp.positive))

    @property
    def negative_markers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g for grp in self.groups for g in grp.negative))


@dataclass(frozen=True)
class GeneHit:
    gene: str
    rank: int
    weight: float


@dataclass(frozen=True)
class TypeEvidence:
    """Evidence for one marker-table type in one cell."""

    name: str
    score: float
    markers: tuple[GeneHit, ...]
    typical: tuple[GeneHit, ...]
    negative: tuple[GeneHit, ...]
    missing: tuple[str, ...]  # canonical markers not among the genes

    @property
    def hits(self) -> tuple[GeneHit, ...]:
        return tuple(sorted(self.markers + self.typical, key=lambda h: h.rank))


@dataclass(frozen=True)
class LabelEvidence:
    """Evidence for one candidate label: its score and the best type of each label-map component."""

    label: str
    score: float
    types: tuple[TypeEvidence, ...]
    known: bool

    @property
    def hits(self) -> tuple[GeneHit, ...]:
        seen: dict[str, GeneHit] = {}
        for ev in self.types:
            for hit in ev.hits:
                seen.setdefault(hit.gene, hit)
        return tuple(sorted(seen.values(), key=lambda h: h.rank))

    @property
    def negative(self) -> tuple[GeneHit, ...]:
        return tuple(h for ev in self.types for h in ev.negative)


@dataclass(frozen=True)
class ProgramActivity:
    name: str
    score: float
    hits: tuple[GeneHit, ...]


@dataclass(frozen=True)
class DrugProgram:
    """A drug: description, Hallmark programmes it induces / represses, and the ones it targets."""

    name: str
    description: str
    up: tuple[str, ...]
    down: tuple[str, ...]
    targets: tuple[str, ...] = ()

    @property
    def sensitivity_programs(self) -> tuple[str, ...]:
        """Programmes whose activity makes a cell vulnerable: known targets, else repressed, else induced."""
        return self.targets or self.down or self.up


def _gene(symbol: str) -> tuple[str, bool]:
    symbol = symbol.strip()
    if symbol.endswith(("+", "-")):
        return symbol[:-1].upper(), symbol.endswith("+")
    return symbol.upper(), True


def _load_marker_table(path: Path, typical: Mapping[str, Sequence[str]],
                       descriptions: Mapping[str, str]) -> dict[str, CellTypeProfile]:
    with open(path) as fh:
        table = json.load(fh)
    profiles: dict[str, CellTypeProfile] = {}

    def walk(cell_types: Iterable[Mapping[str, Any]], parent: str | None) -> None:
        for ct in cell_types:
            groups = []
            for m in ct.get("markers", []):
                genes = [_gene(g) for g in m.get("genes", [])]
                groups.append(MarkerGroup(float(m.get("weight", 1.0)), tuple(g for g, pos in genes if pos),
                                          tuple(g for g, pos in genes if not pos)))
            name = ct["name"]
            profiles[name] = CellTypeProfile(
                name, parent, tuple(groups), tuple(g.upper() for g in typical.get(name, ())),
                descriptions.get(name, name),
            )
            sub = ct.get("subtypes")
            if isinstance(sub, Mapping):
                walk(sub.get("cell_types", []), name)

    walk(table.get("cell_types", []), None)
    return profiles


def read_gmt(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Gene-set name -> upper-cased genes from a GMT file (name, description, genes... tab-separated)."""
    sets: dict[str, tuple[str, ...]] = {}
    with open(path) as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3:
                sets[fields[0]] = tuple(dict.fromkeys(g.upper() for g in fields[2:] if g))
    return sets


def read_drug_programs(path: str | Path, programs: Mapping[str, Sequence[str]],
                       drugs: Mapping[str, DrugProgram] | None = None) -> dict[str, DrugProgram]:
    """Normalised drug name -> :class:`DrugProgram` from ``{drug: entry}`` or ``{drugs: {drug: entry}}``
    (entry: description, up, down, targets; unknown programme names are ignored), merged over ``drugs``."""
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if isinstance(data.get("drugs"), Mapping):
        data = data["drugs"]
    merged = dict(drugs or {})
    for name, entry in data.items():
        if not isinstance(entry, Mapping):
            continue
        key = normalize_label(str(name))
        old = merged.get(key) or DrugProgram(str(name), "", (), (), ())
        given = {f: tuple(p for p in entry.get(f) or () if p in programs) for f in ("up", "down", "targets")}
        description = " ".join(str(entry.get("description") or "").split())
        merged[key] = DrugProgram(old.name, description or old.description, given["up"] or old.up,
                                  given["down"] or old.down, given["targets"] or old.targets)
    return merged


class Knowledge:
    """Marker table + typical genes + label map + Hallmark programs + drug programs."""

    def __init__(self, types: Mapping[str, CellTypeProfile], label_map: Mapping[str, Sequence[Any]],
                 common_high: Sequence[str], programs: Mapping[str, Sequence[str]],
                 drugs: Mapping[str, DrugProgram], digest: str = "") -> None:
        self.digest = digest  # of the resource files (so caches notice edited knowledge)
        self.types = dict(types)
        self._by_norm = {normalize_label(n): n for n in self.types}
        self.label_map = {normalize_label(k): self._components(k, v) for k, v in label_map.items()}
        self.common_high = tuple(dict.fromkeys(g.upper() for g in common_high))
        self.programs = {k: tuple(v) for k, v in programs.items()}
        self.drugs = dict(drugs)
        self.vocabulary: frozenset[str] | None = None  # measured genes (None: any gene)
        self._rankings: dict[tuple[str, ...], list[ProgramActivity]] = {}

    def with_data(self, data: DataProfiles, mode: str = "both") -> Knowledge:
        """A copy that also knows the training cells' labels (see the module docstring). ``mode``: ``both``
        (a label the shipped tables map may also be explained by its data type: the better-scoring one
        counts), ``data`` (data types only for every label in the data) or ``shipped`` (labels and common
        genes unchanged; only the vocabulary is applied)."""
        if mode not in KNOWLEDGE_MODES:
            raise CellDualityError(f"teacher.knowledge must be one of {', '.join(KNOWLEDGE_MODES)}; got {mode!r}")
        kb = copy.copy(self)
        kb.types, kb.label_map, kb._rankings = dict(self.types), dict(self.label_map), {}
        kb.vocabulary = frozenset(data.vocabulary)
        digest = hashlib.sha256(f"{self.digest}|{mode}|{data.digest_text()}".encode()).hexdigest()[:12]
        kb.digest = digest
        if mode != "shipped":
            for profile in data.labels.values():
                name = DATA_TYPE_PREFIX + profile.label
                markers = ", ".join(profile.markers[:4]) or "no distinctive genes"
                kb.types[name] = CellTypeProfile(
                    name, None, (MarkerGroup(1.0, profile.markers, ()),), profile.typical[:16],
                    f"a cell type of the training data ({profile.n_cells} cells; distinguished by {markers})")
                key = normalize_label(profile.label)
                shipped = self.resolve(profile.label) if mode == "both" else None
                kb.label_map[key] = (tuple(c + (name,) for c in shipped) if shipped else ((name,),))
            kb.common_high = tuple(dict.fromkeys((*data.common, *self.common_high)))
        kb._by_norm = {normalize_label(n): n for n in kb.types}
        kb.common_high = tuple(g for g in kb.common_high if g in kb.vocabulary)
        return kb

    def measured(self, weights: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
        """``(gene, weight)`` pairs of measured genes only (all of them when no vocabulary is known)."""
        if self.vocabulary is None:
            return list(weights)
        return [(g, w) for g, w in weights if g.upper() in self.vocabulary]

    def _components(self, label: str, value: Sequence[Any]) -> tuple[tuple[str, ...], ...]:
        comps = []
        for comp in value:
            names = [comp] if isinstance(comp, str) else list(comp)
            unknown = [n for n in names if n not in self.types]
            if unknown:
                raise CellDualityError(f"teacher label map: {label!r} refers to unknown marker-table type(s) {unknown}")
            comps.append(tuple(names))
        return tuple(comps)

    @classmethod
    def load(cls, resources: str | Path = RESOURCES, species: str = "human") -> Knowledge:
        return _load_cached(str(resources), species)

    # ------------------------------------------------------------ cell types

    def resolve(self, label: str) -> tuple[tuple[str, ...], ...] | None:
        """Label-map components of ``label`` (or the same-named marker-table type); None when unknown."""
        key = normalize_label(label)
        if key in self.label_map:
            return self.label_map[key]
        if key in self._by_norm:
            return ((self._by_norm[key],),)
        return None

    def type_evidence(self, name: str, genes: Sequence[str]) -> TypeEvidence:
        profile = self.types[name]
        ranks = gene_ranks(genes)
        n = len(genes)
        markers: dict[str, GeneHit] = {}
        negative: dict[str, GeneHit] = {}
        score = 0.0
        for grp in profile.groups:
            for pool, store, sign in ((grp.positive, markers, 1.0), (grp.negative, negative, -1.0)):
                for gene in pool:
                    if gene in ranks:
                        w = grp.weight * rank_factor(ranks[gene], n) / math.sqrt(len(pool))
                        score += sign * w
                        hit = store.get(gene)
                        store[gene] = GeneHit(gene, ranks[gene], w + (hit.weight if hit else 0.0))
        typical_pool = [g for g in profile.typical if g not in markers]
        typical = []
        for gene in typical_pool:
            if gene in ranks:
                w = TYPICAL_WEIGHT * rank_factor(ranks[gene], n) / math.sqrt(len(profile.typical))
                score += w
                typical.append(GeneHit(gene, ranks[gene], w))
        missing = tuple(g for g in profile.markers if g not in ranks)
        return TypeEvidence(name, score, tuple(sorted(markers.values(), key=lambda h: h.rank)),
                            tuple(typical), tuple(sorted(negative.values(), key=lambda h: h.rank)), missing)

    def label_evidence(self, label: str, genes: Sequence[str]) -> LabelEvidence:
        comps = self.resolve(label)
        if not comps:
            return LabelEvidence(label, 0.0, (), False)
        best = [max((self.type_evidence(n, genes) for n in comp), key=lambda e: e.score) for comp in comps]
        return LabelEvidence(label, sum(e.score for e in best) / len(best), tuple(best), True)

    def description(self, label: str) -> str:
        comps = self.resolve(label)
        if not comps:
            return ""
        return "; ".join(self.types[comp[0]].description if len(comp) == 1
                         else " or ".join(self.types[n].description for n in comp) for comp in comps)

    def expected_genes(self, label: str) -> list[tuple[str, float]]:
        """Measured genes a cell of ``label`` typically expresses with a prior weight (typical > markers), best
        first."""
        weights: dict[str, float] = {}
        for comp in self.resolve(label) or ():
            for name in comp:
                profile = self.types[name]
                share = 1.0 / len(comp)
                for genes, scale in ((profile.typical, 1.0), (profile.markers, 0.5)):
                    for i, gene in enumerate(genes):
                        w = share * scale * (1.0 - 0.5 * i / max(len(genes), 1))
                        weights[gene] = max(weights.get(gene, 0.0), w)
        return sorted(self.measured(weights.items()), key=lambda kv: -kv[1])

    def common_genes(self) -> list[tuple[str, float]]:
        """``common_high`` genes with a prior weight decreasing from 1.0 to 0.4."""
        n = len(self.common_high)
        return [(g, 1.0 - 0.6 * i / max(n - 1, 1)) for i, g in enumerate(self.common_high)]

    # ------------------------------------------------------------ programs and drugs

    def program_activity(self, program: str, genes: Sequence[str]) -> ProgramActivity:
        ranks = gene_ranks(genes)
        members = self.programs.get(program, ())
        hits = tuple(sorted((GeneHit(g, ranks[g], rank_factor(ranks[g], len(genes))) for g in members if g in ranks),
                            key=lambda h: h.rank))
        score = sum(h.weight for h in hits) / math.sqrt(max(len(members), 1))
        return ProgramActivity(program, score, hits)

    def program_ranking(self, genes: Sequence[str]) -> list[ProgramActivity]:
        """Every Hallmark programme's activity in ``genes``, most active first (memoised per gene list)."""
        key = tuple(genes)
        cached = self._rankings.get(key)
        if cached is None:
            if len(self._rankings) > 4096:
                self._rankings.clear()
            cached = sorted((self.program_activity(p, genes) for p in self.programs), key=lambda a: (-a.score, a.name))
            self._rankings[key] = cached
        return list(cached)

    def drug(self, name: str) -> DrugProgram | None:
        return self.drugs.get(normalize_label(name))


def resource_files(resources: str | Path = RESOURCES, species: str = "human") -> list[Path]:
    """The files the knowledge is read from (those that exist), in a fixed order."""
    root = Path(resources)
    files = [root / "markers" / f"{species}_immune_cell_markers.json", root / "teacher" / "typical_genes.yaml",
             root / "teacher" / "label_map.yaml", root / "teacher" / "drug_knowledge.yaml", root / HALLMARK_GMT,
             root / DRUG_PROGRAMS]
    return [f for f in files if f.is_file()]


@lru_cache(maxsize=8)
def _load_cached(resources: str, species: str) -> Knowledge:
    root = Path(resources)
    markers = root / "markers" / f"{species}_immune_cell_markers.json"
    if not markers.is_file():
        raise CellDualityError(f"markers teacher: no marker table for species {species!r} ({markers} missing)")
    with open(root / "teacher" / "typical_genes.yaml") as fh:
        extra = yaml.safe_load(fh) or {}
    with open(root / "teacher" / "label_map.yaml") as fh:
        label_map = yaml.safe_load(fh) or {}
    types = _load_marker_table(markers, extra.get("typical") or {}, extra.get("descriptions") or {})
    programs = read_gmt(root / HALLMARK_GMT)
    drugs = read_drug_programs(root / "teacher" / "drug_knowledge.yaml", programs)
    drug_path = root / DRUG_PROGRAMS
    if drug_path.is_file():
        drugs = read_drug_programs(drug_path, programs, drugs)
    digest = hashlib.sha256()
    for path in resource_files(root, species):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return Knowledge(types, label_map, extra.get("common_high") or (), programs, drugs, digest.hexdigest()[:12])
