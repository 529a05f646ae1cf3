"""The offline ``markers`` teacher: readable chain-of-thought from marker-gene and gene-program tables.

It reads only the prompt (never the answer): the task is recognised from the system message of
:mod:`cellduality.tasks.prompts`, the user message is parsed back into genes, candidates and conditions, and the
reasoning cites the evidence it used (genes with their ranks, programme activities, scores) before giving an
answer in the ``<think>…</think>\\n<answer>…</answer>`` format.

| prompt | reasoning |
|---|---|
| annotation (and generation's dual) | score each candidate by weighted markers + typical genes found, rank-aware |
| inpainting duals (annotation, CellPuzzles, sensitivity) | propose the type's / drug programmes' genes and abundant transcripts not among the visible genes |
| conditional generation | interleave abundant transcripts with the type's typical genes |
| drug sensitivity | activity of the drug's target programmes among all Hallmark programmes in the cell |
| perturbation | move genes of induced programmes up, repressed ones down; its dual scores drugs by the shift |
| CellPuzzles | per-cell scores, then the best one-to-one assignment |

It is sometimes wrong on purpose, like a real teacher: choices are sampled with a temperature over the
evidence scores (Gumbel-max, i.e. softmax(score / (temperature * scale))), and gene lists are sampled
Plackett-Luce style, all from noise seeded by (prompt id, sample index), so the same request always gives
the same text. Temperature 0 always takes the best-supported answer.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cellduality.seeding import stable_keys, stable_uniform
from cellduality.tasks import prompts as P
from cellduality.tasks.parsing import parse_response
from cellduality.teacher.markers.knowledge import DrugProgram, GeneHit, Knowledge, LabelEvidence, gene_ranks
from cellduality.teacher.providers import Completion, GenerationParams, TeacherProvider, TeacherRequest

SCORE_SCALE = 0.12  # evidence-score units per unit of temperature (lower = more decisive teacher)
LIST_SCALE = 0.2  # log-prior units per unit of temperature when sampling gene lists
PROLIFERATION = ("HALLMARK_E2F_TARGETS", "HALLMARK_G2M_CHECKPOINT", "HALLMARK_MYC_TARGETS_V1")
FILLER_PROGRAMS = ("HALLMARK_OXIDATIVE_PHOSPHORYLATION", "HALLMARK_MYC_TARGETS_V1")
SHOW_GENES = 8
#: prompt handlers (``ParsedPrompt.task``); the task registry names one per task direction (``TaskSpec.teacher``)
HANDLERS = ("annotation", "inpainting", "generation", "sensitivity", "perturbation", "perturbation_dual",
            "cellpuzzles")


class UnsupportedPrompt(ValueError):
    """The prompt is not one of the task prompts the markers teacher knows."""


# ---------------------------------------------------------------- prompt parsing

@dataclass(frozen=True)
class ParsedPrompt:
    task: str
    fields: dict = field(default_factory=dict)


def _genes(text: str, sep: str | None = None) -> list[str]:
    items = text.split(sep) if sep else text.split()
    return [g.strip() for g in items if g.strip()]


def _body(user: str) -> str:
    """The user message without its leading ``Context: …`` paragraph."""
    if user.startswith("Context:"):
        _, _, rest = user.partition("\n\n")
        return rest
    return user


def _after(text: str, header: str) -> list[str]:
    """Non-empty lines after ``header`` (candidate lists)."""
    if header not in text:
        return []
    return [line.strip() for line in text.split(header, 1)[1].splitlines() if line.strip()]


def _line(text: str, prefix: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def parse_prompt(messages: Sequence[Mapping[str, str]]) -> ParsedPrompt:
    """Recognise the task of a :mod:`cellduality.tasks.prompts` chat and extract its inputs."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    body = _body(user)
    if system == P.CELLPUZZLES_SYSTEM or re.search(r"^Cell 1: ", body, re.M):
        cells = [_genes(m.group(1), ",") for m in re.finditer(r"^Cell \d+: (.*)$", body, re.M)]
        return ParsedPrompt("cellpuzzles", {"cells": cells, "candidates": _after(body, "following cell types:\n")})
    if system == P.INPAINTING_SYSTEM or "Observed genes:" in body:
        n_hidden = _line(body, "Number of hidden genes:")
        return ParsedPrompt("inpainting", {
            "cell_type": _line(body, "Cell type:"), "drug": _line(body, "Drug:"),
            "sensitivity": _line(body, "Drug response:"), "visible": _genes(_line(body, "Observed genes:") or ""),
            "n_hidden": int(n_hidden) if n_hidden and n_hidden.isdigit() else 1,
        })
    if system == P.GENERATION_SYSTEM:
        match = re.search(r"Generate the top (\d+)", body)
        return ParsedPrompt("generation", {"cell_type": _line(body, "Cell type:") or "",
                                           "n_genes": int(match.group(1)) if match else 32})
    if system.startswith(P.SENSITIVITY_SYSTEM.split("{labels}")[0]):
        labels = re.search(r"one of: (.*)\.$", system)
        return ParsedPrompt("sensitivity", {
            "genes": _genes(_line(body, "Cell:") or ""), "drug": _line(body, "Drug:") or "",
            "labels": [s.strip() for s in labels.group(1).split(",")] if labels else list(P.SENSITIVITY_LABELS),
        })
    if system == P.PERTURBATION_DUAL_SYSTEM or "Cell after treatment:" in body:
        return ParsedPrompt("perturbation_dual", {
            "pre": _genes(_line(body, "Cell before treatment:") or ""),
            "post": _genes(_line(body, "Cell after treatment:") or ""),
            "candidates": _after(body, "following drugs:\n"),
        })
    if system == P.PERTURBATION_SYSTEM or "Cell before treatment:" in body:
        match = re.search(r"Generate the top (\d+)", body)
        pre = _genes(_line(body, "Cell before treatment:") or "")
        return ParsedPrompt("perturbation", {"pre": pre, "drug": _line(body, "Drug:") or "",
                                             "n_genes": int(match.group(1)) if match else len(pre)})
    if system == P.ANNOTATION_SYSTEM or body.startswith("Cell:"):
        return ParsedPrompt("annotation", {"genes": _genes(_line(body, "Cell:") or ""),
                                           "candidates": _after(body, "following cell types:\n")})
    raise UnsupportedPrompt("the markers teacher does not recognise this prompt (not a cellduality task prompt)")


# ---------------------------------------------------------------- seeded sampling

class _Noise:
    """Gumbel noise keyed by (prompt id, sample index, tag, counter)."""

    def __init__(self, *key: object) -> None:
        self.key = key
        self._count = itertools.count()

    def gumbel(self, tag: str) -> float:
        u = stable_uniform("markers-teacher", *self.key, tag, next(self._count))
        u = min(max(u, 1e-12), 1 - 1e-12)
        return -math.log(-math.log(u))

    def pick(self, options: Sequence[str], tag: str) -> str:
        """One of ``options`` (phrasing variety between samples)."""
        u = stable_uniform("markers-teacher", *self.key, tag, next(self._count))
        return options[min(int(u * len(options)), len(options) - 1)]

    def choose(self, scores: Sequence[float], temperature: float, tag: str) -> int:
        """Index sampled from softmax(score / (temperature * SCORE_SCALE)); argmax at temperature 0."""
        if temperature <= 0:
            return max(range(len(scores)), key=lambda i: (scores[i], -i))
        scale = temperature * SCORE_SCALE
        return max(range(len(scores)), key=lambda i: scores[i] / scale + self.gumbel(tag))

    def gumbels(self, n: int, tag: str) -> list[float]:
        """``n`` Gumbel draws from one seeded stream (SplitMix64; fast for long gene pools)."""
        keys = stable_keys(n, "markers-teacher", *self.key, tag, next(self._count))
        return [-math.log(-math.log(min(max((k >> 11) / float(1 << 53), 1e-12), 1 - 1e-12))) for k in keys]

    def order(self, weights: Sequence[tuple[str, float]], k: int, temperature: float, tag: str) -> list[str]:
        """``k`` items sampled without replacement (Plackett-Luce over log-weights), in sampled order.

        Only the ``3k + 30`` heaviest items can realistically be drawn, so the rest are not considered.
        """
        top = sorted(weights, key=lambda gw: -gw[1])[: 3 * k + 30]
        scale = max(temperature, 1e-6) * LIST_SCALE
        noise = self.gumbels(len(top), tag) if temperature > 0 else [0.0] * len(top)
        keyed = sorted(((math.log(max(w, 1e-9)) / scale + g, gene) for (gene, w), g in zip(top, noise)),
                       key=lambda t: -t[0])
        return [gene for _, gene in keyed[:k]]


# ---------------------------------------------------------------- text helpers

def _hits(hits: Sequence[GeneHit], limit: int = SHOW_GENES) -> str:
    return ", ".join(f"{h.gene} ({h.rank})" for h in list(hits)[:limit])


def _names(items: Sequence[str], limit: int = SHOW_GENES) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _pretty_program(name: str) -> str:
    return name.removeprefix("HALLMARK_").replace("_", " ").lower()


def _answer(think: list[str], answer: str) -> str:
    return P.format_answer("\n".join(line for line in think if line), answer)


# ---------------------------------------------------------------- the teacher

class MarkersTeacher:
    """Writes one response for a prompt; see the module docstring."""

    def __init__(self, knowledge: Knowledge | None = None, max_reasoning_lines: int | None = None) -> None:
        self.kb = knowledge or Knowledge.load()
        self.max_reasoning_lines = max_reasoning_lines

    def respond(self, messages: Sequence[Mapping[str, str]], prompt_id: str, sample_index: int,
                temperature: float = 0.7) -> str:
        parsed = parse_prompt(messages)
        noise = _Noise(prompt_id, sample_index)
        handler = self.handler(parsed.task)
        return self._shorten(handler(noise, temperature, **parsed.fields))

    @classmethod
    def handles(cls, name: str) -> bool:
        """Whether ``name`` is one of the teacher's prompt handlers (the task registry's ``teacher`` names)."""
        return name in HANDLERS and callable(getattr(cls, f"_{name}", None))

    def handler(self, name: str):
        if not self.handles(name):
            raise UnsupportedPrompt(f"the markers teacher has no handler {name!r}")
        return getattr(self, f"_{name}")

    def _shorten(self, response: str) -> str:
        """Keep the first reasoning line (what the cell shows) and the last ``max_reasoning_lines - 1``
        (the conclusion): brief chains of thought that a small model can learn in a short SFT. 0 keeps no
        reasoning (an empty ``<think></think>``: answer-only SFT in the response format); None keeps it all."""
        n = self.max_reasoning_lines
        if n is None:
            return response
        parsed = parse_response(response)
        if n == 0:
            return P.format_answer("", parsed.answer)
        lines = parsed.think.strip().splitlines()
        if len(lines) <= n:
            return response
        return P.format_answer("\n".join(lines[:1] + (lines[-(n - 1):] if n > 1 else [])), parsed.answer)

    # ------------------------------------------------------------ classification of one cell

    def _evidence_lines(self, evidence: Sequence[LabelEvidence]) -> list[str]:
        lines, none, unknown = [], [], []
        for ev in sorted(evidence, key=lambda e: -e.score):
            if not ev.known:
                unknown.append(ev.label)
            elif not ev.hits:
                none.append(ev.label)
            else:
                desc = self.kb.description(ev.label)
                lines.append(f"- {ev.label} [{desc}]: {_hits(ev.hits)}; score {ev.score:.2f}.")
        if none:
            lines.append(f"- No supporting genes for: {', '.join(none)}.")
        if unknown:
            lines.append(f"- I have no marker reference for: {', '.join(unknown)}.")
        return lines

    def _candidates(self, candidates: Sequence[str]) -> list[str]:
        if candidates:
            return list(candidates)
        return sorted(self.kb.types)  # no list given: the marker table's own types

    def _annotation(self, noise: _Noise, temperature: float, genes: list[str], candidates: list[str]) -> str:
        cands = self._candidates(candidates)
        evidence = [self.kb.label_evidence(c, genes) for c in cands]
        pick = evidence[noise.choose([e.score for e in evidence], temperature, "annotation")]
        best = max(evidence, key=lambda e: e.score)
        think = [
            noise.pick([f"The cell's highest-ranked genes are {_names(genes, 10)}.",
                        f"Top of the expression ranking: {_names(genes, 8)}.",
                        f"The most highly expressed genes here are {_names(genes, 12)}."], "intro"),
            noise.pick(["I score each candidate cell type by its known marker and typical genes found in the cell, "
                        "giving higher-ranked genes more weight (rank in parentheses):",
                        "For every candidate I collect the marker and typical genes present, weighting genes near "
                        "the top of the ranking more (rank in parentheses):",
                        "Marker evidence per candidate type (gene rank in parentheses; higher-ranked genes count "
                        "more):"], "method"),
            *self._evidence_lines(evidence),
        ]
        if pick.negative:
            think.append(f"Against {pick.label}: {_hits(pick.negative)} should be absent in this cell type.")
        missing = [g for ev in pick.types for g in ev.missing][:5]
        if not pick.hits and pick.score >= best.score:
            think.append(f"No candidate has clear marker support; {pick.label} is my best guess.")
        elif pick.score >= best.score:
            support = _names([h.gene for h in pick.hits], 5) or "no specific genes"
            think.append(noise.pick([f"{pick.label} has the strongest support ({support}).",
                                     f"The evidence clearly favours {pick.label}: {support}.",
                                     f"Taken together ({support}), this is most consistent with {pick.label}."],
                                    "conclusion"))
            if missing:
                think.append(f"Its canonical markers {', '.join(missing)} are not among the top genes, "
                             "which is common for lowly captured transcripts.")
        else:
            support = _names([h.gene for h in pick.hits], 4) or "the overall profile"
            think.append(f"{best.label} scores higher ({best.score:.2f} vs {pick.score:.2f}), but I weigh "
                         f"{support} more heavily and favour {pick.label}.")
        return _answer(think, pick.label)

    # ------------------------------------------------------------ CellPuzzles

    def _cellpuzzles(self, noise: _Noise, temperature: float, cells: list[list[str]], candidates: list[str]) -> str:
        n = len(cells)
        if not cells or len(candidates) < n:
            raise UnsupportedPrompt(f"CellPuzzles prompt with {n} cells but {len(candidates)} candidate types")
        cands = list(candidates)
        evidence = [[self.kb.label_evidence(c, genes) for c in cands] for genes in cells]
        scale = max(temperature, 1e-6) * SCORE_SCALE
        noisy = [[ev.score / scale + (noise.gumbel("puzzle") if temperature > 0 else 0.0) for ev in row]
                 for row in evidence]
        assignment = _best_assignment(noisy)
        think = [noise.pick(["For each cell I score every candidate type by marker and typical genes found among "
                             "its top genes (rank in parentheses):",
                             "First I rate each cell against every candidate type using the marker and typical genes "
                             "among its top genes (rank in parentheses):"], "intro")]
        for i, row in enumerate(evidence, start=1):
            ranked = sorted(row, key=lambda e: -e.score)
            top = ranked[0]
            nxt = f"; next {ranked[1].label} ({ranked[1].score:.2f})" if len(ranked) > 1 else ""
            think.append(f"- Cell {i}: best {top.label} ({top.score:.2f}: {_hits(top.hits, 4) or 'no marker genes'})"
                         f"{nxt}.")
        think.append("Each candidate type must be used exactly once, so I choose the one-to-one assignment with "
                     "the most total evidence.")
        for i, j in enumerate(assignment):
            own = max(range(len(cands)), key=lambda k: evidence[i][k].score)
            if own != j:
                think.append(f"Cell {i + 1} prefers {cands[own]}, which fits another cell better; it takes "
                             f"{cands[j]} ({evidence[i][j].score:.2f}).")
        answer = P.CELLPUZZLES_ANSWER_SEP.join(cands[j] for j in assignment)
        return _answer(think, answer)

    # ------------------------------------------------------------ inpainting duals

    def _inpainting(self, noise: _Noise, temperature: float, cell_type: str | None, drug: str | None,
                    sensitivity: str | None, visible: list[str], n_hidden: int) -> str:
        seen = {g.upper() for g in visible}
        think = [f"{len(visible)} genes are observed and {n_hidden} of the cell's top genes are hidden."]
        pool: dict[str, float] = {}
        if cell_type:
            comps = self.kb.resolve(cell_type)
            ev = self.kb.label_evidence(cell_type, visible)
            if comps:
                think.append(f"The cell is a {cell_type} [{self.kb.description(cell_type)}].")
                if ev.hits:
                    think.append(f"The observed genes already include its genes {_names([h.gene for h in ev.hits])}.")
                expected = [(g, w) for g, w in self.kb.expected_genes(cell_type) if g not in seen]
                think.append(f"{cell_type} genes not among the observed ones: {_names([g for g, _ in expected], 10)}.")
                pool.update({g: 1.2 * w for g, w in expected})
            else:
                think.append(f"I have no marker reference for {cell_type}, so I rely on abundant transcripts.")
        if drug:
            think.extend(self._drug_gene_pool(drug, sensitivity, visible, seen, pool))
        common = [(g, w) for g, w in self.kb.common_genes() if g not in seen]
        immune = bool(cell_type and self.kb.resolve(cell_type))
        if immune or not pool:
            think.append(f"Transcripts abundant in most immune cells and not observed: "
                         f"{_names([g for g, _ in common], 8)}.")
        for g, w in common:
            pool[g] = max(pool.get(g, 0.0), (0.9 if immune or not pool else 0.3) * w)
        chosen = noise.order(sorted(self.kb.measured(pool.items()), key=lambda kv: -kv[1]), n_hidden, temperature,
                             "inpaint")
        chosen.sort(key=lambda g: -pool[g])  # highest expected abundance first
        think.append(noise.pick([f"I pick the {n_hidden} most likely and order them by expected abundance.",
                                 f"The {n_hidden} best candidates, most abundant first, are my reconstruction.",
                                 f"I choose {n_hidden} of these, ordered by how highly they are usually expressed."],
                                "pick"))
        return _answer(think, " ".join(chosen))

    def _drug_gene_pool(self, drug: str, sensitivity: str | None, visible: list[str], seen: set[str],
                        pool: dict[str, float]) -> list[str]:
        """Genes of the programmes active among the visible genes and of the drug's programmes."""
        info = self.kb.drug(drug)
        sensitive = sensitivity is not None and _is_sensitive_label(sensitivity)
        if info is None:
            drug_programs = list(PROLIFERATION) if sensitive else []
            lines = [f"I have no programme annotation for {drug}."]
        else:
            drug_programs = list(info.sensitivity_programs if sensitive else info.up) or list(info.down + info.up)
            lines = [f"{info.name}: {info.description or 'no description'}."]
        active = [a for a in self.kb.program_ranking(visible)[:5] if a.hits]
        if active:
            lines.append("Programmes most active among the observed genes: " + "; ".join(
                f"{_pretty_program(a.name)} ({_names([h.gene for h in a.hits], 4)})" for a in active) + ".")
        if sensitivity and drug_programs:
            lines.append(f"The cell is {sensitivity} to {drug}, which points to "
                         f"{', '.join(_pretty_program(p) for p in drug_programs)}.")
        top = active[0].score if active else 1.0
        weights: dict[str, float] = {}
        for act in active:
            for gene in self.kb.programs.get(act.name, ()):
                weights[gene] = weights.get(gene, 0.0) + act.score / top
        for program in drug_programs:
            for gene in self.kb.programs.get(program, ()):
                weights[gene] = weights.get(gene, 0.0) + 0.5
        if weights:
            peak = max(weights.values())
            for gene, w in weights.items():
                if gene not in seen:
                    pool[gene] = max(pool.get(gene, 0.0), 0.9 * w / peak)
        return lines

    # ------------------------------------------------------------ generation

    def _generation(self, noise: _Noise, temperature: float, cell_type: str, n_genes: int) -> str:
        expected = self.kb.expected_genes(cell_type)
        think = []
        if expected:
            think.append(f"A {cell_type} is a {self.kb.description(cell_type)}.")
            think.append(f"Its typical highly expressed genes include {_names([g for g, _ in expected], 12)}.")
        else:
            think.append(f"I have no marker reference for {cell_type}; I build a generic immune cell.")
        common = self.kb.common_genes()
        think.append(f"Transcripts abundant in almost every immune cell ({_names([g for g, _ in common], 8)}) "
                     "usually occupy the top ranks.")
        pool = dict(common)
        for g, w in expected:
            pool[g] = max(pool.get(g, 0.0), 1.1 * w)
        for program in FILLER_PROGRAMS:
            for i, g in enumerate(self.kb.programs.get(program, ())):
                pool.setdefault(g, 0.2 * (1 - i / 400))
        genes = noise.order(sorted(self.kb.measured(pool.items()), key=lambda kv: -kv[1]), n_genes, temperature,
                            "generate")
        think.append(noise.pick([f"I interleave lineage genes with abundant transcripts by expected expression and "
                                 f"list {len(genes)} genes.",
                                 f"Ordering these by expected expression gives the {len(genes)} genes below.",
                                 f"A plausible ranking of {len(genes)} genes mixes both groups, most abundant first."],
                                "list"))
        return _answer(think, " ".join(genes))

    # ------------------------------------------------------------ drug sensitivity

    def _sensitivity(self, noise: _Noise, temperature: float, genes: list[str], drug: str, labels: list[str]) -> str:
        sensitive_label, resistant_label = _sensitivity_labels(labels)
        info = self.kb.drug(drug)
        think = []
        if info is None or not info.sensitivity_programs:
            targets = list(PROLIFERATION)
            think.append(f"I have no programme annotation for {drug}; most anti-cancer drugs hit proliferating cells, "
                         "so I use proliferation programmes as a proxy for its targets.")
        else:
            targets = list(info.sensitivity_programs)
            think.append(f"{info.name}: {info.description or 'no description'}.")
            think.append(f"Cells that rely on {', '.join(_pretty_program(p) for p in targets)} should be the most "
                         "vulnerable to it.")
        ranking = self.kb.program_ranking(genes)
        by_name = {a.name: a for a in ranking}
        think.append(f"Activity of the drug's target programmes among all {len(ranking)} Hallmark programmes in this "
                     "cell (genes with rank in parentheses):")
        percentiles = []
        for program in targets:
            act = by_name.get(program)
            if act is None:
                continue
            lower = sum(a.score < act.score for a in ranking)
            ties = sum(a.score == act.score for a in ranking) - 1
            pct = (lower + 0.5 * ties) / max(len(ranking) - 1, 1)  # mid-rank percentile
            percentiles.append(pct)
            where = f"percentile {pct:.2f}" if act.hits else "no member among the top genes"
            think.append(f"- {_pretty_program(program)}: {_hits(act.hits, 5) or 'none'}; {where}.")
        dependence = sum(percentiles) / len(percentiles) if percentiles else 0.5
        idx = noise.choose([dependence, 1.0 - dependence], temperature, "sensitivity")
        answer = sensitive_label if idx == 0 else resistant_label
        strong = "high" if dependence >= 0.5 else "low"
        think.append(f"The target programmes are relatively {'active' if strong == 'high' else 'inactive'} "
                     f"(mean percentile {dependence:.2f}).")
        if (idx == 0) == (dependence >= 0.5):
            think.append(f"A cell that relies on the programmes the drug attacks is likely {sensitive_label}; "
                         f"with {strong} dependence I predict {answer}.")
        else:
            think.append(f"The evidence is not decisive; weighing the cell's overall state I predict {answer}.")
        return _answer(think, answer)

    # ------------------------------------------------------------ perturbation response

    def _perturbation(self, noise: _Noise, temperature: float, pre: list[str], drug: str, n_genes: int) -> str:
        info = self.kb.drug(drug)
        think = [f"Before treatment the cell's top genes are {_names(pre, 10)}."]
        score = {g.upper(): 1.0 - i / max(len(pre), 1) for i, g in enumerate(pre)}
        if info is None or not (info.up or info.down):
            think.append(f"I have no programme annotation for {drug}, so I predict a cell close to the untreated one.")
            up, down = set(), set()
        else:
            up = {g for p in info.up for g in self.kb.programs.get(p, ())}
            down = {g for p in info.down for g in self.kb.programs.get(p, ())}
            think.append(f"{info.name}: {info.description or 'no description'}. It induces "
                         f"{', '.join(_pretty_program(p) for p in info.up) or 'nothing annotated'} and represses "
                         f"{', '.join(_pretty_program(p) for p in info.down) or 'nothing annotated'}.")
        raised = [g for g in score if g in up]
        lowered = [g for g in score if g in down and g not in up]
        for g in raised:
            score[g] += 0.35
        for g in lowered:
            score[g] -= 0.2
        if raised:
            think.append(f"Genes of induced programmes already expressed move up: {_names(raised)}.")
        if lowered:
            think.append(f"Genes of repressed programmes move down or drop out: {_names(lowered)}.")
        new_pool = self.kb.measured((g, 1.0) for p in (info.up if info else ()) for g in self.kb.programs.get(p, ())
                                    if g not in score)
        n_new = max(1, round(0.15 * n_genes)) if new_pool else 0
        new = noise.order(new_pool, n_new, max(temperature, 0.5), "perturb-new") if n_new else []
        for i, g in enumerate(new):
            score[g] = 0.75 - 0.4 * i / max(n_new, 1)
        if new:
            think.append(f"Induced-programme genes likely to enter the top ranks: {_names(new)}.")
        jitter = {g: s + (temperature * 0.03 * noise.gumbel("perturb") if temperature > 0 else 0.0)
                  for g, s in score.items()}
        post = sorted(jitter, key=lambda g: -jitter[g])[:n_genes]
        think.append(f"Re-ranking gives the {len(post)} top genes after treatment.")
        return _answer(think, " ".join(post))

    def _perturbation_dual(self, noise: _Noise, temperature: float, pre: list[str], post: list[str],
                           candidates: list[str]) -> str:
        pre_rank, post_rank = gene_ranks(pre), gene_ranks(post)
        n = max(len(pre), len(post), 1)
        gained = {g: (pre_rank.get(g, n + 1) - r) / n for g, r in post_rank.items() if pre_rank.get(g, n + 1) > r + 2}
        lost = {g: (post_rank.get(g, n + 1) - r) / n for g, r in pre_rank.items() if post_rank.get(g, n + 1) > r + 2}
        think = [f"After treatment these genes appear or move up: {_names(sorted(gained, key=lambda g: -gained[g]))}.",
                 f"These disappear or move down: {_names(sorted(lost, key=lambda g: -lost[g]))}."]
        cands = list(candidates) or [d.name for d in self.kb.drugs.values()]
        if not cands:
            think.append("No candidate drugs were given and I know no drug programmes.")
            return _answer(think, "unknown")
        scores = []
        think.append("For each candidate drug I check whether gained genes belong to the programmes it induces and "
                     "lost genes to those it represses:")
        for drug in cands:
            info = self.kb.drug(drug)
            s, lines = _drug_shift_score(self.kb, info, gained, lost)
            scores.append(s)
            think.append(f"- {drug}: {lines}; score {s:.2f}.")
        idx = noise.choose(scores, temperature, "perturb-dual")
        best = max(range(len(scores)), key=lambda i: scores[i])
        if idx == best:
            think.append(f"{cands[idx]} explains the shift best.")
        else:
            think.append(f"{cands[best]} scores highest, but the evidence is thin; I favour {cands[idx]}.")
        return _answer(think, cands[idx])


def _drug_shift_score(kb: Knowledge, info: DrugProgram | None, gained: Mapping[str, float],
                      lost: Mapping[str, float]) -> tuple[float, str]:
    if info is None:
        return 0.0, "no programme annotation"
    up = {g for p in info.up for g in kb.programs.get(p, ())}
    down = {g for p in info.down for g in kb.programs.get(p, ())}
    agree = [g for g in gained if g in up] + [g for g in lost if g in down]
    disagree = [g for g in gained if g in down] + [g for g in lost if g in up]
    score = sum(gained.get(g, 0) + lost.get(g, 0) for g in agree) - 0.5 * sum(
        gained.get(g, 0) + lost.get(g, 0) for g in disagree)
    text = f"matches {_names(agree, 5)}" if agree else "no matching shift"
    if disagree:
        text += f"; contradicted by {_names(disagree, 3)}"
    return score, text


def _is_sensitive_label(label: str) -> bool:
    low = label.strip().lower()
    negated = low.startswith(("in", "non", "un", "not")) or "resist" in low
    return ("sensitiv" in low or "respon" in low) and not negated


def _sensitivity_labels(labels: Sequence[str]) -> tuple[str, str]:
    """(label meaning sensitive, label meaning resistant)."""
    labels = list(labels) or list(P.SENSITIVITY_LABELS)
    sensitive = next((lab for lab in labels if _is_sensitive_label(lab)), labels[0])
    resistant = next((lab for lab in labels if lab != sensitive), sensitive)
    return sensitive, resistant


def _best_assignment(scores: Sequence[Sequence[float]]) -> list[int]:
    """Column per row maximising the total score, one-to-one (exhaustive up to 7 rows, else Hungarian)."""
    n_rows, n_cols = len(scores), len(scores[0]) if scores else 0
    if n_rows <= 7 and n_cols <= 7:
        best = max(itertools.permutations(range(n_cols), n_rows),
                   key=lambda perm: sum(scores[i][j] for i, j in enumerate(perm)))
        return list(best)
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-np.asarray(scores, dtype=float))
    out = [0] * n_rows
    for r, c in zip(rows, cols):
        out[r] = int(c)
    return out


# ---------------------------------------------------------------- provider

class MarkersProvider(TeacherProvider):
    """The markers teacher behind the provider interface (offline, free, deterministic)."""

    name = "markers"
    max_samples_per_request = 64
    cache_responses = False  # free and deterministic: recomputing is faster than a cache lookup

    def __init__(self, model: str = "markers-v1", knowledge: Knowledge | None = None,
                 max_reasoning_lines: int | None = None) -> None:
        teacher = MarkersTeacher(knowledge, max_reasoning_lines)
        # the model name carries the knowledge digest: edited resource files never reuse stale cached answers
        name = f"{model}+{teacher.kb.digest}" if teacher.kb.digest else model
        super().__init__(name if max_reasoning_lines is None else f"{name}+lines{max_reasoning_lines}")
        self.teacher = teacher

    async def generate(self, request: TeacherRequest, params: GenerationParams) -> list[Completion]:
        prompt_chars = sum(len(m["content"]) for m in request.messages)
        out = []
        for index in request.sample_indices:
            text = self.teacher.respond(request.messages, request.prompt_id, index, params.temperature)
            out.append(Completion(text, prompt_chars / 4 / request.n, len(text) / 4, "stop"))
        return out
