"""Reruns are exactly right (README, "Reproducibility audits"): on a completed run of the data and task stages,
each change reruns exactly the jobs that depend on it, `-n` and `--summary` agree, and a copied project
folder is still complete. The project is copied to a temporary folder, so its library code can be edited."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ci_config

ROOT = Path(__file__).resolve().parents[1]
TARGET = "tasks"  # downloads, preprocessing, cell sentences and every task table


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--configfile=config/run.yaml", "--cores", "2", *args]
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600)


def planned(project: Path) -> dict[str, int]:
    """``{rule: jobs}`` of a dry run of TARGET."""
    import re

    result = run(project, "-n", TARGET)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if m[0] not in ("total", TARGET)}


def write_run_config(project: Path, reverse: bool = False) -> None:
    config = ci_config()
    config["datasets"]["pbmc68k"]["source"] = "local/pbmc68k.h5ad"  # a local-path source

    def order(value):
        if isinstance(value, dict):
            keys = sorted(value, reverse=reverse)
            return {k: order(value[k]) for k in keys}
        return value

    (project / "config" / "run.yaml").write_text(yaml.safe_dump(order(config), sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from cellduality.data.builtin import pbmc68k_reduced

    project = tmp_path_factory.mktemp("rerun") / "project"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file() or src.is_symlink():
            dest = project / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest, follow_symlinks=False)
    (project / "local").mkdir()
    # the builtin's file, as its download writes it: with the cells' identity (obs source_dataset / source_cell),
    # which puts each cell in the split it has in pbmc_perturb and in the golden run
    pbmc68k_reduced().write_h5ad(project / "local" / "pbmc68k.h5ad")
    write_run_config(project)
    result = run(project, TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    return project


def test_nothing_to_do_twice_and_summary_agrees(project):
    assert planned(project) == {}
    assert planned(project) == {}
    summary = run(project, "--summary", TARGET)
    assert summary.returncode == 0, summary.stderr[-2000:]
    rows = [line.split("\t") for line in summary.stdout.splitlines()[1:] if "\t" in line]
    assert len(rows) >= 5 + 3 * 4  # task tables; per dataset raw, sha256, h5ad, QC, sentences, summary
    assert all(row[-2:] == ["ok", "no update"] for row in rows), summary.stdout[:3000]


def test_touch_or_checkout_without_content_change_reruns_nothing(project):
    # code and workflow files only: data inputs keep Snakemake's modification-time trigger (hashing large data
    # files on every dry run costs too much), so a touched source file reruns its download
    for path in [*project.glob("workflow/scripts/*.py"), *project.glob("src/cellduality/**/*.py"),
                 *project.glob("rules/*.smk"), project / "Snakefile"]:
        os.utime(path)
    assert planned(project) == {}


def test_config_key_order_and_layout_rerun_nothing(project):
    write_run_config(project, reverse=True)
    text = (project / "config" / "run.yaml").read_text()
    (project / "config" / "run.yaml").write_text("# a comment\n" + text.replace(": ", ":   "))
    try:
        assert planned(project) == {}
    finally:
        write_run_config(project)


def test_library_edit_reruns_exactly_the_rules_that_run_it(project):
    prompts = project / "src" / "cellduality" / "tasks" / "prompts.py"
    original = prompts.read_text()
    prompts.write_text(original + "\n# an edit\n")
    try:
        jobs = planned(project)
        assert jobs == {"task_table": 5}, jobs  # not the download, preprocessing or cell sentences
        reason = run(project, "-n", TARGET)
        text = reason.stdout + reason.stderr
        assert text.count("reason: Params have changed") == 5 and text.count("now: 'library code ") == 5, text
    finally:
        prompts.write_text(original)
    assert planned(project) == {}  # the same content again: nothing to do
    data = project / "src" / "cellduality" / "data" / "cell_sentences.py"
    original = data.read_text()
    data.write_text(original + "\n# an edit\n")
    try:
        assert planned(project) == {"cell_sentences": 3, "task_table": 5}
    finally:
        data.write_text(original)


def test_replacing_a_local_source_reruns_from_the_download(project):
    import anndata as ad

    source = project / "local" / "pbmc68k.h5ad"
    backup = source.with_suffix(".bak")
    shutil.copy2(source, backup)
    adata = ad.read_h5ad(source)
    adata[:-10].copy().write_h5ad(source)
    try:
        assert planned(project) == {"download": 1, "convert": 1, "preprocess": 1, "cell_sentences": 1, "task_table": 3}
    finally:
        shutil.move(backup, source)


def test_a_copied_project_is_still_complete(project, tmp_path):
    copy = tmp_path / "moved project"
    shutil.copytree(project, copy, symlinks=True)
    assert planned(copy) == {}


def test_a_second_run_in_another_folder_gives_identical_tables(project):
    """Determinism: this project's cell-sentence tables and task tables (another folder, another run, the
    pbmc68k source read from a local copy) are byte-for-byte the golden ones of tests/golden_digests.json."""
    import json

    from golden_digests import GOLDEN, digests

    golden = json.loads(GOLDEN.read_text())
    found = {k: v for k, v in digests(project / "results").items() if not k.startswith("sft/")}
    assert found and found == {k: v for k, v in golden.items() if k in found}
    assert {k for k in golden if not k.startswith("sft/")} == set(found)
