"""benchmarks/gpu_smoke.py can fail: a stage cut short or without a well-formed answer ends it with one FAIL line,
and its figures come back as a per-stage table (the GPU run itself needs a GPU; --allow-cpu runs it on a CPU)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_stage_cut_short_fails(smoke):
    smoke.reached("SFT", 100, 150)  # two thirds of the plan: fine
    with pytest.raises(SystemExit, match=r"gpu_smoke: FAIL: SFT stopped after 11 of 150 planned steps"):
        smoke.reached("SFT", 11, 150)


def test_cpu_sizes_have_no_time_budget_to_cut_sft(smoke):
    assert smoke.SIZES["cpu"]["sft_seconds"] is None


def test_per_stage_table(smoke):
    figures = {"sft_wall": {"value": 12.5}, "sft_tokens_per_s": {"value": 900.0}, "sft_peak_mem": {"value": 1.2},
               "predict_wall": {"value": 3.0}, "total_wall": {"value": 20}}
    lines = smoke.stage_table(figures).splitlines()
    assert lines[0].split() == ["stage", "wall", "s", "tokens/s", "peak", "GiB"]
    assert lines[1].split() == ["sft", "12.5", "900.0", "1.2"] and lines[2].split() == ["predict", "3.0", "-", "-"]
