"""`--profile profiles/slurm` on a real SLURM scheduler: the embedded data stage through the slurm executor,
a failing job reported as a failure, and `--retries`.

Needs a running cluster (skipped otherwise, e.g. in the default CI run):
    bash .ci/slurm-up && python -m pytest -m slurm tests/test_slurm.py
The cluster has no slurmdbd, so job status comes from squeue (`--slurm-status-command squeue`, MinJobAge=600
in the slurm.conf written by .ci/slurm-up); this machine has no conda, so `--sdm env-modules` replaces the
profile's conda (no rule declares env modules: jobs run in the submitting Python environment)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ci_config

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900  # one snakemake run; the data stage takes ~1 min here


def _slurm_available() -> bool:
    if not (shutil.which("sbatch") and shutil.which("sinfo") and shutil.which("squeue")):
        return False
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in result.stdout.split())


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not _slurm_available(),
                       reason="no SLURM cluster (sbatch/sinfo); start one with: bash .ci/slurm-up"),
]


def write_config(workdir: Path, label_column: str = "bulk_labels") -> None:
    """The embedded default config cut to the pbmc68k dataset and no tasks (data stage only)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"] = {"pbmc68k": config["datasets"]["pbmc68k"]}
    config["datasets"]["pbmc68k"]["labels"] = {"cell_type": label_column}
    config["tasks"] = {}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake(workdir: Path, *args: str, target: str = "data", timeout: int = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--profile", str(ROOT / "profiles" / "slurm"), "--configfile", str(workdir / "config.yaml"),
           "--sdm", "env-modules",                      # no conda here
           "--slurm-status-command", "squeue",          # no slurmdbd here
           "--slurm-keep-successful-logs",              # so the test can read the logs of successful jobs
           "--slurm-init-seconds-before-status-checks", "5",  # default 40 s per job; only for speed
           *args, target]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                start_new_session=True)
    except subprocess.TimeoutExpired as exc:  # never hang: cancel the jobs this run left in the queue
        partial = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
        for run_id in re.findall(r"SLURM run ID: (\S+)", partial):
            subprocess.run(["scancel", "--name", run_id], capture_output=True, timeout=30)
        pytest.fail(f"snakemake on SLURM did not finish in {timeout}s: {partial[-2000:]}")
    runs = len(list(workdir.glob("snakemake.*.out")))
    (workdir / f"snakemake.{runs + 1}.out").write_text(result.stdout + result.stderr)  # kept for debugging
    return result


def slurm_job_ids(result: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """{rule: [SLURM job ids]} from snakemake's 'Job N has been submitted with SLURM jobid M (log: ...)'."""
    jobs: dict[str, list[str]] = {}
    for jobid, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/",
                                  result.stdout + result.stderr):
        jobs.setdefault(rule, []).append(jobid)
    return jobs


def slurm_logs(workdir: Path, rule: str) -> list[Path]:
    return sorted((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log"))


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=30).stdout
    return dict(line.split("|") for line in out.split())


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_ok")
    write_config(workdir)
    result = snakemake(workdir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return workdir, result


def test_data_stage_runs_through_slurm(data_run):
    workdir, result = data_run
    table = pd.read_parquet(workdir / "results" / "cell_sentences" / "pbmc68k.parquet")
    assert len(table) == 700 and table["sentence"].str.len().gt(0).all()
    assert (workdir / "results" / "processed" / "pbmc68k.qc.json").exists()
    assert (workdir / "results" / "raw" / "pbmc68k.sha256").exists()
    # convert, preprocess and cell_sentences went to SLURM; download and data are localrules (run by the submitter)
    jobs = slurm_job_ids(result)
    assert set(jobs) == {"convert", "preprocess", "cell_sentences"}, jobs
    assert slurm_logs(workdir, "preprocess") and slurm_logs(workdir, "cell_sentences")
    assert "--executor slurm-jobstep" in slurm_logs(workdir, "preprocess")[0].read_text()
    states = squeue_states([j for ids in jobs.values() for j in ids])  # MinJobAge=600 keeps them listed
    assert set(states.values()) == {"COMPLETED"}, states
    # a second run has nothing to do
    again = snakemake(workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize("retries, attempts", [(0, 1), (1, 2)])
def test_failing_job_is_reported_and_retried(tmp_path, retries, attempts):
    write_config(tmp_path, label_column="no_such_column")  # preprocess stops with one cellduality error line
    result = snakemake(tmp_path, "--retries", str(retries))
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-3000:]
    assert "Error in rule preprocess" in text
    jobs = slurm_job_ids(result)
    assert len(jobs.get("preprocess", [])) == attempts, jobs  # one SLURM job per attempt
    assert "cell_sentences" not in jobs
    logs = slurm_logs(tmp_path, "preprocess")
    assert len(logs) == attempts
    for log in logs:
        assert re.search(r"cellduality error.*no_such_column", log.read_text()), log.read_text()[-2000:]
    assert set(squeue_states(jobs["preprocess"]).values()) == {"FAILED"}
    assert not (tmp_path / "results" / "processed" / "pbmc68k.h5ad").exists()


LOCAL_RULES = {"download", "download_obs_table", "data", "teacher", "sft_data", "fetch_model", "push_to_hub"}


def test_whole_embedded_pipeline_runs_through_slurm(tmp_path):
    """The CI-sized embedded default, every stage, through the shipped profile on a node without GPUs: no
    resource override; every rule that is not a localrule runs as a SLURM job, and the report is written."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(ci_config()))
    result = snakemake(tmp_path, target="all", timeout=3000)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert (tmp_path / "results" / "report" / "results.tsv").exists()
    jobs = slurm_job_ids(result)
    planned = set(re.findall(r"^(?:local)?rule (\w+):", text, re.M)) - {"all"}
    assert planned - LOCAL_RULES == set(jobs), (planned, jobs)
    assert {"convert", "sft", "grpo", "predict", "evaluate", "report_tables"} <= set(jobs)
    states = squeue_states([j for ids in jobs.values() for j in ids])
    assert set(states.values()) == {"COMPLETED"}, states

