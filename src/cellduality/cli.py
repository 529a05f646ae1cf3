"""Console entry point `cellduality` (also `python -m cellduality.cli`, `accelerate launch -m cellduality.cli`).

    cellduality {build-model,fetch-model,sft,grpo,true-label-wins,predict,push-model} \
        --settings '<json>' --files '<json>' [--log FILE]
    cellduality annotate --model DIR --h5ad IN --out OUT.h5ad [--min-confidence P] [--majority-voting KEY]
        [--reasoning] [--metadata KEY=COLUMN ...] [--gene-symbols COLUMN] [--figure PNG]
        (see cellduality.evaluation.annotate)
    cellduality info MODEL   (a trained model's labels, training data, prompt context and settings)
    cellduality doctor [--profile DIR] [--configfile YAML] [--partition NAME]   (cluster preflight; cellduality.doctor)

``--settings`` holds the config sections the step uses, each as its settings class's ``params()`` (the rule
records it, so editing one reruns the step); the command rebuilds each typed object with ``from_params()``.
``--files`` holds the step's input and output paths and how it runs (run name, metrics folder, launcher): what
changes no result. Bad input ends with one line on stderr; logs (and tracebacks of bugs) go to ``--log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

from cellduality.errors import CellDualityError, fail
from cellduality.snakemake_script import harness


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _build_model(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.training.settings import EmbeddedModelSettings
    from cellduality.training.tiny_model import build_tiny_model

    build_tiny_model(files["sentence_tables"], files["task_tables"], files["out"],
                     EmbeddedModelSettings.from_params(settings["embedded"]))


def _sft(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.training.model_card import write_model_card
    from cellduality.training.settings import LoraSettings, ReportSettings, SFTSettings
    from cellduality.training.sft import run_sft

    run_sft(files["model"], files["data"], files["out"], files["checkpoints"], SFTSettings.from_params(settings["sft"]),
            LoraSettings.from_params(settings["lora"]), report=ReportSettings.from_params(files.get("report")))
    if files.get("tables") and _rank0():
        write_model_card(files["out"], tables=files["tables"], data=files.get("card_data"), variant="sft",
                         settings={"sft": settings["sft"], "lora": settings["lora"]}, **settings["card"])


def _grpo(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.tasks.rewards import RewardSettings
    from cellduality.training.grpo import run_grpo
    from cellduality.training.model_card import derive_model_card
    from cellduality.training.settings import GRPOSettings, LoraSettings, ReportSettings

    rewards = RewardSettings.from_params(settings["rewards"])
    run_grpo(files["model"], files["tables"], files["out"], files["checkpoints"],
             GRPOSettings.from_params(settings["grpo"]), rewards, LoraSettings.from_params(settings["lora"]),
             n_processes=int(os.environ.get("WORLD_SIZE", "1")), label_signal=files.get("label_signal"),
             ceiling=files.get("ceiling"), report=ReportSettings.from_params(files.get("report")),
             constrain_to_candidates=bool(settings.get("constrain_to_candidates", False)))
    if _rank0():  # the policy keeps the SFT model's label set, data and base model
        derive_model_card(files["model"], files["out"], variant=f"grpo_{rewards.mode}",
                          settings={"grpo": settings["grpo"], "rewards": settings["rewards"]})


def _annotate(args: argparse.Namespace) -> None:
    from cellduality.evaluation.annotate import annotate_file

    metadata = {}
    for item in args.metadata:
        key, sep, column = item.partition("=")
        if not sep or not key or not column:
            raise CellDualityError(f"--metadata {item!r}: write KEY=COLUMN (e.g. donor=donor_id)")
        metadata[key] = column
    annotate_file(args.model, args.h5ad, args.out, figure=args.figure, min_confidence=args.min_confidence,
                  majority_voting=args.majority_voting, reasoning=args.reasoning, metadata=metadata,
                  gene_symbols=args.gene_symbols, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)


def _true_label_wins(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.training.label_signal import true_label_wins_for_model
    from cellduality.training.settings import DiagnosticsSettings

    true_label_wins_for_model(files["model"], files["tables"], files["out"],
                              DiagnosticsSettings.from_params(settings["diagnostics"]), seed=settings["seed"],
                              max_new_tokens=settings["max_new_tokens"], beta=settings.get("beta"))


def _fetch_model(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.training.hub import fetch_base_model
    from cellduality.training.settings import ModelSettings

    model = ModelSettings.from_params(settings["model"])
    fetch_base_model(model.source, files["out"], revision=model.revision, token_env=model.token_env)


def _push_model(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.io import atomic_path
    from cellduality.training.publish import push_model
    from cellduality.training.settings import HubSettings

    hub = HubSettings.from_params(settings["hub"])
    url = push_model(files["folder"], hub.repo_id, private=hub.private, token_env=hub.token_env,
                     endpoint=files.get("endpoint"))
    if files.get("out"):  # the rule's receipt: what was pushed where
        with atomic_path(files["out"]) as tmp:
            tmp.write_text(json.dumps({"folder": files["folder"], "repo_id": hub.repo_id,
                                       "private": hub.private, "commit_url": url}, indent=1) + "\n")


def _predict(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.evaluation.predict import predict
    from cellduality.evaluation.settings import EvaluationSettings

    predict(files["model"], files["tables"], files["out"], EvaluationSettings.from_params(settings["evaluation"]))


def _ceiling(settings: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    from cellduality.evaluation.ceiling import generation_ceiling
    from cellduality.evaluation.settings import EmbeddingSettings

    generation_ceiling(files["model"], files["tables"], files["data"], files["out"],
                       embedding=EmbeddingSettings.from_params(settings["embedding"]),
                       **{k: settings[k] for k in ("samples", "temperature", "beta", "max_prompts", "max_new_tokens",
                                                   "seed", "label_duals", "constrain_to_candidates")})


COMMANDS = {"build-model": _build_model, "ceiling": _ceiling, "fetch-model": _fetch_model, "sft": _sft, "grpo": _grpo,
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
                                     description="Label every cell of an h5ad with a trained model.")
    parser.add_argument("--model", required=True, help="trained model folder (with cellduality.json)")
    parser.add_argument("--h5ad", required=True, help="cells to annotate (counts or log-normalized)")
    parser.add_argument("--out", required=True, help="output h5ad (the input with the annotation added)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="cells whose best label is less probable are 'unassigned' (default 0: none)")
    parser.add_argument("--majority-voting", metavar="KEY", help="obs column of a clustering: each cluster's most "
                                                                 "frequent label in obs cellduality_majority_voting")
    parser.add_argument("--reasoning", action="store_true", help="also generate the model's reasoning per cell")
    parser.add_argument("--metadata", nargs="*", default=[], metavar="KEY=COLUMN",
                        help="obs columns holding the prompt context the model was trained with (cellduality info)")
    parser.add_argument("--gene-symbols", metavar="COLUMN", help="var column of gene symbols (Ensembl var_names)")
    parser.add_argument("--figure", metavar="PNG", help="also draw the cells by label and the confidence histogram")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply length with --reasoning")
    parser.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)  # kept for old command lines
    parser.add_argument("--log", help="log file (default: stderr)")
    args = parser.parse_args(argv)
    harness("command annotate", args.log, lambda: _annotate(args))


def info_main(argv: list[str]) -> None:
    """``cellduality info MODEL``: print what a trained model knows (cellduality.evaluation.annotate.model_info)."""
    parser = argparse.ArgumentParser(prog="cellduality info", description="Describe a trained model folder.")
    parser.add_argument("model", help="trained model folder (with cellduality.json)")
    args = parser.parse_args(argv)
    from cellduality.evaluation.annotate import model_info

    try:
        print(model_info(args.model))
    except CellDualityError as err:
        fail(str(err))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["annotate"]:
        return annotate_main(argv[1:])
    if argv[:1] == ["info"]:
        return info_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from cellduality.doctor import main as doctor_main

        sys.exit(doctor_main(argv[1:]))
    parser = argparse.ArgumentParser(prog="cellduality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--settings", required=True, help="JSON: the config sections the step uses")
    parser.add_argument("--files", required=True, help="JSON: the step's input and output paths, run name, launcher")
    parser.add_argument("--log", help="log file (default: stderr)")
    args = parser.parse_args(argv)
    settings, files = _json_arg("--settings", args.settings), _json_arg("--files", args.files)
    relaunch_on_all_gpus(sys.argv[1:] if argv is None else argv, files.get("accelerate_config"))
    harness(f"command {args.command}", args.log, lambda: COMMANDS[args.command](settings, files))


def _json_arg(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        fail(f"{name} is not valid JSON ({err})")
    if not isinstance(value, dict):
        fail(f"{name} must be a JSON object; got {type(value).__name__}")
    return value


if __name__ == "__main__":
    main(sys.argv[1:])
