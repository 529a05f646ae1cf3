"""Console entry point `cellduality` (also `python -m cellduality.cli`, `accelerate launch -m cellduality.cli`).

    cellduality {build-model,fetch-model,sft,grpo,true-label-wins,predict,push-model} --spec '<json>' [--log FILE]
    cellduality annotate --model DIR --h5ad IN --out OUT.h5ad   (new cells; see cellduality.evaluation.annotate)
    cellduality doctor [--profile DIR] [--configfile YAML] [--partition NAME]   (cluster preflight; cellduality.doctor)

``--spec`` is the JSON of the step's inputs, outputs and settings (the rule writes it from the config).
Bad input ends with one line on stderr; logs (and tracebacks of bugs) go to ``--log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from cellduality.errors import fail
from cellduality.snakemake_script import harness


def _build_model(spec: dict) -> None:
    from cellduality.training.tiny_model import build_tiny_model

    build_tiny_model(spec["sentence_tables"], spec["task_tables"], spec["out"], **spec["embedded"])


def _sft(spec: dict) -> None:
    from cellduality.evaluation.annotate import write_model_card
    from cellduality.training.sft import run_sft

    run_sft(spec["model"], spec["data"], spec["out"], spec["checkpoints"], spec["sft"], spec["lora"],
            report=spec.get("report"))
    if spec.get("tables") and int(os.environ.get("RANK", "0")) == 0:
        write_model_card(spec["out"], tables=spec["tables"], settings={"sft": spec["sft"], "lora": spec["lora"]},
                         variant="sft", **spec["card"])


def _grpo(spec: dict) -> None:
    from cellduality.evaluation.annotate import derive_model_card
    from cellduality.training.grpo import run_grpo

    run_grpo(spec["model"], spec["tables"], spec["out"], spec["checkpoints"], spec["grpo"], spec["rewards"],
             spec["lora"], n_processes=int(os.environ.get("WORLD_SIZE", "1")), label_signal=spec.get("label_signal"),
             report=spec.get("report"))
    if int(os.environ.get("RANK", "0")) == 0:  # the policy keeps the SFT model's label set, data and base model
        derive_model_card(spec["model"], spec["out"], variant=f"grpo_{spec['rewards']['mode']}",
                          settings={"grpo": spec["grpo"], "rewards": spec["rewards"]})


def _annotate(args: argparse.Namespace) -> None:
    from cellduality.evaluation.annotate import annotate

    annotate(args.model, args.h5ad, args.out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
             chunk_size=args.chunk_size, progress=not args.no_progress, constrain=not args.unconstrained)


def _true_label_wins(spec: dict) -> None:
    from cellduality.training.label_signal import true_label_wins_for_model

    true_label_wins_for_model(spec["model"], spec["tables"], spec["out"], **spec["diagnostic"])


def _fetch_model(spec: dict) -> None:
    from cellduality.training.hub import fetch_base_model

    fetch_base_model(spec["source"], spec["out"], revision=spec.get("revision"), token_env=spec["token_env"])


def _push_model(spec: dict) -> None:
    from cellduality.io import atomic_path
    from cellduality.training.publish import push_model

    url = push_model(spec["folder"], spec["repo_id"], private=spec["private"], token_env=spec["token_env"],
                     endpoint=spec.get("endpoint"))
    if spec.get("out"):  # the rule's receipt: what was pushed where
        with atomic_path(spec["out"]) as tmp:
            tmp.write_text(json.dumps({"folder": spec["folder"], "repo_id": spec["repo_id"],
                                       "private": spec["private"], "commit_url": url}, indent=1) + "\n")


def _predict(spec: dict) -> None:
    from cellduality.evaluation.predict import predict

    predict(spec["model"], spec["tables"], spec["out"], **spec["evaluation"])


COMMANDS = {"build-model": _build_model, "fetch-model": _fetch_model, "sft": _sft, "grpo": _grpo,
            "true-label-wins": _true_label_wins, "predict": _predict, "push-model": _push_model}


def relaunch_on_all_gpus(argv: list[str], accelerate_config: str | None) -> None:
    """For ``sft`` and ``grpo``: with more than one visible GPU (e.g. the GPUs a SLURM job was given) and not yet
    inside a launcher, re-execute this command under ``accelerate launch`` with one process per GPU."""
    if "WORLD_SIZE" in os.environ or argv[:1] not in (["sft"], ["grpo"]):
        return  # only training is data-parallel; prediction and diagnostics run on one GPU
    import torch

    n_gpus = torch.cuda.device_count()
    if n_gpus < 2:
        return
    if shutil.which("accelerate") is None:
        fail(f"{n_gpus} GPUs visible but the accelerate launcher is not installed; pip install accelerate")
    launch = ["accelerate", "launch", "--num_processes", str(n_gpus)]
    if accelerate_config:
        launch += ["--config_file", accelerate_config]
    os.execvp("accelerate", [*launch, "-m", "cellduality.cli", *argv])


def annotate_main(argv: list[str]) -> None:
    """``cellduality annotate --model DIR --h5ad IN --out OUT.h5ad`` (see cellduality.evaluation.annotate)."""
    parser = argparse.ArgumentParser(prog="cellduality annotate",
                                     description="Annotate the cells of an h5ad with a trained model.")
    parser.add_argument("--model", required=True, help="trained model folder (with cellduality.json)")
    parser.add_argument("--h5ad", required=True, help="cells to annotate (counts or log-normalized)")
    parser.add_argument("--out", required=True, help="output h5ad (+ OUT.reasoning.parquet beside it)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--chunk-size", type=int, default=2048, help="cells generated and written at a time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--unconstrained", action="store_true",
                        help="let the model name labels outside its label set (they become format errors)")
    parser.add_argument("--log", help="log file (default: stderr)")
    args = parser.parse_args(argv)
    harness("command annotate", args.log, lambda: _annotate(args))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["annotate"]:
        return annotate_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from cellduality.doctor import main as doctor_main

        sys.exit(doctor_main(argv[1:]))
    parser = argparse.ArgumentParser(prog="cellduality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--spec", required=True, help="JSON with the step's inputs, outputs and settings")
    parser.add_argument("--log", help="log file (default: stderr)")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.spec)
    except json.JSONDecodeError as err:
        fail(f"--spec is not valid JSON ({err})")
    relaunch_on_all_gpus(sys.argv[1:] if argv is None else argv, spec.get("accelerate_config"))
    harness(f"command {args.command}", args.log, lambda: COMMANDS[args.command](spec))


if __name__ == "__main__":
    main(sys.argv[1:])
