#!/usr/bin/env bash
# GPU smoke check of the training stage (benchmarks/gpu_smoke.py), for a machine with one GPU and no internet.
#
#   bash benchmarks/gpu_smoke.sh [--allow-cpu]
#
# What it checks: task tables built locally from scanpy's shipped pbmc68k_reduced, a ~35M-parameter Llama with
# the embedded tokenizer saved in Hugging Face format and loaded back like a hub model, SFT (600 steps or 180 s),
# GRPO with the duality reward and with the oracle reward (4 steps each) and predict on the eval prompts, all on
# the GPU, and with more than one visible GPU a two-process SFT through `python -m cellduality.cli sft` (relaunched
# under accelerate). It exits non-zero with one "gpu_smoke: FAIL" line when no GPU is visible, a trainer's model is
# not on cuda, a stage ends before half its planned steps, or a stage gives no well-formed answer.
# Time budget: 10 minutes in all; the Python run is cut at 570 s (exit 124 then).
# Output (stdout; the trainers' logs go to stderr): one figure per line, "name: value unit" -- gpu (its name),
# model_params, <stage>_wall s, sft_tokens_per_s (non-padding tokens), grpo_<reward>_rollout_tokens_per_s
# (completion tokens / generation time), grpo_<reward>_format_ok, grpo_duality_dual_generations_per_step (0: the
# dual task never ran), predict_tokens_per_s, <stage>_peak_mem and peak_gpu_mem GiB -- then a per-stage table (wall
# s, tokens/s, peak GiB) and "gpu_smoke: OK"; the
# same figures as JSON in $OUT/gpu_smoke.json (else results/benchmarks/gpu_smoke.json).
# With --allow-cpu it runs tiny sizes on the CPU: a logic check whose figures are not GPU figures.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; fi
PY=$(command -v python3 || command -v python)
if ! "$PY" -c "import cellduality" 2>/dev/null; then
    # benchmarks/gpu_smoke.py imports src/ directly too: a failed install only matters when dependencies are missing
    "$PY" -m pip install -q --retries 1 --timeout 10 -e . >/tmp/gpu_smoke_pip.log 2>&1 \
        || echo "gpu_smoke: 'pip install -e .' failed (no network?), running from src/; see /tmp/gpu_smoke_pip.log"
fi
exec timeout 570 "$PY" benchmarks/gpu_smoke.py "$@"
