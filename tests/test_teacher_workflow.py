"""The teacher rule through real Snakemake with an API teacher (the fake OpenAI server), end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fake_llm_server import FakeLLMServer, Fault

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-WORKFLOW-LEAKCHECK-9f8e7d6c5b4a"


@pytest.mark.slow
def test_teacher_rule_with_an_api_teacher(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"] = {"pbmc68k": config["datasets"]["pbmc68k"]}
    config["tasks"] = {"annotation": ["pbmc68k"], "generation": [], "sensitivity": [], "perturbation": [],
                       "cellpuzzles": []}
    with FakeLLMServer(latency_s=0.01) as server:
        server.faults[:] = [Fault("429", retry_after_ms=20), Fault("500")]
        config["teacher"].update(provider="openai", base_url=server.url + "/v1", api_key_env="WF_TEACHER_KEY",
                                 max_prompts=12, n_samples=2, backoff_s=0.01, dual_answers="teacher")
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "sft_data", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "--resources", "teacher_api=1"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                env=os.environ | {"WF_TEACHER_KEY": KEY})
        assert result.returncode == 0, result.stderr[-3000:]
        assert {r["api_key"] for r in server.requests} == {KEY}
    stats = json.loads((tmp_path / "results" / "sft" / "annotation" / "pbmc68k.stats.json").read_text())
    assert stats["provider"] == "openai" and stats["primal"]["prompts"] == 12
    assert stats["usage"]["retries"] == 2 and stats["usage"]["failed_requests"] == 0
    sft = pd.read_parquet(tmp_path / "results" / "sft" / "annotation" / "pbmc68k.parquet")
    assert sft["accepted"].any() and set(sft["model"]) == {"gpt-4o"}
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == [] and KEY not in result.stdout + result.stderr
