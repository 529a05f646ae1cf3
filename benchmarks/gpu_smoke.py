"""GPU smoke check of the training stage: SFT, GRPO (duality and oracle rewards) and predict on one GPU.

    bash benchmarks/gpu_smoke.sh [--allow-cpu]      (or: python benchmarks/gpu_smoke.py [--allow-cpu])

Builds everything locally (no network): the annotation task tables from scanpy's shipped pbmc68k_reduced (as
benchmarks/grpo_step.py does), then a Llama of ~35M parameters with the embedded tokenizer
(cellduality.training.tiny_model.build_tiny_model, saved in Hugging Face format and loaded back with
AutoModelForCausalLM like a hub model), SFT on the reference answers (cellduality.training.sft.run_sft), a few
GRPO steps with each reward (cellduality.training.grpo.run_grpo) and greedy answers to the eval prompts
(cellduality.evaluation.predict.predict). With more than one visible GPU, a two-process leg runs SFT through
the workflow's own command (``python -m cellduality.cli sft``, which relaunches itself under ``accelerate launch``
with one process per GPU). Fails (exit 1, one ``gpu_smoke: FAIL`` line) when no GPU is visible, a trainer's model
was not on it, a stage ends before its planned steps, or a stage gives no well-formed answer. Prints one figure per
line (``name: value unit``), then a per-stage table (wall time, tokens/s, peak memory), and writes the figures to
$OUT/gpu_smoke.json (else results/benchmarks/gpu_smoke.json). ``--allow-cpu`` runs tiny sizes on the CPU: a logic
check, not GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellduality.data.download import fetch
from cellduality.data.preprocess import PreprocessSettings, preprocess_file
from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table
from cellduality.evaluation.predict import predict
from cellduality.evaluation.settings import EvaluationSettings
from cellduality.tasks.prompts import format_answer
from cellduality.tasks.rewards import RewardSettings
from cellduality.tasks.settings import TaskTableSettings
from cellduality.tasks.tables import write_task_tables
from cellduality.training.grpo import run_grpo
from cellduality.training.settings import EmbeddedModelSettings, GRPOSettings, LoraSettings, SFTSettings
from cellduality.training.setup import load_tokenizer
from cellduality.training.sft import run_sft
from cellduality.training.tiny_model import build_tiny_model

# GPU sizes fill a few minutes on one H200; CPU sizes (--allow-cpu) only check that every stage runs.
SIZES = {
    "gpu": dict(model=dict(hidden_size=512, intermediate_size=2048, num_layers=8, num_heads=8), cells=(None, 256, 128),
                sft_steps=600, sft_batch=16, sft_lr=5e-4, sft_seconds=180, grpo_steps=4, generations=8, grpo_batch=64,
                completion=64, dual_tokens=48, temperature=1.0, predict_new_tokens=64, predict_batch=64,
                parallel_sft_steps=40),
    "cpu": dict(model=dict(hidden_size=64, intermediate_size=256, num_layers=1, num_heads=4), cells=(64, 8, 8),
                sft_steps=60, sft_batch=8, sft_lr=5e-3, sft_seconds=None, grpo_steps=2, generations=2, grpo_batch=4,
                completion=24, dual_tokens=32, temperature=0.1, predict_new_tokens=24, predict_batch=8,
                parallel_sft_steps=4),
}
# a stage that ends sooner than this share of its planned steps (the time budget cut it) fails the check
MIN_STEP_SHARE = 0.5


def fail(message: str) -> None:
    sys.exit(f"gpu_smoke: FAIL: {message}")


class Probe(TrainerCallback):
    """Where the trained model lives, wall time and steps; stops training after ``budget_s`` seconds."""

    def __init__(self, budget_s: float | None = None) -> None:
        self.budget_s, self.devices, self.start, self.step_times = budget_s, [], 0.0, {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.devices.append(next(model.parameters()).device.type)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times[state.global_step] = time.perf_counter() - self.start
        if self.budget_s and self.step_times[state.global_step] > self.budget_s:
            control.should_training_stop = True


@contextlib.contextmanager
def probed_grpo(probe: Probe, rollouts: list[tuple[int, float]]):
    """run_grpo takes no callbacks: swap in a GRPOTrainer that adds ``probe`` and times its rollouts
    (completion tokens, seconds per generation round; the duality reward's dual generations are not counted)."""
    import trl

    base = trl.GRPOTrainer

    class GRPOTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(probe)

        def _generate_single_turn(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._generate_single_turn(*args, **kwargs)  # (completion_ids, logprobs) in TRL 1.16
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rollouts.append((sum(map(len, out[0])), time.perf_counter() - start))
            return out

    trl.GRPOTrainer = GRPOTrainer
    try:
        yield
    finally:
        trl.GRPOTrainer = base


def prepare(work: Path, size: dict) -> tuple[Path, Path]:
    """Task tables (annotation, K=32) and accepted SFT examples (primal and dual reference answers)."""
    fetch("builtin:scanpy/pbmc68k_reduced", work / "raw.h5ad")
    preprocess_file(work / "raw.h5ad", work / "processed.h5ad", work / "qc.json",
                    {"labels": {"cell_type": "bulk_labels"}, "constants": {"tissue": "peripheral blood"}},
                    PreprocessSettings(), "pbmc68k")
    write_sentence_table(work / "processed.h5ad", work / "sentences.parquet", dataset="pbmc68k",
                         cell_sentence=CellSentenceSettings(top_k=32))
    sft_cells, rl_cells, eval_cells = size["cells"]
    caps = TaskTableSettings(max_cells_sft=sft_cells, max_cells_rl=rl_cells, max_cells_eval=eval_cells)
    write_task_tables(work / "sentences.parquet", work / "tasks.parquet", ["annotation"], tables=caps, top_k=32)
    table = pd.read_parquet(work / "tasks.parquet")
    sft = table[table.stage == "sft"].copy()
    sft["completion"] = [format_answer("Marker genes decide.", a) for a in sft.answer]
    sft["accepted"] = True
    sft.to_parquet(work / "sft.parquet")
    return work / "tasks.parquet", work / "sft.parquet"


class Report:
    """Figures as they come: one ``name: value unit`` line each on stdout (so a run cut by the timeout still shows
    what it measured) and the whole set rewritten to ``path`` as JSON."""

    def __init__(self, path: Path, gpu: bool, size: dict) -> None:
        self.path, self.data = path, {"gpu_figures": gpu, "sizes": size, "figures": {}}
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, value, unit: str = "") -> None:
        print(f"{name}: {value} {unit}".rstrip(), file=sys.__stdout__, flush=True)
        self.data["figures"][name] = {"value": value, "unit": unit}
        self.path.write_text(json.dumps(self.data, indent=1))


def mean(entries: list[dict], key: str) -> float:
    return round(sum(e.get(key, 0) for e in entries) / max(1, len(entries)), 3)


def run(work: Path, size: dict, gpu: bool, report: Report) -> None:
    peak: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str, uses_gpu: bool = True):
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        report(f"{name}_wall", round(time.perf_counter() - start, 2), "s")
        if gpu and uses_gpu:
            peak[name] = torch.cuda.max_memory_allocated() / 2**30
            report(f"{name}_peak_mem", round(peak[name], 3), "GiB")

    def on_device(probe: Probe, name: str) -> None:  # a CPU run checks the probe itself
        want = "cuda" if gpu else "cpu"
        if probe.devices != [want]:
            fail(f"{name} trained on {probe.devices or 'nothing seen'}, not {want}")

    def well_formed(name: str, share: float) -> None:
        if not share > 0:
            fail(f"{name} gave no well-formed answer (format_ok {share})")

    with stage("prepare", uses_gpu=False):
        tasks, sft_data = prepare(work, size)
        build_tiny_model([work / "sentences.parquet"], [tasks], work / "base",
                         EmbeddedModelSettings.from_params(size["model"]))
    from transformers import AutoModelForCausalLM  # the saved base model loads back like a hub model

    report("model_params", round(sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(work / "base")
                                     .parameters()) / 1e6, 2), "M")
    tokenizer = load_tokenizer(work / "base")

    probe = Probe(size["sft_seconds"])
    s = SFTSettings(epochs=1000, max_steps=size["sft_steps"], learning_rate=size["sft_lr"],
                    per_device_batch_size=size["sft_batch"], max_length=1024, save_steps=100_000, logging_steps=1)
    with stage("sft"):
        run_sft(str(work / "base"), [sft_data], work / "sft", work / "sft_ckpt", s, LoraSettings(), callbacks=[probe])
    on_device(probe, "SFT")
    last = [e for e in json.loads((work / "sft" / "log_history.json").read_text()) if "num_tokens" in e][-1]
    report("sft_steps", last["step"], "steps")  # TRL's num_tokens: attention-mask sum, the non-padding tokens
    reached("SFT", last["step"], size["sft_steps"])
    report("sft_tokens_per_s", round(last["num_tokens"] / probe.step_times[last["step"]], 1), "tok/s")

    for mode in ("duality", "oracle"):
        probe, rollouts = Probe(), []
        g = GRPOSettings(num_generations=size["generations"], train_batch_size=size["grpo_batch"],
                         mini_batch_size=size["grpo_batch"], max_steps=size["grpo_steps"], learning_rate=1e-5,
                         temperature=size["temperature"], max_completion_length=size["completion"],
                         dual_max_new_tokens=size["dual_tokens"], save_steps=100_000)
        with stage(f"grpo_{mode}"), probed_grpo(probe, rollouts):
            run_grpo(str(work / "sft"), [tasks], work / f"grpo_{mode}", work / f"grpo_{mode}_ckpt", g,
                     RewardSettings(mode=mode), LoraSettings())
        on_device(probe, f"GRPO ({mode})")
        logged = [e for e in json.loads((work / f"grpo_{mode}" / "log_history.json").read_text()) if "reward" in e]
        steps, seconds = max(probe.step_times), sum(s for _, s in rollouts)
        report(f"grpo_{mode}_s_per_step", round(probe.step_times[steps] / steps, 3), "s")
        report(f"grpo_{mode}_rollout_tokens_per_s", round(sum(t for t, _ in rollouts) / seconds, 1) if seconds
               else "n/a", "tok/s")
        report(f"grpo_{mode}_format_ok", mean(logged, "format_ok"), "fraction")
        reached(f"GRPO ({mode})", steps, size["grpo_steps"])
        well_formed(f"GRPO ({mode}) rollouts", mean(logged, "format_ok"))
        if mode == "duality":  # 0: no well-formed rollout, so the dual task (the reward's generation) never ran
            report("grpo_duality_dual_generations_per_step", mean(logged, "dual_generations"), "prompts")

    with stage("predict"):
        start = time.perf_counter()
        rows = predict(str(work / "grpo_oracle"), [tasks], work / "predictions.parquet",
                       EvaluationSettings(max_new_tokens=size["predict_new_tokens"], batch_size=size["predict_batch"]))
        seconds = time.perf_counter() - start
    # generated tokens: the answers re-tokenized (the final EOS not counted)
    generated = sum(map(len, tokenizer(list(rows.response), add_special_tokens=False).input_ids))
    report("predict_prompts", len(rows), "prompts")
    report("predict_tokens_per_s", round(generated / seconds, 1), "tok/s")
    report("predict_format_ok", round(float(rows.format_ok.mean()), 3), "fraction")
    well_formed("predict", float(rows.format_ok.mean()))
    if gpu:
        if min(peak.values()) <= 0:
            fail(f"a stage allocated no GPU memory: {peak}")
        report("peak_gpu_mem", round(max(peak.values()), 3), "GiB")
    if torch.cuda.device_count() > 1:
        with stage("sft_parallel", uses_gpu=False):
            parallel_sft(work, sft_data, size, report)


def reached(name: str, steps: int, planned: int) -> None:
    """Fail when a stage ended before :data:`MIN_STEP_SHARE` of its planned steps."""
    if steps < MIN_STEP_SHARE * planned:
        fail(f"{name} stopped after {steps} of {planned} planned steps (the time budget cut it: a slow device?)")


def stage_table(figures: dict) -> str:
    """The figures as one row per stage: wall time, tokens/s, peak GPU memory."""
    stages = [name.removesuffix("_wall") for name in figures if name.endswith("_wall") and name != "total_wall"]
    speed = {"sft": "sft_tokens_per_s", "grpo_duality": "grpo_duality_rollout_tokens_per_s",
             "grpo_oracle": "grpo_oracle_rollout_tokens_per_s", "predict": "predict_tokens_per_s"}
    rows = [f"{'stage':<14} {'wall s':>8} {'tokens/s':>10} {'peak GiB':>9}"]
    for name in stages:
        cell = [figures.get(key, {}).get("value", "-") for key in (f"{name}_wall", speed.get(name, ""),
                                                                     f"{name}_peak_mem")]
        rows.append(f"{name:<14} {cell[0]!s:>8} {cell[1]!s:>10} {cell[2]!s:>9}")
    return "\n".join(rows)


def parallel_sft(work: Path, sft_data: Path, size: dict, report: Report) -> None:
    """The two-process leg: SFT through the workflow's command, which relaunches itself under ``accelerate launch``
    with one process per visible GPU; it must finish its steps with as many processes as GPUs."""
    import subprocess

    n = torch.cuda.device_count()
    s = SFTSettings(epochs=1000, max_steps=size["parallel_sft_steps"], learning_rate=size["sft_lr"],
                    per_device_batch_size=size["sft_batch"], max_length=1024, save_steps=100_000, logging_steps=1)
    settings = {"sft": s.params(), "lora": LoraSettings().params()}
    files = {"model": str(work / "base"), "data": [str(sft_data)], "out": str(work / "sft_parallel"),
             "checkpoints": str(work / "sft_parallel_ckpt")}
    log = work / "sft_parallel.log"
    done = subprocess.run([sys.executable, "-m", "cellduality.cli", "sft", "--settings", json.dumps(settings),
                           "--files", json.dumps(files), "--log", str(log)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        fail(f"the {n}-process SFT exited {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    history = json.loads((work / "sft_parallel" / "log_history.json").read_text())
    steps = max((e["step"] for e in history if "loss" in e), default=0)
    report("sft_parallel_processes", n, "processes")
    report("sft_parallel_steps", steps, "steps")
    reached(f"{n}-process SFT", steps, size["parallel_sft_steps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allow-cpu", action="store_true", help="no GPU: run tiny sizes on the CPU (logic check)")
    parser.add_argument("--workdir", type=Path, help="keep the models and tables here (default: a temporary folder)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        sys.exit(f"gpu_smoke: FAIL: no GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); --allow-cpu for a CPU run")
    size = SIZES["gpu" if gpu else "cpu"]
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("results/benchmarks")
    report = Report(out / "gpu_smoke.json", gpu, size)
    if not gpu:
        print("gpu_smoke: CPU run (--allow-cpu), tiny sizes: these are not GPU figures", flush=True)
    report("gpu", torch.cuda.get_device_name(0) if gpu else "none")
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_smoke_")))
        work.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs: stdout holds the figures
            run(work, size, gpu, report)
    report("total_wall", round(time.perf_counter() - start, 2), "s")
    print(stage_table(report.data["figures"]), flush=True)
    print(f"gpu_smoke: {'OK' if gpu else 'OK (CPU, not GPU figures)'}; figures in {report.path}")


if __name__ == "__main__":
    main()
