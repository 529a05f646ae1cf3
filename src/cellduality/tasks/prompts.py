"""Chat prompts for the five tasks and their duals.

Every builder returns ``[{"role": "system", ...}, {"role": "user", ...}]``. Templates are module constants so
they can be audited; every system prompt asks for ``<think>…</think><answer>…</answer>``.

CellPuzzles reproduces Cell-o1's released format exactly (system message of the ``ncbi/Cell-o1`` model card;
user message ``Context: …\\n\\nCell 1: g1, g2, …\\n…\\n\\nMatch the cells above to one of the following cell
types:\\n…``), so ``ncbi/Cell-o1`` can be evaluated unchanged. The context sentence follows the released
example ("The cell is from a female at the 73-year-old stage, originating from the lung. The patient has been
diagnosed with …"); wording for fields the example does not show (healthy donors, donor id, drug, dose,
time) is ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cellduality.tasks.rwjs import as_gene_list

Messages = list[dict[str, str]]
Genes = str | Iterable[str]

CONTEXT_KEYS = ("sex", "age", "tissue", "disease", "donor", "drug", "dose", "time")
GENE_SEP = " "  # our tasks write cell sentences space-separated (Cell2Sentence); CellPuzzles uses ", "
HEALTHY = frozenset({"normal", "healthy", "control", "none"})
_MISSING = frozenset({"", "nan", "none", "na", "n/a", "<na>", "unknown", "unspecified", "not reported"})

FORMAT_INSTRUCTION = (
    "Include your detailed reasoning within <think> and </think> tags, and provide your final answer "
    "within <answer> and </answer> tags."
)

# ---------------------------------------------------------------- Cell-o1 (verbatim, do not edit)
CELLPUZZLES_SYSTEM = (
    "You are an expert assistant specialized in cell type annotation. "
    "You will be given a batch of N cells from the same donor, where each cell represents a unique cell type. "
    "For each cell, the top expressed genes are provided in descending order of expression. "
    "Using both the gene expression data and donor information, determine the correct cell type for each cell. "
    "You will also receive a list of N candidate cell types, and each candidate must be assigned to exactly one cell. "
    "Ensure that you consider all cells and candidate types together, rather than annotating each cell individually. "
    "Include your detailed reasoning within <think> and </think> tags, and provide your final answer within <answer> and </answer> tags. "
    "The final answer should be a single string listing the assigned cell types in order, separated by ' | '."
)
CELLPUZZLES_USER = (
    "Context: {context}\n\n{cells}\n\nMatch the cells above to one of the following cell types:\n{candidates}"
)
CELLPUZZLES_CELL_LINE = "Cell {index}: {genes}"
CELLPUZZLES_GENE_SEP = ", "
CELLPUZZLES_ANSWER_SEP = " | "

# ---------------------------------------------------------------- context sentences
CONTEXT_SUBJECT = "The cell is from {subject}"  # + " at the {age} stage" + ", originating from the {tissue}" + "."
CONTEXT_TISSUE_ONLY = "The cell originates from the {tissue}."
CONTEXT_DISEASE = "The patient has been diagnosed with {disease}."
CONTEXT_HEALTHY = "The donor is healthy."
CONTEXT_DONOR = "The donor ID is {donor}."
CONTEXT_DRUG = "The cell was treated with {drug}"  # + " at a dose of {dose}" + " for {time}" + "."
CONTEXT_DOSE = "The treatment dose is {dose}."
CONTEXT_TIME = "The time point is {time}."

# ---------------------------------------------------------------- our tasks
ANNOTATION_SYSTEM = (
    "You are an expert in single-cell biology. You will be given one cell as the list of its top expressed "
    "genes in descending order of expression. Using the genes and any donor information, determine the cell "
    "type of the cell. " + FORMAT_INSTRUCTION + " The final answer should be the cell type name only."
)
ANNOTATION_USER = "Cell: {genes}\n\nWhat is the cell type of this cell?"
ANNOTATION_USER_CANDIDATES = (
    "Cell: {genes}\n\nChoose the cell type of this cell from the following cell types:\n{candidates}"
)

INPAINTING_SYSTEM = (
    "You are an expert in single-cell biology. You will be given what is known about a cell and the observed "
    "part of its top expressed genes in descending order of expression; some of its top expressed genes have "
    "been hidden. Reason about which genes are missing. " + FORMAT_INSTRUCTION + " The final answer should list "
    "exactly the requested number of hidden genes, highest expressed first, separated by spaces."
)
INPAINTING_USER = (
    "{conditions}\nObserved genes: {visible}\nNumber of hidden genes: {n_hidden}\n\n"
    "List the {n_hidden} hidden genes, highest expressed first."
)
CONDITION_CELL_TYPE = "Cell type: {cell_type}"
CONDITION_DRUG = "Drug: {drug}"
CONDITION_SENSITIVITY = "Drug response: {sensitivity}"

GENERATION_SYSTEM = (
    "You are an expert in single-cell biology. You will be given a cell type and donor information. Generate a "
    "realistic cell of that type as the list of its top expressed genes in descending order of expression. "
    + FORMAT_INSTRUCTION + " The final answer should list exactly the requested number of genes, highest "
    "expressed first, separated by spaces."
)
GENERATION_USER = "Cell type: {cell_type}\n\nGenerate the top {n_genes} expressed genes of a cell of this type."

SENSITIVITY_SYSTEM = (
    "You are an expert in single-cell pharmacogenomics. You will be given one cell as the list of its top "
    "expressed genes in descending order of expression, and a drug. Predict whether the cell is sensitive or "
    "resistant to the drug. " + FORMAT_INSTRUCTION + " The final answer should be one of: {labels}."
)
SENSITIVITY_USER = "Cell: {genes}\nDrug: {drug}\n\nIs this cell {labels_or} to the drug?"

PERTURBATION_SYSTEM = (
    "You are an expert in single-cell perturbation biology. You will be given a cell before treatment as the "
    "list of its top expressed genes in descending order of expression, and a drug. Predict the cell after "
    "treatment. " + FORMAT_INSTRUCTION + " The final answer should list exactly the requested number of "
    "genes of the treated cell, highest expressed first, separated by spaces."
)
PERTURBATION_USER = (
    "Cell before treatment: {pre}\nDrug: {drug}\n\nGenerate the top {n_genes} expressed genes of this cell "
    "after treatment."
)
PERTURBATION_DUAL_SYSTEM = (
    "You are an expert in single-cell perturbation biology. You will be given a cell before and after a drug "
    "treatment, each as the list of its top expressed genes in descending order of expression. Infer which "
    "drug was applied. " + FORMAT_INSTRUCTION + " The final answer should be the drug name only."
)
PERTURBATION_DUAL_USER = "Cell before treatment: {pre}\nCell after treatment: {post}\n\nWhich drug was applied?"
PERTURBATION_DUAL_USER_CANDIDATES = (
    "Cell before treatment: {pre}\nCell after treatment: {post}\n\n"
    "Which drug was applied? Choose from the following drugs:\n{candidates}"
)

SENSITIVITY_LABELS = ("sensitive", "resistant")


# ---------------------------------------------------------------- helpers

def is_present(value: object) -> bool:
    """False for None, NaN/NA and empty or 'unknown'-like strings."""
    if value is None:
        return False
    try:
        if value != value:  # NaN, pd.NA raises TypeError on bool()
            return False
    except TypeError:
        return False
    return str(value).strip().lower() not in _MISSING


def _clean(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).split())


def format_age(age: object) -> str:
    """'73' / 73 -> '73-year-old'; '73-year-old stage' -> '73-year-old'; other text as is."""
    text = _clean(age)
    if text.replace(".", "", 1).isdigit():
        return f"{text}-year-old"
    if text.lower().endswith(" stage"):
        return text[: -len(" stage")]
    return text


def context_sentence(metadata: Mapping[str, object] | None, extra: Sequence[str] = ()) -> str:
    """Context sentences from ``sex, age, tissue, disease, donor, drug, dose, time`` (missing keys skipped).

    ``extra`` sentences (e.g. "The patient is a smoker.") are appended verbatim.
    """
    meta = {k: _clean(v) for k, v in (metadata or {}).items() if k in CONTEXT_KEYS and is_present(v)}
    parts: list[str] = []
    if "sex" in meta or "age" in meta:
        text = CONTEXT_SUBJECT.format(subject=f"a {meta['sex'].lower()}" if "sex" in meta else "a donor")
        if "age" in meta:
            text += f" at the {format_age(meta['age'])} stage"
        if "tissue" in meta:
            text += f", originating from the {meta['tissue']}"
        parts.append(text + ".")
    elif "tissue" in meta:
        parts.append(CONTEXT_TISSUE_ONLY.format(tissue=meta["tissue"]))
    if "disease" in meta:
        healthy = meta["disease"].lower() in HEALTHY
        parts.append(CONTEXT_HEALTHY if healthy else CONTEXT_DISEASE.format(disease=meta["disease"]))
    if "donor" in meta:
        parts.append(CONTEXT_DONOR.format(donor=meta["donor"]))
    if "drug" in meta:
        text = CONTEXT_DRUG.format(drug=meta["drug"])
        if "dose" in meta:
            text += f" at a dose of {meta['dose']}"
        if "time" in meta:
            text += f" for {meta['time']}"
        parts.append(text + ".")
    else:
        if "dose" in meta:
            parts.append(CONTEXT_DOSE.format(dose=meta["dose"]))
        if "time" in meta:
            parts.append(CONTEXT_TIME.format(time=meta["time"]))
    parts.extend(" ".join(s.split()) for s in extra if s and s.strip())
    return " ".join(parts)


def without(metadata: Mapping[str, object] | None, *keys: str) -> dict[str, object]:
    """Metadata minus ``keys`` (e.g. the drug when it is what the prompt asks for)."""
    return {k: v for k, v in (metadata or {}).items() if k not in keys}


def join_genes(genes: Genes, sep: str = GENE_SEP) -> str:
    return sep.join(as_gene_list(genes))


def _messages(system: str, user: str, metadata: Mapping[str, object] | None) -> Messages:
    context = context_sentence(metadata)
    if context:
        user = f"Context: {context}\n\n{user}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(str(i) for i in items)


# ---------------------------------------------------------------- builders

def annotation_prompt(
    genes: Genes, metadata: Mapping[str, object] | None = None, candidates: Sequence[str] | None = None
) -> Messages:
    """Cell -> cell type (optionally choosing from ``candidates``). Also the dual of conditional generation."""
    if candidates:
        user = ANNOTATION_USER_CANDIDATES.format(genes=join_genes(genes), candidates=_bullets(candidates))
    else:
        user = ANNOTATION_USER.format(genes=join_genes(genes))
    return _messages(ANNOTATION_SYSTEM, user, metadata)


generation_dual_prompt = annotation_prompt


def inpainting_prompt(
    conditions: Sequence[str], visible_genes: Genes, n_hidden: int, metadata: Mapping[str, object] | None = None
) -> Messages:
    """Generic dual of a classification task: (known conditions, c_obs) -> the ``n_hidden`` hidden genes."""
    user = INPAINTING_USER.format(
        conditions="\n".join(conditions), visible=join_genes(visible_genes), n_hidden=int(n_hidden)
    )
    return _messages(INPAINTING_SYSTEM, user, metadata)


def annotation_dual_prompt(
    visible_genes: Genes, cell_type: str, n_hidden: int, metadata: Mapping[str, object] | None = None
) -> Messages:
    """(c_obs, predicted cell type) -> hidden genes. Also the per-cell dual of CellPuzzles."""
    return inpainting_prompt([CONDITION_CELL_TYPE.format(cell_type=cell_type)], visible_genes, n_hidden, metadata)


cellpuzzles_dual_prompt = annotation_dual_prompt


def generation_prompt(cell_type: str, n_genes: int, metadata: Mapping[str, object] | None = None) -> Messages:
    """Cell type (+ metadata) -> a K-gene cell sentence."""
    return _messages(GENERATION_SYSTEM, GENERATION_USER.format(cell_type=cell_type, n_genes=int(n_genes)), metadata)


def sensitivity_prompt(
    genes: Genes,
    drug: str,
    metadata: Mapping[str, object] | None = None,
    labels: Sequence[str] = SENSITIVITY_LABELS,
) -> Messages:
    """(cell, drug) -> sensitivity label."""
    system = SENSITIVITY_SYSTEM.format(labels=", ".join(labels))
    user = SENSITIVITY_USER.format(genes=join_genes(genes), drug=drug, labels_or=" or ".join(labels))
    return _messages(system, user, without(metadata, "drug"))


def sensitivity_dual_prompt(
    visible_genes: Genes,
    drug: str,
    sensitivity: str,
    n_hidden: int,
    metadata: Mapping[str, object] | None = None,
) -> Messages:
    """(c_obs, drug, predicted sensitivity) -> hidden genes."""
    conditions = [CONDITION_DRUG.format(drug=drug), CONDITION_SENSITIVITY.format(sensitivity=sensitivity)]
    return inpainting_prompt(conditions, visible_genes, n_hidden, without(metadata, "drug"))


def perturbation_prompt(
    pre_genes: Genes, drug: str, n_genes: int, metadata: Mapping[str, object] | None = None
) -> Messages:
    """(pre-treatment cell, drug) -> post-treatment cell sentence."""
    user = PERTURBATION_USER.format(pre=join_genes(pre_genes), drug=drug, n_genes=int(n_genes))
    return _messages(PERTURBATION_SYSTEM, user, without(metadata, "drug"))


def perturbation_dual_prompt(
    post_genes: Genes,
    pre_genes: Genes,
    candidates: Sequence[str] | None = None,
    metadata: Mapping[str, object] | None = None,
) -> Messages:
    """(post cell, pre cell) -> drug (optionally from ``candidates``); the drug is kept out of the context."""
    fields = {"pre": join_genes(pre_genes), "post": join_genes(post_genes)}
    if candidates:
        user = PERTURBATION_DUAL_USER_CANDIDATES.format(candidates=_bullets(candidates), **fields)
    else:
        user = PERTURBATION_DUAL_USER.format(**fields)
    return _messages(PERTURBATION_DUAL_SYSTEM, user, without(metadata, "drug"))


def cellpuzzles_user_message(
    cells: Sequence[Genes],
    candidates: Sequence[str],
    metadata: Mapping[str, object] | None = None,
    extra_context: Sequence[str] = (),
) -> str:
    """Cell-o1's user message. The released context ends with a space before the blank line."""
    context = context_sentence(metadata, extra_context)
    lines = [
        CELLPUZZLES_CELL_LINE.format(index=i, genes=join_genes(genes, CELLPUZZLES_GENE_SEP))
        for i, genes in enumerate(cells, start=1)
    ]
    return CELLPUZZLES_USER.format(
        context=f"{context} " if context else "", cells="\n".join(lines), candidates=_bullets(candidates)
    )


def cellpuzzles_prompt(
    cells: Sequence[Genes],
    candidates: Sequence[str],
    metadata: Mapping[str, object] | None = None,
    extra_context: Sequence[str] = (),
) -> Messages:
    """N cells + N candidate types (give them shuffled) -> ' | '-separated assignment, Cell-o1 format."""
    if len(cells) != len(candidates):
        raise ValueError(f"CellPuzzles needs as many candidates as cells; got {len(cells)} cells, {len(candidates)}")
    return [
        {"role": "system", "content": CELLPUZZLES_SYSTEM},
        {"role": "user", "content": cellpuzzles_user_message(cells, candidates, metadata, extra_context)},
    ]


def format_answer(think: str, answer: str) -> str:
    """A response in the required format (for SFT targets and tests)."""
    return f"<think>{think}</think>\n<answer>{answer}</answer>"
