# Evaluation stage: every model variant answers the eval prompts; metrics, baselines, tables, report.


def variant_model(wildcards):
    """Model directory of an evaluated variant (nothing to build for a hub/base model path)."""
    if wildcards.variant == "base":
        return [BASE_MODEL] if EMBEDDED else []
    if wildcards.variant == "sft":
        return rules.sft.output[0]
    return rules.grpo.output.model.format(reward=wildcards.variant.removeprefix("grpo_"))


rule predict:
    input:
        model=variant_model,
        tables=TASK_TABLES,
    output:
        f"{RESULTS}/eval/{{variant}}/predictions.parquet",
    params:
        spec=lambda wildcards, input, output: spec(
            model=(list(input.model) or [BASE_MODEL])[0],
            tables=list(input.tables),
            out=output[0],
            evaluation={k: v for k, v in config["evaluation"].items() if k != "variants"},
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
