# Training stage: base model -> SFT on teacher data -> GRPO (duality and ground-truth variants).


rule build_model:
    input:
        sentences=expand(rules.cell_sentences.output.table, dataset=DATASETS),
        tasks=TASK_TABLES,
    output:
        directory(f"{RESULTS}/models/base"),
    log:
        f"{LOGS}/build_model.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=BUILD_SETTINGS,
        spec=lambda wildcards, input, output: spec(
            sentence_tables=list(input.sentences),
            task_tables=list(input.tasks),
            out=output[0],
            **BUILD_SETTINGS,
        ),
    shell:
        "python -m cellduality.cli build-model --spec {params.spec:q} --log {log}"


rule sft:
    input:
        model=[BASE_MODEL] if EMBEDDED else [],
        data=SFT_DATA,
    output:
        directory(f"{RESULTS}/models/sft"),
    log:
        f"{LOGS}/sft.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    params:
        settings={**SFT_SETTINGS, "model": BASE_MODEL},
        spec=lambda wildcards, input, output: spec(
            model=BASE_MODEL,
            data=list(input.data),
            out=output[0],
            checkpoints=f"{RESULTS}/checkpoints/sft",
            **SFT_SETTINGS,
        ),
    shell:
        "python -m cellduality.cli sft --spec {params.spec:q} --log {log}"


rule grpo:
    input:
        model=rules.sft.output[0],
        tables=TASK_TABLES,
        # the label-signal gate: duality GRPO starts after the SFT model's true-label-wins diagnostic
        label_signal=lambda wildcards: (
            rules.true_label_wins.output
            if wildcards.reward == "duality" and TASKS.get("annotation")
            else []
        ),
    output:
        model=directory(f"{RESULTS}/models/grpo_{{reward}}"),
    log:
        f"{LOGS}/grpo_{{reward}}.log",
    wildcard_constraints:
        reward="duality|oracle",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    params:
        settings=grpo_settings,
        spec=lambda wildcards, input, output: spec(
            model=input.model,
            tables=list(input.tables),
            out=output.model,
            checkpoints=f"{RESULTS}/checkpoints/grpo_{wildcards.reward}",
            label_signal=input.label_signal[0] if input.label_signal else None,
            **grpo_settings(wildcards),
        ),
    shell:
        "python -m cellduality.cli grpo --spec {params.spec:q} --log {log}"


rule true_label_wins:
    input:
        model=rules.sft.output[0],
        tables=[
            f"{RESULTS}/tasks/annotation/{name}.parquet"
            for name in TASKS.get("annotation", [])
        ],
    output:
        f"{RESULTS}/diagnostics/true_label_wins.json",
    log:
        f"{LOGS}/true_label_wins.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    params:
        settings=LABEL_SIGNAL_SETTINGS,
        spec=lambda wildcards, input, output: spec(
            model=input.model,
            tables=list(input.tables),
            out=output[0],
            **LABEL_SIGNAL_SETTINGS,
        ),
    shell:
        "python -m cellduality.cli true-label-wins --spec {params.spec:q} --log {log}"


rule training:
    input:
        expand(rules.grpo.output.model, reward=config["grpo"]["variants"]),
        rules.true_label_wins.output if TASKS.get("annotation") else [],
