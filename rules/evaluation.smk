# Evaluation stage: every model variant answers the eval prompts; metrics, baselines, tables, report.


def variant_model(wildcards):
    """Model directory of an evaluated variant (nothing to build for a hub/base model path)."""
    if wildcards.variant == "base":
        return [BASE_MODEL] if EMBEDDED else []
    if wildcards.variant == "sft":
        return [rules.sft.output[0]]
    return [rules.grpo.output.model.format(reward=wildcards.variant.removeprefix("grpo_"))]


EVAL_SETTINGS = dict(evaluation={k: v for k, v in config["evaluation"].items() if k != "variants"})


rule predict:
    input:
        model=variant_model,
        tables=TASK_TABLES,
    output:
        f"{RESULTS}/eval/{{variant}}/predictions.parquet",
    params:
        settings=EVAL_SETTINGS,
        spec=lambda wildcards, input, output: spec(
            model=(list(input.model) or [BASE_MODEL])[0],
            tables=list(input.tables),
            out=output[0],
            **EVAL_SETTINGS,
        ),
    wildcard_constraints:
        variant="base|sft|grpo_duality|grpo_oracle",
    log:
        f"{LOGS}/predict/{{variant}}.log",
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    conda:
        "../envs/training.yaml"
    shell:
        "{TRAIN_CLI} predict --spec {params.spec:q} --log {log}"


DATA_FILES = {
    name: {
        "h5ad": f"{RESULTS}/processed/{name}.h5ad",
        "sentences": f"{RESULTS}/cell_sentences/{name}.parquet",
    }
    for names in TASKS.values()
    for name in names
}
EVAL_INPUTS = dict(
    tables=TASK_TABLES,
    h5ad=[files["h5ad"] for files in DATA_FILES.values()],
    sentences=[files["sentences"] for files in DATA_FILES.values()],
)


rule evaluate:
    input:
        predictions=rules.predict.output[0],
        **EVAL_INPUTS,
    output:
        f"{RESULTS}/eval/{{variant}}/metrics.tsv",
    params:
        data=DATA_FILES,
    wildcard_constraints:
        variant="base|sft|grpo_duality|grpo_oracle",
    log:
        f"{LOGS}/evaluate/{{variant}}.log",
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/evaluation.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule baselines:
    input:
        predictions=rules.predict.output[0].format(variant=config["evaluation"]["variants"][0]),
        **EVAL_INPUTS,
    output:
        predictions=f"{RESULTS}/eval/baselines/predictions.parquet",
        metrics=f"{RESULTS}/eval/baselines/metrics.tsv",
    params:
        data=DATA_FILES,
        control_values=config["task_tables"]["control_values"],
    log:
        f"{LOGS}/evaluate/baselines.log",
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/evaluation.yaml"
    script:
        "../workflow/scripts/baselines.py"


EVALUATED = config["evaluation"]["variants"]
GRPO_VARIANTS = [v for v in EVALUATED if v.startswith("grpo_")]


rule report_tables:
    input:
        metrics=expand(rules.evaluate.output[0], variant=EVALUATED),
        baselines=rules.baselines.output.metrics,
    output:
        results=report(
            f"{RESULTS}/report/results.tsv",
            caption="../workflow/report/results.rst",
            category="Tables",
        ),
        html=report(
            f"{RESULTS}/report/tables.html",
            caption="../workflow/report/tables.rst",
            category="Tables",
        ),
        markdown=f"{RESULTS}/report/tables.md",
    log:
        f"{LOGS}/report/tables.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/evaluation.yaml"
    script:
        "../workflow/scripts/report_tables.py"


rule report_figures:
    input:
        predictions=expand(rules.predict.output[0], variant=EVALUATED),
        curves=expand(f"{RESULTS}/models/{{variant}}", variant=GRPO_VARIANTS),
        label_signal=rules.true_label_wins.output if TASKS.get("annotation") else [],
        **EVAL_INPUTS,
    output:
        confusion=report(
            f"{RESULTS}/report/confusion_matrices.png",
            caption="../workflow/report/confusion.rst",
            category="Figures",
        ),
        rewards=report(
            f"{RESULTS}/report/reward_curves.png",
            caption="../workflow/report/rewards.rst",
            category="Figures",
        ),
        umap=report(
            f"{RESULTS}/report/umap_generated_vs_real.png",
            caption="../workflow/report/umap.rst",
            category="Figures",
        ),
        label_signal=report(
            f"{RESULTS}/report/true_label_wins.tsv",
            caption="../workflow/report/label_signal.rst",
            category="Diagnostics",
        ),
    params:
        variants=EVALUATED,
        grpo_variants=GRPO_VARIANTS,
        data=DATA_FILES,
    log:
        f"{LOGS}/report/figures.log",
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/evaluation.yaml"
    script:
        "../workflow/scripts/report_figures.py"


rule evaluation:
    input:
        rules.report_tables.output,
        rules.report_figures.output,
