"""The whole embedded pipeline through real Snakemake, once (data -> teacher -> SFT -> GRPO -> evaluation ->
report): outputs, a no-op rerun, and param changes that rerun only what depends on them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ci_config

from cellduality.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    assert result.returncode == 0, result.stderr + result.stdout
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if m[0] != "total"}


def write_config(workdir: Path, **changes) -> dict:
    config = ci_config()
    config["results_dir"] = str(workdir / "results")  # absolute, with a space: every shell rule must quote it
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf with space")
    write_config(workdir)
    result = snakemake(workdir)  # the default target: the full embedded pipeline, as README's main command
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


SFT_DATA_JOBS = ("teacher", "sft_data")


def test_data_stage_outputs(data_run):
    table = pd.read_parquet(data_run / "results" / "cell_sentences" / "pbmc68k.parquet")
    assert len(table) == 700
    assert list(table.columns[:5]) == ["cell_id", "dataset", "split", "sentence", "n_genes"]
    assert {"cell_type", "tissue", "disease"} <= set(table.columns)
    assert set(table["split"]) == {"train", "test"}
    assert 0.1 < (table["split"] == "test").mean() < 0.3
    lengths = table["sentence"].str.split().str.len()
    assert (lengths == table["n_genes"]).all() and lengths.max() == 32
    assert (data_run / "results" / "raw" / "pbmc68k.sha256").read_text().split()[0].isalnum()
    assert (data_run / "results" / "logs" / "cell_sentences" / "pbmc68k.log").exists()


def test_task_tables_are_built_for_configured_tasks(data_run):
    for task in ("annotation", "generation", "cellpuzzles"):
        table = pd.read_parquet(data_run / "results" / "tasks" / task / "pbmc68k.parquet")
        assert set(table["task"]) == {task}
        assert set(table["stage"]) == {"sft", "rl", "eval"}
        assert (table.loc[table["stage"] == "rl", "answer"] == "").all()  # RL prompts carry no answers


def test_teacher_sft_data_is_built(data_run):
    import json

    from cellduality.teacher.runner import TeacherSettings

    config = yaml.safe_load((data_run / "config.yaml").read_text())
    n_samples = TeacherSettings.from_config(config).n_samples  # the schema default where the config is silent
    for task, names in config["tasks"].items():
        for name in names:
            sft = pd.read_parquet(data_run / "results" / "sft" / task / f"{name}.parquet")
            stats = json.loads((data_run / "results" / "sft" / task / f"{name}.stats.json").read_text())
            assert set(sft["task"]) == {task} and sft["accepted"].any(), task
            assert stats["primal"]["samples_received"] == stats["primal"]["prompts"] * n_samples
            assert 0 < stats["primal"]["acceptance_rate"] < 1, task
    assert (data_run / "results" / "logs" / "teacher" / "annotation" / "pbmc68k.log").exists()


def test_teacher_reruns_only_for_output_settings(data_run):
    config = write_config(data_run, teacher__concurrency=3, teacher__max_retries=1)  # operational only
    assert planned_jobs(snakemake(data_run, "-n")) == {}
    n_tables = sum(len(names) for names in config["tasks"].values())
    write_config(data_run, filtering__rwjs_threshold=0.2)
    assert planned_jobs(snakemake(data_run, "-n", "sft_data")) == {"teacher": n_tables, "sft_data": 1}
    write_config(data_run)


def test_second_dry_run_has_nothing_to_do(data_run):
    assert planned_jobs(snakemake(data_run, "-n")) == {}


def test_configfile_with_equals_sign_takes_a_target(data_run):
    """`--configfile=x.yaml TARGET` (the README's form): with a space, Snakemake's --configfile would swallow
    TARGET as a second config file."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(data_run), "-n",
           f"--configfile={data_run / 'config.yaml'}", str(data_run / "results" / "report" / "tables.md")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert planned_jobs(result) == {}


def test_param_change_reruns_only_dependants(data_run):
    config = write_config(data_run, inpainting__hidden_fraction=0.5)
    n_datasets = len(config["datasets"])
    n_tables = sum(len(names) for names in config["tasks"].values())
    # the teacher's SFT data depends on the task tables (rule teacher, rules/teacher.smk)
    assert planned_jobs(snakemake(data_run, "-n", "sft_data")) == {"task_table": n_tables, "teacher": n_tables,
                                                                   "sft_data": 1}
    write_config(data_run, cell_sentence__top_k=16)
    assert planned_jobs(snakemake(data_run, "-n", "sft_data")) == {"cell_sentences": n_datasets,
                                                                   "task_table": n_tables, "teacher": n_tables,
                                                                   "sft_data": 1}
    write_config(data_run, preprocess__min_genes=20)
    assert planned_jobs(snakemake(data_run, "-n", "data")) == {"preprocess": n_datasets, "cell_sentences": n_datasets,
                                                                 "data": 1}
    # a GRPO setting reruns GRPO and what evaluates it, never the data, teacher or SFT
    write_config(data_run, grpo__learning_rate=5e-5)
    assert planned_jobs(snakemake(data_run, "-n")) == {"grpo": 2, "predict": 2, "evaluate": 2, "report_tables": 1,
                                                       "report_figures": 1, "all": 1}
    write_config(data_run)
    assert planned_jobs(snakemake(data_run, "-n")) == {}


def test_pipeline_reaches_the_report(data_run):
    results = data_run / "results"
    metrics = pd.read_csv(results / "report" / "results.tsv", sep="\t")
    config = load_config(data_run / "config.yaml")  # schema defaults filled where the config is silent
    assert set(metrics["model"]) >= {*config["evaluation"]["variants"], "logreg", "knn"}
    assert set(metrics["task"]) == {t for t, names in config["tasks"].items() if names}
    errors = metrics[metrics.metric == "format_error_rate"].pivot_table(index=["task", "dataset", "split"],
                                                                         columns="model", values="value")
    # SFT teaches the answer format: fewer format errors than the untrained base model on at least one task
    assert (errors["sft"] < errors["base"]).any(), errors[["base", "sft"]]
    for name in ("confusion_matrices.png", "reward_curves.png", "umap_generated_vs_real.png", "tables.html"):
        assert (results / "report" / name).stat().st_size > 1000
    # the config holds CellPuzzles back to a second SFT phase: both phases ran, with their configured steps
    history = json.loads((results / "models" / "sft" / "rep0" / "log_history.json").read_text())
    steps = {phase: max(e["step"] for e in history if e["phase"] == phase) for phase in ("phase1", "phase2")}
    assert steps == {"phase1": config["sft"]["max_steps"], "phase2": config["sft"]["second_phase_steps"]}
    curve = pd.read_csv(results / "models" / "grpo_duality" / "rep0" / "reward_curve.tsv", sep="\t")
    assert len(curve) == config["grpo"]["max_steps"] and curve["reward"].between(-1, 1).all()
    # the ceiling of every task duality GRPO trains: generation (its own check) and annotation (true label wins)
    ceiling = pd.read_csv(results / "report" / "ceiling.tsv", sep="\t").set_index("task")
    assert sorted(ceiling.index) == ["annotation", "generation"] and (ceiling["samples"] >= 1).all()
    assert ceiling[["policy_accuracy", "kl_optimum_accuracy"]].stack().between(0, 1).all()
    assert (ceiling["beta"] == config["grpo"]["beta"]).all()
    # what the report measured: CIs beside accuracies, chance rows, the CellPuzzles table, the protocol
    assert {"accuracy_ci_low", "accuracy_ci_high", "knn_acc_k5_ci_low"} <= set(metrics["metric"])
    unknown = metrics[metrics["metric"] == "unknown_word_fraction"]  # words of generated cells that are no gene
    assert set(unknown["task"]) == {"generation", "perturbation"} and unknown["value"].between(0, 1).all()
    assert "chance" in set(metrics["model"])
    tables = (results / "report" / "tables.md").read_text()
    assert tables.startswith("How these numbers were measured") and "**CellPuzzles (Cell-o1 metrics).**" in tables
    signal = pd.read_csv(results / "report" / "true_label_wins.tsv", sep="\t")
    assert signal["n_cells"].iloc[0] == config["diagnostics"]["true_label_wins_cells"]
    # the SFT model's own accuracy on the same cells, and the win rate split by it, sit beside the win rate
    row = signal.iloc[0]
    assert 0 <= row["policy_accuracy"] <= 1 and row["wins"] <= row["n_cells"]
    right, wrong = row["win_rate_policy_right"], row["win_rate_policy_wrong"]
    expected = sum(rate * share for rate, share in ((right, row["policy_accuracy"]), (wrong, 1 - row["policy_accuracy"]))
                   if pd.notna(rate))
    assert abs(expected - row["win_rate"]) < 1e-9, row.to_dict()
    report = data_run / "report.html"
    result = snakemake(data_run, "--report", str(report))
    assert result.returncode == 0, result.stderr[-2000:]
    assert report.stat().st_size > 10_000


def test_config_typo_fails_before_running(tmp_path):
    write_config(tmp_path, cell_sentence__topk=3)
    result = snakemake(tmp_path, "data")
    assert result.returncode != 0
    assert "unknown key 'cell_sentence.topk'; did you mean 'top_k'?" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "results").exists()


def test_an_empty_results_dir_fails_before_planning(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "results_dir": ""}))
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "results_dir '' would put every output at the file-system root" in result.stderr


def test_bad_label_column_is_one_line_and_leaves_no_output(tmp_path):
    config = write_config(tmp_path)
    config["datasets"]["pbmc68k"]["labels"]["cell_type"] = "celltype_typo"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "data")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("cellduality error")]
    assert len(lines) == 1 and "obs column 'celltype_typo', which does not exist" in lines[0]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "results" / "raw" / "pbmc68k.download").exists()  # earlier work kept
    assert list((tmp_path / "results" / "processed").glob("pbmc68k*")) == []  # nothing half-written


def test_slurm_profile_parses_and_plans_the_data_stage(tmp_path):
    write_config(tmp_path)
    # --sdm env-modules: this machine has no conda; the profile itself asks for conda envs
    result = snakemake(tmp_path, "-n", "data", "--profile", str(ROOT / "profiles" / "slurm"), "--sdm", "env-modules")
    n = len(yaml.safe_load((tmp_path / "config.yaml").read_text())["datasets"])
    assert planned_jobs(result) == {"download": n, "convert": n, "preprocess": n, "cell_sentences": n, "data": 1}


def test_paper_run_asks_slurm_for_the_configured_gpus():
    """With the SLURM profile, training jobs get training.gpus (8 in config/paper.yaml) and its memory, and the
    generation jobs one GPU: the profile sets no per-rule resources that would override the config."""
    from cellduality.doctor import dry_run_resources  # the dry run `cellduality doctor` checks requests with

    resources = dry_run_resources(ROOT / "Snakefile", ROOT / "profiles" / "slurm", ROOT / "config" / "paper.yaml")
    for rule in ("sft", "grpo"):
        assert resources[rule]["gpu"] == "8" and resources[rule]["mem_mb"] == "256000", resources[rule]
    for rule in ("predict", "true_label_wins"):
        assert resources[rule]["gpu"] == "1" and resources[rule]["mem_mb"] == "32000", resources[rule]
    for rule in ("sft", "grpo", "predict", "true_label_wins"):
        assert resources[rule]["runtime"] == "2880", resources[rule]  # training.runtime, minutes
    for rule in ("convert", "preprocess", "cell_sentences", "task_table"):  # data rules ask for no GPU
        assert resources[rule].get("gpu", "0") == "0" and int(resources[rule]["runtime"]) <= 240, resources[rule]


def test_paper_table6_layer_reuses_the_sciplex3_download(tmp_path):
    """config/paper_table6.yaml over config/paper.yaml: only the three Table 6 datasets are built, and the
    in-distribution sci-Plex3 entry converts the sciPlex3 download instead of downloading it again."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p", "all",
           "--profile", str(ROOT / "profiles" / "slurm"), "--sdm", "env-modules", "--configfile",
           str(ROOT / "config" / "paper.yaml"), str(ROOT / "config" / "paper_table6.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    downloads = set(re.findall(r"output: results/table6/raw/([\w-]+)\.download", text))
    converted = set(re.findall(r"output: results/table6/converted/([\w-]+)\.h5ad", text))
    assert downloads == {"He-2020-Liver", "GSE149383", "sciPlex3"}
    assert converted == {"He-2020-Liver", "GSE149383", "sciPlex3-ID"}
    assert "input: results/table6/raw/sciPlex3.download" in text
    assert "results/table6/raw/He-2020-Liver.obs_table" in text  # the AHCA annotation table


def test_deterministic_stages_match_the_golden_digests(data_run):
    """Cell sentences, task tables and SFT data are byte-for-byte what they were when tests/golden_digests.json
    was written (refactors must not change behaviour; see tests/golden_digests.py to update it on purpose)."""
    import json

    from golden_digests import GOLDEN, digests

    assert digests(data_run / "results") == json.loads(GOLDEN.read_text())


def test_ablation_target_runs_its_arms_and_controls(data_run):
    """`snakemake ablation` in the DAG: the shuffled negative control trains beside the duality and oracle arms the
    default target already trained (reused, not retrained), and ablation.tsv holds every arm's paired statistics
    for each task with a pre-stated primary metric (tests/ci_config.yaml: one seed)."""
    config = load_config(data_run / "config.yaml")
    plan = planned_jobs(snakemake(data_run, "-n", "ablation"))
    assert plan == {"grpo": 1, "predict": 1, "ablation": 1}, plan  # only the shuffled arm is new
    result = snakemake(data_run, "ablation")
    assert result.returncode == 0, result.stderr[-3000:]
    from cellduality.evaluation.ablation import ABLATION_COLUMNS

    table = pd.read_csv(data_run / "results" / "report" / "ablation.tsv", sep="\t")
    assert tuple(table.columns) == ABLATION_COLUMNS
    primary = config["ablation"]["primary_metric"]
    ablated = {t for t in config["tasks"] if config["tasks"][t] and t in primary}
    assert set(table["task"]) == ablated
    guards = config["ablation"]["guard_metrics"]
    for task, rows in table.groupby("task"):
        assert set(rows["metric"]) == {primary[task], *guards.get(task, [])}
        assert {"sft", "grpo_duality", "grpo_oracle", "grpo_shuffled"} <= set(rows["arm"]), rows
    sft = table[table["arm"] == "sft"]
    assert (sft["delta_vs_sft"].abs() < 1e-12).all() and (table["n_seeds"] == 1).all() and (table["n_items"] > 0).all()
    assert (table["ci_low"] <= table["mean"] + 1e-12).all() and (table["mean"] <= table["ci_high"] + 1e-12).all()
    assert (data_run / "results" / "report" / "ablation.png").stat().st_size > 1000
