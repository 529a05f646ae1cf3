# Training stage: base model -> SFT on teacher data -> GRPO (duality and ground-truth variants).
import json

TRAIN_CLI = f"PYTHONPATH={workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}} python -m cellduality.cli"
EMBEDDED = config["model"]["source"] == "embedded"
BASE_MODEL = f"{RESULTS}/models/base" if EMBEDDED else config["model"]["source"]
TASK_TABLES = [
    f"{RESULTS}/tasks/{task}/{name}.parquet" for task, names in TASKS.items() for name in names
]
SFT_DATA = [f"{RESULTS}/sft/{task}/{name}.parquet" for task, names in TASKS.items() for name in names]
TRAINING_RESOURCES = dict(
    mem_mb=config["training"]["mem_mb"],
    runtime=config["training"]["runtime"],
    gpu=config["training"]["gpus"],
)


def spec(**fields):
    """The train_cli --spec JSON. Snakemake does not record params that are functions of input/output, so
    each rule also carries its config-derived `settings` as a plain param: editing them reruns the step."""
    return json.dumps(fields, sort_keys=True)


BUILD_SETTINGS = dict(embedded=config["model"]["embedded"])
SFT_SETTINGS = dict(
    sft=config["sft"],
    lora=config["model"]["lora"],
    accelerate_config=config["training"]["accelerate_config"],
)


def grpo_settings(wildcards):
    return dict(
        grpo={k: v for k, v in config["grpo"].items() if k != "variants"},
        rewards={**config["rewards"], "mode": wildcards.reward},
        lora=config["model"]["lora"],
        accelerate_config=config["training"]["accelerate_config"],
    )


LABEL_SIGNAL_SETTINGS = dict(
    diagnostic=dict(
        max_cells=config["diagnostics"]["true_label_wins_cells"],
        hidden_fraction=config["inpainting"]["hidden_fraction"],
        strategy=config["inpainting"]["strategy"],
        markers=config["inpainting"]["markers"],
        seed=config["task_tables"]["seed"],
        max_new_tokens=config["grpo"]["dual_max_new_tokens"],
    )
)


rule build_model:
    input:
        sentences=expand(rules.cell_sentences.output.table, dataset=DATASETS),
        tasks=TASK_TABLES,
    output:
        directory(f"{RESULTS}/models/base"),
    params:
        settings=BUILD_SETTINGS,
        spec=lambda wildcards, input, output: spec(
            sentence_tables=list(input.sentences),
            task_tables=list(input.tasks),
            out=output[0],
            **BUILD_SETTINGS,
        ),
    log:
        f"{LOGS}/build_model.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/training.yaml"
    shell:
        "{TRAIN_CLI} build-model --spec {params.spec:q} --log {log}"


rule sft:
    input:
        model=[BASE_MODEL] if EMBEDDED else [],
        data=SFT_DATA,
    output:
        directory(f"{RESULTS}/models/sft"),
    params:
        settings={**SFT_SETTINGS, "model": BASE_MODEL},
        spec=lambda wildcards, input, output: spec(
            model=BASE_MODEL,
            data=list(input.data),
            out=output[0],
            checkpoints=f"{RESULTS}/checkpoints/sft",
            **SFT_SETTINGS,
        ),
    log:
        f"{LOGS}/sft.log",
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    conda:
        "../envs/training.yaml"
    shell:
        "{TRAIN_CLI} sft --spec {params.spec:q} --log {log}"


rule grpo:
    input:
        model=rules.sft.output[0],
        tables=TASK_TABLES,
    output:
        model=directory(f"{RESULTS}/models/grpo_{{reward}}"),
    params:
        settings=grpo_settings,
        spec=lambda wildcards, input, output: spec(
            model=input.model,
            tables=list(input.tables),
            out=output.model,
            checkpoints=f"{RESULTS}/checkpoints/grpo_{wildcards.reward}",
            **grpo_settings(wildcards),
        ),
    wildcard_constraints:
        reward="duality|oracle",
    log:
        f"{LOGS}/grpo_{{reward}}.log",
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    conda:
        "../envs/training.yaml"
    shell:
        "{TRAIN_CLI} grpo --spec {params.spec:q} --log {log}"


rule true_label_wins:
    input:
        model=rules.sft.output[0],
        tables=[f"{RESULTS}/tasks/annotation/{name}.parquet" for name in TASKS.get("annotation", [])],
    output:
        f"{RESULTS}/diagnostics/true_label_wins.json",
    params:
        settings=LABEL_SIGNAL_SETTINGS,
        spec=lambda wildcards, input, output: spec(
            model=input.model,
            tables=list(input.tables),
            out=output[0],
            **LABEL_SIGNAL_SETTINGS,
        ),
    log:
        f"{LOGS}/true_label_wins.log",
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    conda:
        "../envs/training.yaml"
    shell:
        "{TRAIN_CLI} true-label-wins --spec {params.spec:q} --log {log}"


rule training:
    input:
        expand(rules.grpo.output.model, reward=config["grpo"]["variants"]),
        rules.true_label_wins.output if TASKS.get("annotation") else [],
