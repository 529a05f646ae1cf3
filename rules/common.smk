# Shared set-up: make the library importable, load and validate the config, helpers for rules.
# Rule files (rules/<stage>.smk) hold rules only; their helper functions and path patterns live here.
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from cellduality.config import (
    apply_preset,
    check_stages,
    load_schema,
    validate_config,
    minimal_config_warning,
)
from cellduality.data.builtin import builtin_resource_files
from cellduality.data.download import DownloadSettings
from cellduality.data.preprocess import GENE_MAPS, PreprocessSettings
from cellduality.data.sentence_table import CellSentenceSettings, split_context
from cellduality.data.splits import SplitSettings
from cellduality.errors import CellDualityError, fail
from cellduality.evaluation.settings import (
    ABLATION_ARMS,
    AblationSettings,
    AnnotateSettings,
    EmbeddingSettings,
    EvaluationSettings,
)
from cellduality.provenance import audit_only, code_digest
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.settings import (
    CellPuzzlesSettings,
    TaskSettings,
    TaskTableSettings,
)
from cellduality.tasks.tables import check_catalog
from cellduality.teacher.filtering import FilterSettings
from cellduality.teacher.markers.knowledge import resource_files
from cellduality.teacher.runner import TeacherSettings, api_key, default_cache_path
from cellduality.training.hub import is_hub_id
from cellduality.training.settings import (
    DiagnosticsSettings,
    EmbeddedModelSettings,
    GRPOSettings,
    HubSettings,
    LoraSettings,
    ModelSettings,
    SFTSettings,
    TrainingSettings,
)

# Shell rules run `python -m cellduality.cli` with this checkout's library first on the path.
shell.prefix(
    f'set -euo pipefail; export PYTHONPATH="{workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
)

# --configfile replaces the default config (no merge, so the paper catalog never inherits the demo datasets)
if not workflow.overwrite_configfiles:
    _local = "config/config.yaml"
    _default = (
        _local if os.path.exists(_local) else os.path.join(workflow.basedir, _local)
    )

    configfile: _default


try:
    _preset = apply_preset(
        dict(config), os.path.join(workflow.basedir, "config"), source="config"
    )
    config.clear()
    config.update(_preset)
    if _warning := minimal_config_warning(config):
        print(f"cellduality warning: {_warning}", file=sys.stderr)
    validate_config(
        config,
        load_schema(os.path.join(workflow.basedir, "config", "schema.yaml")),
        source="config (--configfile / config/config.yaml)",
    )
    check_stages(config, source="config (--configfile / config/config.yaml)")
except CellDualityError as _err:
    fail(str(_err))


def _settings(cls):
    """The typed settings of one config section, built once here (its cross-field checks run before any job)."""
    try:
        return cls.from_config(config)
    except CellDualityError as err:
        fail(f"config: {err}")


# One typed, frozen settings object per config section (defaults from config/schema.yaml only). A rule records
# `<SECTION>.params()` as a param; its script or the console command rebuilds it with `from_params()`.
DOWNLOAD = _settings(DownloadSettings)
PREPROCESS = _settings(PreprocessSettings)
CELL_SENTENCE = _settings(CellSentenceSettings)
SPLITS = _settings(SplitSettings)
TASK_SETTINGS = _settings(TaskSettings)
INPAINTING = _settings(InpaintingSettings)
CELLPUZZLES = _settings(CellPuzzlesSettings)
TASK_TABLE = _settings(TaskTableSettings)
REWARDS = _settings(RewardSettings)
TEACHER = _settings(TeacherSettings)
FILTERING = _settings(FilterSettings)
MODEL = _settings(ModelSettings)
EMBEDDED_MODEL = _settings(EmbeddedModelSettings)
LORA = _settings(LoraSettings)
SFT = _settings(SFTSettings)
GRPO = _settings(GRPOSettings)
DIAGNOSTICS = _settings(DiagnosticsSettings)
TRAINING = _settings(TrainingSettings)
HUB_UPLOAD = _settings(HubSettings)
EVALUATION = _settings(EvaluationSettings)
EMBEDDING = _settings(EmbeddingSettings)
ANNOTATE = _settings(AnnotateSettings)
ABLATION = _settings(AblationSettings)
try:
    GRPO.check_processes(TRAINING.gpus)
    check_catalog(config, source="config")
except CellDualityError as _err:
    fail(f"config: {_err}")


def _canonical(value):
    """Dict keys sorted at every level: key order, YAML layout and comments never change a recorded param."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


_sorted_config = _canonical(dict(config))
config.clear()
config.update(_sorted_config)

RESULTS = config["results_dir"]
DATASETS = config["datasets"]
LOGS = f"{RESULTS}/logs"


def script_code(name):
    """Params value: digest of workflow/scripts/<name> and the library code it imports (content, not mtime:
    cellduality.provenance), so a code edit reruns exactly the rules that run it."""
    return code_digest([os.path.join(workflow.basedir, "workflow", "scripts", name)])


def cli_code(module):
    """Params value: digest of the library code a `python -m cellduality.cli` step runs."""
    return code_digest(
        [f"cellduality.{module}", "cellduality.snakemake_script"],
        shallow=["cellduality.cli"],
    )


def portable(path):
    """A path inside the working directory or the workflow folder, relative to the working directory (a
    moved or copied project records the same inputs); any other path absolute."""
    path = os.path.abspath(path)
    for root in (os.getcwd(), workflow.basedir):
        if path == root or path.startswith(root + os.sep):
            return os.path.relpath(path)
    return path


def _local_input(source):
    """A local source file (or a folder's files) as rule input (replacing one reruns what reads it); [] for
    URLs, which their sha256 checks instead, and for a missing file (the step's one-line error).
    """
    if "://" in source and not source.startswith("file://"):
        return []
    path = os.path.expanduser(source.removeprefix("file://"))
    if os.path.isdir(path):
        return sorted(
            portable(str(p))
            for p in Path(path).rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
    return [portable(path)] if os.path.isfile(path) else []


def source_files(wildcards):
    """Download inputs: the shipped files a builtin source reads, or a local source file itself."""
    source = DATASETS[wildcards.dataset]["source"]
    if source.startswith("builtin:"):
        return [portable(p) for p in builtin_resource_files(source)]
    return _local_input(source)


def gene_map_files(wildcards):
    """The table a dataset's gene_map names (a shipped one, or a local TSV), so replacing it reruns preprocess."""
    gene_map = DATASETS[wildcards.dataset].get("gene_map")
    if not gene_map:
        return []
    if gene_map in GENE_MAPS:
        return [portable(str(GENE_MAPS[gene_map]))]
    return _local_input(gene_map)


def obs_table_files(wildcards):
    return _local_input(DATASETS[wildcards.dataset]["obs_table"]["source"])


def obs_table_params(wildcards):
    table = DATASETS[wildcards.dataset]["obs_table"]
    return {
        "source": table["source"],
        "sha256": table["sha256"],
        "field": "obs_table.source",
    }


def convert_inputs(wildcards):
    """The downloaded file (of another catalog entry for a `dataset:<name>` source, which reuses its
    download) and the downloaded obs table when the entry has one."""
    name = wildcards.dataset
    source = DATASETS[name]["source"]
    origin = source.removeprefix("dataset:") if source.startswith("dataset:") else name
    inputs = {"raw": f"{RESULTS}/raw/{origin}.download"}
    if DATASETS[origin]["obs_table"]["source"]:
        inputs["obs_table"] = f"{RESULTS}/raw/{origin}.obs_table"
    return inputs


def dataset_params(*keys):
    """Params function: the named catalog fields of the wildcard's dataset (so edits rerun the rule)."""
    return lambda wildcards: {key: DATASETS[wildcards.dataset][key] for key in keys}


def split_context_params(wildcards):
    """Params function: the origin of the dataset's cells and the other datasets of the run that hold some of
    them out as OOD (cellduality.data.sentence_table.split_context)."""
    return split_context(wildcards.dataset, DATASETS, USED_DATASETS)


def ood_peer_files(wildcards):
    """The preprocessed files of those OOD peers (whose held-out cells are OOD in this dataset too)."""
    peers = split_context(wildcards.dataset, DATASETS, USED_DATASETS)["ood_peers"]
    return [f"{RESULTS}/processed/{peer}.h5ad" for peer in peers]


# ---------------------------------------------------------------- tasks (rules/tasks.smk)
TASKS = TASK_SETTINGS.configured()
# the catalog entries some task uses (all of them when no task is configured): what `data` and training build
USED_DATASETS = sorted({n for names in TASKS.values() for n in names}) or sorted(
    DATASETS
)
try:  # datasets that share cells must split them alike (cellduality.data.sentence_table.split_context)
    for _name in USED_DATASETS:
        split_context(_name, DATASETS, USED_DATASETS)
except CellDualityError as _err:
    fail(f"config: {_err}")


def task_table_inputs(wildcards):
    """The dataset's cell sentences; for a role adapt dataset also those of adapt_from (its label set)."""
    ds = DATASETS[wildcards.dataset]
    inputs = {"cells": f"{RESULTS}/cell_sentences/{wildcards.dataset}.parquet"}
    if ds["role"] == "adapt":
        inputs["candidates"] = f"{RESULTS}/cell_sentences/{ds['adapt_from']}.parquet"
    return inputs


# ---------------------------------------------------------------- teacher (rules/teacher.smk)
_MARKERS = TEACHER.provider == "markers"


def teacher_knowledge(wildcards):
    """The markers teacher's resource files (so editing them reruns it); nothing for API teachers."""
    if not _MARKERS:
        return []
    species = DATASETS[wildcards.dataset].get("species", "human")
    return [
        portable(p)
        for p in resource_files(os.path.join(workflow.basedir, "resources"), species)
    ]


# ---------------------------------------------------------------- training (rules/training.smk)
EMBEDDED = MODEL.embedded


# a hub model is fetched once into results/models/hub by the local rule fetch_model (compute nodes may be
# offline); a local folder is read where it is
HUB = is_hub_id(MODEL.source)
BASE_MODEL = (
    f"{RESULTS}/models/base"
    if EMBEDDED
    else (f"{RESULTS}/models/hub" if HUB else MODEL.source)
)
BUILT_MODEL = EMBEDDED or HUB  # BASE_MODEL is a rule's output


TASK_TABLES = [
    f"{RESULTS}/tasks/{task}/{name}.parquet"
    for task, names in TASKS.items()
    for name in names
]


ANNOTATION_TABLES = [
    t for t in TASK_TABLES if t.startswith(f"{RESULTS}/tasks/annotation/")
]
# what `cellduality annotate` needs to use a trained model on new cells (the model card, written next to each
# model by the training steps; cellduality.training.model_card)
MODEL_CARD = dict(
    preprocess=PREPROCESS.params(),
    cell_sentence=CELL_SENTENCE.params(),
    species=(
        DATASETS[TASKS["annotation"][0]].get("species", "human")
        if TASKS.get("annotation")
        else "human"
    ),
    source=dict(
        datasets=sorted(DATASETS),
        model=MODEL.source,
        annotation=TASKS.get("annotation", []),
    ),
)
# the README.md model card also names the data and their terms (catalog license, description): only in the
# unrecorded --files, so editing a description never retrains a model
CARD_DATA = {
    name: dict(
        license=DATASETS[name]["license"], description=DATASETS[name]["description"]
    )
    for name in USED_DATASETS
}


SFT_DATA = [  # role adapt datasets have no SFT stage: their cells are for duality GRPO only
    f"{RESULTS}/sft/{task}/{name}.parquet"
    for task, names in TASKS.items()
    for name in names
    if DATASETS[name]["role"] != "adapt"
]

# a paid teacher needs its API key before any job runs, unless its answers are all on disk already (a dry
# run only warns: an audit needs no key)
if not _MARKERS and not all(os.path.exists(p) for p in SFT_DATA):
    try:
        api_key(TEACHER)
    except CellDualityError as _err:
        if not audit_only(
            sys.argv
        ):  # workflow.dryrun is not known yet while the Snakefile is parsed
            fail(f"config: {_err}")
        print(f"cellduality warning: {_err}", file=sys.stderr)


# Training jobs get training.gpus (data-parallel); generation jobs one GPU (cellduality.cli never relaunches
# them on several). The SLURM profile sets no per-rule resources, so these are what sbatch asks for.
TRAINING_RESOURCES = dict(
    mem_mb=TRAINING.mem_mb,
    runtime=TRAINING.runtime,
    gpu=TRAINING.gpus,
    cpus_per_task=TRAINING.cpus_per_task,
)
GENERATION_RESOURCES = dict(
    mem_mb=max(TRAINING.mem_mb // max(TRAINING.gpus, 1), 8000),
    runtime=TRAINING.runtime,
    gpu=min(TRAINING.gpus, 1),
    cpus_per_task=TRAINING.cpus_per_task,
)


def cli_json(**values):
    """A `cellduality.cli` argument: settings objects as their `rerun_params()` (for --settings, which the rule
    records, so editing one reruns the step; fields that only say how a job runs are left out), anything else
    as is, as sorted JSON."""
    return json.dumps(
        {
            k: v.rerun_params() if hasattr(v, "rerun_params") else v
            for k, v in values.items()
        },
        sort_keys=True,
    )


REPLICATES = list(range(TRAINING.replicates))


def report_files(run_name):
    """Where a training step also sends its metrics (config training.report_to): results/logs/<report_to>/
    <run name>. Only in --files, never in --settings: changing it reruns nothing."""
    return {
        "report": TRAINING.report(LOGS, run_name).params(),
        "accelerate_config": TRAINING.accelerate_config,
    }


# ---------------------------------------------------------------- hub upload (rule push_to_hub)
def hub_model(wildcards):
    """push_to_hub's input: the trained model of hub.variant (replicate 0). Without hub.repo_id the
    target stops here with one line (only push_to_hub asks for it)."""
    if not HUB_UPLOAD.repo_id:
        fail(
            "config: hub.repo_id is not set; name the Hugging Face repository to upload to, "
            "e.g. --config hub='{repo_id: my-org/cellduality-pbmc}'"
        )
    return variant_model(SimpleNamespace(variant=HUB_UPLOAD.variant, rep=0))


# ---------------------------------------------------------------- evaluation (rules/evaluation.smk)
def variant_model(wildcards):
    """Model directory of an evaluated variant and replicate (nothing to build for a hub/base model path)."""
    if wildcards.variant == "base":
        return [BASE_MODEL] if BUILT_MODEL else []
    if wildcards.variant == "sft":
        return [rules.sft.output[0].format(rep=wildcards.rep)]
    reward = wildcards.variant.removeprefix("grpo_")
    return [rules.grpo.output.model.format(reward=reward, rep=wildcards.rep)]


def variant_replicates(variant):
    """Replicates of an evaluated variant: the untrained base model has one."""
    return [0] if variant == "base" else REPLICATES


def evaluated(pattern):
    """``pattern`` (with {variant} and {rep}) for every evaluated variant and replicate."""
    return [
        pattern.format(variant=v, rep=r)
        for v in EVALUATED
        for r in variant_replicates(v)
    ]


DATA_FILES = {
    name: {
        "h5ad": f"{RESULTS}/processed/{name}.h5ad",
        "sentences": f"{RESULTS}/cell_sentences/{name}.parquet",
    }
    for names in TASKS.values()
    for name in names
}


EVAL_INPUTS = dict(
    tables=TASK_TABLES,
    h5ad=[files["h5ad"] for files in DATA_FILES.values()],
    sentences=[files["sentences"] for files in DATA_FILES.values()],
)


EVALUATED = list(EVALUATION.variants)


GRPO_VARIANTS = [v for v in EVALUATED if v.startswith("grpo_")]


# the ceiling check runs before duality GRPO trains conditional generation (rule ceiling)
CEILING = "generation" in TASKS and (
    not GRPO.task_prompts or "generation" in GRPO.task_prompts
)


# the ablation (target ablation): SFT and three GRPO arms (ABLATION_ARMS), each on seeds 0..ablation.seeds-1
ABLATION_SEEDS = list(range(ABLATION.seeds))
