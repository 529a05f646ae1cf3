"""`cellduality doctor` (src/cellduality/doctor.py): its parsers, and its checks against fake `sinfo`, `sacct` and
`conda` programs put first on PATH (there is no SLURM here). The real dry run of config/paper.yaml with
profiles/slurm runs once for the module."""

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from cellduality import doctor

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
FITS = "cpu* 64 512000 (null)\ngpu 128 1024000 gpu:h100:8(S:0-1)\ngpu 64 512000 gpu:h100:4\n"
SACCT_WORKS = "echo 'slurm 23.11.4'"
NO_SLURMDBD = "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1"


@pytest.fixture(scope="module")
def paper_resources():
    return doctor.dry_run_resources(ROOT / "Snakefile", PROFILE, ROOT / "config" / "paper.yaml")


@pytest.fixture
def cluster(tmp_path, monkeypatch, capsys, paper_resources):
    """``cluster(*args, sinfo=..., sacct=..., conda=...)`` -> (exit status, output lines) of the doctor, with fake
    programs (a shell body, or None for a missing one) first on PATH and the module's dry run."""
    monkeypatch.setattr(doctor, "dry_run_resources", lambda *args, **kwargs: paper_resources)
    cat = shutil.which("cat")  # before PATH loses the folders that hold a real sinfo (often /usr/bin, with cat)
    fakes = tmp_path / "bin"
    fakes.mkdir()
    path = [d for d in os.environ["PATH"].split(os.pathsep)
            if d and not any((Path(d) / name).exists() for name in ("sinfo", "sacct", "squeue", "conda", "mamba"))]
    monkeypatch.setenv("PATH", os.pathsep.join([str(fakes), *path]))

    def run(*args, sinfo=FITS, sacct=SACCT_WORKS, conda="exit 0", cli=False):
        for name, body in {"sinfo": sinfo and f"{cat} <<'EOF'\n{sinfo}EOF", "sacct": sacct, "conda": conda}.items():
            if body is not None:
                (fakes / name).write_text(f"#!/bin/bash\n{body}\n")
                (fakes / name).chmod(0o755)
        argv = ["--profile", str(PROFILE), f"--configfile={ROOT / 'config' / 'paper.yaml'}",
                "--snakefile", str(ROOT / "Snakefile"), *args]
        if cli:  # the console entry point, in a fresh process
            done = subprocess.run([sys.executable, "-m", "cellduality.cli", "doctor", *argv], capture_output=True,
                                  text=True, timeout=120, cwd=ROOT)
            return done.returncode, done.stdout.splitlines()
        rc = doctor.main(argv)
        return rc, capsys.readouterr().out.splitlines()

    return run


@pytest.mark.parametrize("gres, gpus", [("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("(null)", 0),
                                        ("gpu:h100:8,shard:4", 8), ("gpu:a100:2(S:0),gpu:v100:1(S:1)", 3)])
def test_gres_gpus(gres, gpus):
    assert doctor.gres_gpus(gres) == gpus


def test_parse_sinfo_marks_the_default_partition():
    partitions, default = doctor.parse_sinfo(FITS + "\n")
    assert default == "cpu"
    assert partitions == {"cpu": [doctor.Node(0, 512000, 64)],
                          "gpu": [doctor.Node(8, 1024000, 128), doctor.Node(4, 512000, 64)]}


def test_rule_resources_keeps_the_largest_request_and_skips_rules_without_output():
    text = ("Building DAG of jobs...\n\n[Mon Nov 30]\nrule prep:\n    output: a\n    resources: tmpdir=/tmp, "
            "mem_mb=4000, disk=50 GB, slurm_extra='--qos=x, y'\n\n[Mon Nov 30]\nrule prep:\n    output: b\n"
            "    resources: tmpdir=/tmp, mem_mb=16000, disk=<TBD>\n\nlocalrule all:\n    input: a, b\n"
            "    resources: mem_mb=8000\n")
    assert doctor.rule_resources(text) == {"prep": {"tmpdir": "/tmp", "mem_mb": "16000", "disk": "50 GB",
                                                    "slurm_extra": "'--qos=x, y'"}}


def test_requests_go_to_their_partition():
    resources = {"sft": {"gpu": "2", "mem_mb": "1000", "cpus_per_task": "4", "slurm_partition": "gpu"},
                 "prep": {"mem_mb": "1000"}, "download": {"mem_mb": "9999999"}}
    partitions, default = doctor.parse_sinfo(FITS)
    checks = doctor.check_requests(resources, partitions, default, local={"download"})
    assert [c.status for c in checks] == ["ok"], checks
    unknown = doctor.check_requests(resources, partitions, default, partition="gpux", local={"download"})
    assert [(c.status, "rules prep, sft would go to partition gpux" in c.message) for c in unknown] == [("FAIL", True)]


def test_local_rules_of_the_workflow():
    local = doctor.local_rules(ROOT / "Snakefile")
    assert {"download", "teacher", "sft_data"} <= local and "sft" not in local


def test_plugin_missing_or_too_old(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(doctor.metadata, "version", missing)
    check = doctor.check_plugin()
    assert check.status == "FAIL" and 'pip install "snakemake-executor-plugin-slurm>=2.7.1"' in check.message
    monkeypatch.setattr(doctor.metadata, "version", lambda name: "2.6.0")
    assert doctor.check_plugin().status == "FAIL"


def test_minimum_plugin_is_the_pyproject_pin():
    pin = f"{doctor.PLUGIN}>={doctor.MIN_PLUGIN}"
    assert pin in (ROOT / "pyproject.toml").read_text() and pin in (PROFILE / "config.yaml").read_text()


def test_squeue_profile_needs_no_sacct():
    assert doctor.check_accounting(PROFILE, {"slurm-status-command": "squeue"}).status == "ok"


def test_everything_fits(cluster, paper_resources):
    assert paper_resources["sft"]["gpu"] == "8"  # the real dry run of config/paper.yaml
    rc, lines = cluster("--partition", "gpu")
    assert rc == 0 and len(lines) == 4 and all(line.startswith("ok ") for line in lines), lines
    assert "partition gpu has a node for every request (largest: 8 GPUs, 256000 MB, 32 CPUs)" in lines[-1]


def test_request_too_large_fails_per_rule(cluster):
    rc, lines = cluster(sinfo="gpu* 32 512000 gpu:a100:4\n")
    failed = [line for line in lines if line.startswith("FAIL")]
    assert rc == 1 and len(failed) == 2, lines  # sft and grpo ask 8 GPUs; predict and true_label_wins 1
    assert failed[0].startswith("FAIL requests: rule grpo asks 8 GPUs, 256000 MB, 32 CPUs; nodes of partition "
                                "gpu have at most 4 GPUs, 512000 MB, 32 CPUs: lower training.gpus")
    assert "rule sft asks 8 GPUs" in failed[1]


def test_gpu_rules_on_a_partition_without_gpus_warn(cluster):
    rc, lines = cluster()  # the default partition is cpu
    assert rc == 0 and any(line.startswith("warn GPU partition: rules ceiling, grpo, predict, sft, true_label_wins ask for "
                                           "GPUs but partition cpu has none (partitions with GPUs: gpu)")
                           for line in lines), lines


def test_sacct_without_accounting_advises_squeue(cluster):
    rc, lines = cluster("--partition", "gpu", sacct=NO_SLURMDBD)
    assert rc == 0
    assert (f"warn accounting: sacct does not work here (sacct: error: Slurm accounting storage is disabled); "
            f"add `--slurm-status-command squeue` (or uncomment `slurm-status-command: squeue` in "
            f"{PROFILE / 'config.yaml'}) or jobs will hang after they finish") in lines


def test_conda_missing_fails_with_the_alternatives(cluster):
    rc, lines = cluster("--partition", "gpu", conda=None)
    [line] = [line for line in lines if line.startswith("FAIL")]
    assert rc == 1 and line.startswith("FAIL deployment: the software-deployment-method is conda but conda "
                                       "is not on PATH")
    assert "`--sdm env-modules`" in line and 'pip install -e ".[test]"' in line and "envs/*.yaml" in line


def test_sinfo_missing_skips_the_request_check(cluster):
    rc, lines = cluster(sinfo=None, cli=True)
    assert rc == 0 and lines[-1] == "warn requests: not on a SLURM submit host; request check skipped", lines


def test_the_runs_own_flags_override_the_profile(cluster):
    """A run that passes --sdm env-modules and --slurm-status-command squeue needs neither conda nor sacct."""
    rc, lines = cluster("--partition", "gpu", "--sdm", "env-modules", "--slurm-status-command", "squeue",
                        sacct=NO_SLURMDBD, conda=None)
    assert rc == 0 and all(line.startswith("ok ") for line in lines), lines
    assert "ok   deployment: software-deployment-method env-modules" in lines
    assert any(line.startswith("ok   accounting: job status is queried with squeue") for line in lines)


def test_every_target_that_submits_jobs_is_checked(paper_resources):
    """The module's dry run plans all, ablation and annotations: the ablation's own jobs are checked too."""
    assert {"ablation", "sft", "grpo", "predict"} <= set(paper_resources)


@pytest.mark.parametrize("failures, message, ok", [
    (2, "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)", True),
    (99, "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)", False),
    (1, "E: Unable to locate package slurm-wlm", False),
])
def test_slurm_up_waits_for_the_package_lock(tmp_path, failures, message, ok):
    """.ci/slurm-up's apt_get retries while another apt holds the lock (up to APT_LOCK_WAIT), and fails at once on
    any other error."""
    fake = tmp_path / "apt-get"
    count = tmp_path / "count"
    fake.write_text(f"#!/bin/bash\nn=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n"
                    f"[ \"$n\" -ge {failures} ] && exit 0\necho '{message}' >&2; exit 100\n")
    fake.chmod(0o755)
    script = f"source {ROOT / '.ci' / 'apt-wait.sh'}; apt_get install -y slurm-wlm"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "APT_LOCK_POLL": "0.05", "APT_LOCK_WAIT": "1"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) == ok, done.stderr
    calls = int(count.read_text())
    assert calls == (failures + 1 if ok else 1 if "Unable" in message else calls)
    if not ok and "lock" in message:
        assert 2 < calls < 99  # it waited, then gave up after APT_LOCK_WAIT
