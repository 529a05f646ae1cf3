"""Task-table row builders: one function per task family, bound to tasks in :mod:`cellduality.tasks.registry`.

A builder is called once per stage as ``builder(ctx, recs, stage, specs)``: ``recs`` are that stage's cell
records (``cell_id, dataset, split, genes, metadata`` and one key per label column of the registered tasks,
``None`` where missing), ``specs`` the registered tasks bound to this builder that the table is built for
(tasks sharing a builder, e.g. annotation and generation, interleave their rows per cell). It appends rows
with :meth:`RowSink.add`; prompts come from the spec's ``primal_prompt`` / ``dual_prompt``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cellduality.seeding import stable_sample, stable_seed, stable_shuffle
from cellduality.tasks.inpainting import InpaintingMask, InpaintingMasker, InpaintingSettings
from cellduality.tasks.prompts import CELLPUZZLES_ANSWER_SEP, Messages, join_genes
from cellduality.tasks.schema import TaskRow
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings

TaskSpec = Any  # cellduality.tasks.registry.TaskSpec (which imports this module)


class RowSink:
    """Accumulates output rows (encoded records, all columns filled)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(
        self,
        *,
        task: str,
        direction: str,
        stage: str,
        prompt_id: str,
        rec: Mapping[str, Any],
        prompt: Messages,
        answer: str,
        label: str,
        candidates: Sequence[str] = (),
        mask: InpaintingMask | Sequence[InpaintingMask] | None = None,
        reference: str = "",
        input_sentence: str = "",
        cell_ids: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(mask, InpaintingMask):
            hidden, visible = list(mask.hidden), list(mask.visible)
        elif mask:
            hidden, visible = [list(m.hidden) for m in mask], [list(m.visible) for m in mask]
        else:
            hidden, visible = [], []
        row = TaskRow(
            prompt_id=prompt_id, task=task, direction=direction, dataset=rec["dataset"], split=rec["split"],
            stage=stage, prompt=prompt, answer="" if stage == "rl" else answer, label=label,
            candidates=list(candidates), hidden_genes=hidden, visible_genes=visible, reference_sentence=reference,
            input_sentence=input_sentence, cell_ids=list(cell_ids) or [rec["cell_id"]],
            metadata=dict(metadata if metadata is not None else rec["metadata"]),
        )
        self.rows.append(row.to_record())


def label_sets(records: Iterable[Mapping[str, Any]], key: str, exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """Sorted distinct values of ``key`` per dataset (``exclude`` compared case-insensitively)."""
    skip = {e.lower() for e in exclude}
    sets: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        value = rec.get(key)
        if value is not None and value.lower() not in skip:
            sets[rec["dataset"]].add(value)
    return {ds: sorted(values) for ds, values in sets.items()}


def prompt_id(task: str, direction: str, stage: str, dataset: str, key: str) -> str:
    return f"{task}:{direction}:{stage}:{dataset}:{key}"


class BuildContext:
    """What builders share: every cell record (all stages), the settings (config sections ``task_tables``,
    ``inpainting`` with ``markers: data`` resolved, ``cellpuzzles``) and the output rows."""

    def __init__(self, records: list[dict[str, Any]], tables: TaskTableSettings, inpainting: InpaintingSettings,
                 cellpuzzles: CellPuzzlesSettings, candidates: Sequence[str] | None = None) -> None:
        """``candidates``: cell types offered in annotation prompts instead of each dataset's own."""
        self.records = records
        self.tables = tables
        self.inpainting = inpainting
        self.cellpuzzles = cellpuzzles
        self.candidates = sorted(candidates) if candidates else None
        self.out = RowSink()
        self._label_sets: dict[str, dict[str, list[str]]] = {}

    def label_set(self, key: str) -> dict[str, list[str]]:
        """Sorted distinct values of record key ``key`` per dataset, over all stages (candidate lists)."""
        if key not in self._label_sets:
            self._label_sets[key] = label_sets(self.records, key)
        return self._label_sets[key]

    def masker(self, stage: str) -> InpaintingMasker:
        """The masks of ``stage``: salted by seed and stage, so RL masks are fresh."""
        return self.inpainting.masker(f"{self.tables.seed}:{stage}")


# ---------------------------------------------------------------- annotation and generation

def identity_rows(ctx: BuildContext, recs: list[dict[str, Any]], stage: str, specs: Sequence[TaskSpec]) -> None:
    """Annotation (cell -> type; dual: inpainting given the type) and generation (type -> cell; dual:
    annotation of the generated cell), interleaved per cell."""
    out = ctx.out
    by_name = {s.name: s for s in specs}
    annotation, generation = by_name.get("annotation"), by_name.get("generation")
    types = ctx.label_set("cell_type")
    masker = ctx.masker(stage)
    with_dual = stage != "rl"
    for rec in recs:
        label = rec["cell_type"]
        unlabelled = label is None and rec["split"] == "adapt"  # role adapt: RL annotation prompts (no dual there)
        if label is None and not unlabelled:
            continue
        label = label or ""
        genes, meta, ds = rec["genes"], rec["metadata"], rec["dataset"]
        cands = ctx.candidates or types[ds]
        shown = cands if ctx.tables.annotation_candidates else None
        sentence = join_genes(genes)
        if annotation is not None:
            pid = prompt_id("annotation", "primal", stage, ds, rec["cell_id"])
            mask = masker.mask(genes, pid)
            common = dict(task="annotation", stage=stage, rec=rec, label=label, candidates=cands, mask=mask,
                          input_sentence=sentence)
            out.add(direction="primal", prompt_id=pid, prompt=annotation.primal_prompt(genes, meta, shown),
                    answer=label, **common)
            if with_dual:
                out.add(direction="dual", prompt_id=prompt_id("annotation", "dual", stage, ds, rec["cell_id"]),
                        prompt=annotation.dual_prompt(mask.visible, label, mask.n_hidden, meta),
                        answer=join_genes(mask.hidden), **common)
        if generation is not None and not unlabelled:
            common = dict(task="generation", stage=stage, rec=rec, label=label, candidates=cands,
                          reference=sentence)
            out.add(direction="primal", prompt_id=prompt_id("generation", "primal", stage, ds, rec["cell_id"]),
                    prompt=generation.primal_prompt(label, len(genes), meta), answer=sentence, **common)
            if with_dual:
                out.add(direction="dual", prompt_id=prompt_id("generation", "dual", stage, ds, rec["cell_id"]),
                        prompt=generation.dual_prompt(genes, meta, cands), answer=label, input_sentence=sentence,
                        **common)


# ---------------------------------------------------------------- drug sensitivity

def sensitivity_rows(ctx: BuildContext, recs: list[dict[str, Any]], stage: str, specs: Sequence[TaskSpec]) -> None:
    """(cell, drug) -> sensitivity; dual: inpainting given drug and sensitivity."""
    (spec,) = specs
    labels = ctx.label_set("sensitivity")
    masker = ctx.masker(stage)
    for rec in recs:
        drug, sens = rec["drug"], rec["sensitivity"]
        if drug is None or sens is None:
            continue
        genes, meta, ds = rec["genes"], rec["metadata"], rec["dataset"]
        pid = prompt_id(spec.name, "primal", stage, ds, rec["cell_id"])
        mask = masker.mask(genes, pid)
        common = dict(task=spec.name, stage=stage, rec=rec, label=sens, candidates=labels[ds], mask=mask,
                      input_sentence=join_genes(genes))
        ctx.out.add(direction="primal", prompt_id=pid, prompt=spec.primal_prompt(genes, drug, meta, labels[ds]),
                    answer=sens, **common)
        if stage != "rl":
            ctx.out.add(direction="dual", prompt_id=prompt_id(spec.name, "dual", stage, ds, rec["cell_id"]),
                        prompt=spec.dual_prompt(mask.visible, drug, sens, mask.n_hidden, meta),
                        answer=join_genes(mask.hidden), **common)


# ---------------------------------------------------------------- perturbation

def perturbation_rows(ctx: BuildContext, recs: list[dict[str, Any]], stage: str, specs: Sequence[TaskSpec]) -> None:
    """(control cell, drug) -> treated cell; dual: (treated, control) -> drug. A treated cell is paired with
    the first control cell sharing its dataset and ``pair_id``."""
    (spec,) = specs
    all_recs, control_values = ctx.records, ctx.tables.control_values
    controls = {c.lower() for c in control_values}

    def is_control(rec: Mapping[str, Any]) -> bool:
        return (rec["condition"] or "").lower() in controls

    pre_of: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in all_recs:
        if rec["pair_id"] is not None and is_control(rec):
            pre_of.setdefault((rec["dataset"], str(rec["pair_id"])), rec)
    drugs = label_sets([r for r in all_recs if r["condition"] is not None and not is_control(r)], "drug",
                       control_values)
    for rec in recs:
        if rec["drug"] is None or rec["pair_id"] is None or rec["condition"] is None or is_control(rec):
            continue
        pre = pre_of.get((rec["dataset"], str(rec["pair_id"])))
        if pre is None:
            continue
        ds, drug, post_genes, meta = rec["dataset"], rec["drug"], rec["genes"], rec["metadata"]
        common = dict(task=spec.name, stage=stage, rec=rec, label=drug, candidates=drugs[ds],
                      reference=join_genes(post_genes), input_sentence=join_genes(pre["genes"]),
                      cell_ids=[rec["cell_id"], pre["cell_id"]])
        ctx.out.add(direction="primal", prompt_id=prompt_id(spec.name, "primal", stage, ds, rec["cell_id"]),
                    prompt=spec.primal_prompt(pre["genes"], drug, len(post_genes), meta),
                    answer=join_genes(post_genes), **common)
        if stage != "rl":
            ctx.out.add(direction="dual", prompt_id=prompt_id(spec.name, "dual", stage, ds, rec["cell_id"]),
                        prompt=spec.dual_prompt(post_genes, pre["genes"], drugs[ds], meta), answer=drug,
                        **common)


# ---------------------------------------------------------------- CellPuzzles

def cellpuzzles_batches(recs: Sequence[Mapping[str, Any]], n: int, seed: int, stage: str,
                        rounds: int = 1) -> list[list[int]]:
    """Batches of ``n`` record indices with ``n`` distinct cell types: same donor where possible, else the
    same dataset; each cell is used at most once per round; deterministic by seed. Round r > 0 reshuffles
    the cells into new batches (a batch of the same cells as an earlier one is skipped)."""
    batches: list[list[int]] = []
    seen: set[frozenset[int]] = set()
    for r in range(rounds):
        for batch in _puzzle_round(recs, n, seed, stage if r == 0 else f"{stage}:round{r}"):
            if frozenset(batch) not in seen:
                seen.add(frozenset(batch))
                batches.append(batch)
    return batches


def _puzzle_round(recs: Sequence[Mapping[str, Any]], n: int, seed: int, stage: str) -> list[list[int]]:
    def fill(pool: Sequence[int], key: str, batches: list[list[int]]) -> list[int]:
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in pool:
            by_type[recs[i]["cell_type"]].append(i)
        queues = {t: stable_shuffle(idx, "puzzle-cells", seed, stage, key, t) for t, idx in by_type.items()}
        while True:
            available = sorted(t for t, q in queues.items() if q)
            if len(available) < n:
                return [i for q in queues.values() for i in q]
            chosen = stable_sample(available, n, "puzzle-types", seed, stage, key, len(batches))
            batches.append([queues[t].pop() for t in chosen])

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, rec in enumerate(recs):
        if rec["cell_type"] is not None:
            donor = rec["metadata"].get("donor")
            groups[(rec["dataset"], "" if donor is None else str(donor))].append(i)
    batches: list[list[int]] = []
    leftovers: dict[str, list[int]] = defaultdict(list)
    for (ds, donor), pool in sorted(groups.items()):
        if donor:
            leftovers[ds].extend(fill(pool, f"{ds}:donor:{donor}", batches))
        else:
            leftovers[ds].extend(pool)
    for ds, pool in sorted(leftovers.items()):
        fill(sorted(pool), f"{ds}:dataset", batches)
    return batches


def _shared_metadata(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = recs[0]["metadata"]
    return {k: v for k, v in first.items() if all(r["metadata"].get(k) == v for r in recs[1:])}


def cellpuzzles_rows(ctx: BuildContext, recs: list[dict[str, Any]], stage: str, specs: Sequence[TaskSpec]) -> None:
    """N cells + N shuffled types -> assignment (Cell-o1); ``cellpuzzles.duals_per_cell`` inpainting duals per
    cell given its type, one in each of the first puzzles that hold the cell, each with that puzzle's mask (later
    rounds add puzzles, not more duals of the same cells)."""
    (spec,) = specs
    out, puzzles, seed = ctx.out, ctx.cellpuzzles, ctx.tables.seed
    masker = ctx.masker(stage)
    duals: Counter[str] = Counter()
    for batch in cellpuzzles_batches(recs, puzzles.batch_size, seed, stage, puzzles.rounds(stage)):
        cells = [recs[i] for i in batch]
        ids = [c["cell_id"] for c in cells]
        ds = cells[0]["dataset"]
        key = f"{stable_seed(*ids):016x}"
        pid = prompt_id(spec.name, "primal", stage, ds, key)
        gold = [c["cell_type"] for c in cells]
        candidates = stable_shuffle(gold, "puzzle-candidates", seed, pid)
        meta = _shared_metadata(cells)
        masks = [masker.mask(c["genes"], f"{pid}#{j}") for j, c in enumerate(cells)]
        label = CELLPUZZLES_ANSWER_SEP.join(gold)
        out.add(task=spec.name, direction="primal", stage=stage, prompt_id=pid, rec=cells[0],
                prompt=spec.primal_prompt([c["genes"] for c in cells], candidates, meta), answer=label,
                label=label, candidates=candidates, mask=masks, cell_ids=ids, metadata=meta)
        if stage == "rl":
            continue
        for j, (cell, mask) in enumerate(zip(cells, masks)):
            if duals[cell["cell_id"]] >= puzzles.duals_per_cell:
                continue
            duals[cell["cell_id"]] += 1
            out.add(task=spec.name, direction="dual", stage=stage, prompt_id=f"{pid}#{j}", rec=cell,
                    prompt=spec.dual_prompt(mask.visible, cell["cell_type"], mask.n_hidden, meta),
                    answer=join_genes(mask.hidden), label=cell["cell_type"], candidates=candidates, mask=mask,
                    input_sentence=join_genes(cell["genes"]), cell_ids=[cell["cell_id"]], metadata=meta)
