"""Lint is part of the test command: snakemake --lint, snakefmt --check and ruff (config in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_snakemake_lint_is_clean():
    result = run(sys.executable, "-m", "snakemake", "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("tool", ["snakefmt", "ruff"])
def test_formatters_and_linters_are_clean(tool):
    exe = shutil.which(tool)
    assert exe, f"{tool} is not installed; pip install -e '.[test]'"
    cmd = [exe, "--check", "Snakefile", "rules"] if tool == "snakefmt" else [exe, "check", "."]
    result = run(*cmd)
    assert result.returncode == 0, result.stdout + result.stderr
