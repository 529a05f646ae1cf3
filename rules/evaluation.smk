# Evaluation stage: every model variant answers the eval prompts; metrics, baselines, tables, report.


rule predict:
    input:
        model=variant_model,
        tables=TASK_TABLES,
    output:
        f"{RESULTS}/eval/{{variant}}/rep{{rep}}/predictions.parquet",
    log:
        f"{LOGS}/predict/{{variant}}/rep{{rep}}.log",
    wildcard_constraints:
        variant="base|sft|grpo_duality|grpo_oracle|grpo_shuffled",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **GENERATION_RESOURCES,
    params:
        code=cli_code("evaluation.predict"),
        settings=cli_json(evaluation=EVALUATION),
        files=lambda wildcards, input, output: cli_json(
            model=(list(input.model) or [BASE_MODEL])[0],
            tables=list(input.tables),
            out=output[0],
        ),
    shell:
        "python -m cellduality.cli predict --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule evaluate:
    input:
        **EVAL_INPUTS,
        predictions=rules.predict.output[0],
    output:
        f"{RESULTS}/eval/{{variant}}/rep{{rep}}/metrics.tsv",
    log:
        f"{LOGS}/evaluate/{{variant}}/rep{{rep}}.log",
    wildcard_constraints:
        variant="base|sft|grpo_duality|grpo_oracle|grpo_shuffled",
    conda:
        "../envs/evaluation.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=script_code("evaluate.py"),
        data=DATA_FILES,
        embedding=EMBEDDING.params(),
    script:
        "../workflow/scripts/evaluate.py"


rule baselines:
    input:
        **EVAL_INPUTS,
    output:
        predictions=f"{RESULTS}/eval/baselines/predictions.parquet",
        metrics=f"{RESULTS}/eval/baselines/metrics.tsv",
    log:
        f"{LOGS}/evaluate/baselines.log",
    conda:
        "../envs/evaluation.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=script_code("baselines.py"),
        data=DATA_FILES,
        embedding=EMBEDDING.params(),
        # the prompts the models are asked (evaluation.max_prompts_per_table) and what marks a control cell
        max_prompts_per_table=EVALUATION.max_prompts_per_table,
        control_values=TASK_TABLE.control_values,
    script:
        "../workflow/scripts/baselines.py"


# Before duality GRPO trains conditional generation: can its reward raise generation accuracy at all?
rule ceiling:
    input:
        model=rules.sft.output[0],
        tables=[
            f"{RESULTS}/tasks/generation/{name}.parquet"
            for name in TASKS.get("generation", [])
        ],
        h5ad=[DATA_FILES[name]["h5ad"] for name in TASKS.get("generation", [])],
        sentences=[
            DATA_FILES[name]["sentences"] for name in TASKS.get("generation", [])
        ],
    output:
        f"{RESULTS}/diagnostics/ceiling/generation/rep{{rep}}.json",
    log:
        f"{LOGS}/ceiling/rep{{rep}}.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **GENERATION_RESOURCES,
    params:
        code=cli_code("evaluation.ceiling"),
        # GRPO's prompts, samples as evaluation draws them, GRPO's beta and dual answer length
        settings=lambda wildcards: cli_json(
            samples=EVALUATION.samples_per_prompt,
            temperature=EVALUATION.sample_temperature,
            beta=GRPO.beta,
            max_prompts=GRPO.task_prompts.get("generation"),
            max_new_tokens=GRPO.dual_max_new_tokens,
            seed=GRPO.replicate(wildcards.rep).seed,
            embedding=EMBEDDING,
            label_duals=REWARDS.label_duals,
            constrain_to_candidates=EVALUATION.constrain_to_candidates,
        ),
        files=lambda wildcards, input, output: cli_json(
            model=input.model,
            tables=list(input.tables),
            data=DATA_FILES,
            out=output[0],
        ),
    shell:
        "python -m cellduality.cli ceiling --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule report_tables:
    input:
        metrics=evaluated(rules.evaluate.output[0]),
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
    conda:
        "../envs/evaluation.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=script_code("report_tables.py"),
        # how the answers were drawn and scored, stated above the tables
        evaluation=EVALUATION.params(),
        embedding=EMBEDDING.params(),
        replicates=len(REPLICATES),
    script:
        "../workflow/scripts/report_tables.py"


rule report_figures:
    input:
        **EVAL_INPUTS,
        # figures show replicate 0; the label-signal table lists every replicate
        predictions=expand(rules.predict.output[0], variant=EVALUATED, rep=0),
        curves=expand(f"{RESULTS}/models/{{variant}}/rep0", variant=GRPO_VARIANTS),
        label_signal=(
            expand(rules.true_label_wins.output, rep=REPLICATES)
            if TASKS.get("annotation")
            else []
        ),
        ceiling=expand(rules.ceiling.output, rep=REPLICATES) if CEILING else [],
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
        ceiling=report(
            f"{RESULTS}/report/ceiling.tsv",
            caption="../workflow/report/ceiling.rst",
            category="Diagnostics",
        ),
    log:
        f"{LOGS}/report/figures.log",
    conda:
        "../envs/evaluation.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        code=script_code("report_figures.py"),
        variants=EVALUATED,
        grpo_variants=GRPO_VARIANTS,
        data=DATA_FILES,
    script:
        "../workflow/scripts/report_figures.py"


rule evaluation:
    input:
        rules.report_tables.output,
        rules.report_figures.output,


# Optional target (never part of all): the duality ablation with its controls, over ablation.seeds seeds.
rule ablation:
    input:
        tables=TASK_TABLES,
        h5ad=EVAL_INPUTS["h5ad"],
        sentences=EVAL_INPUTS["sentences"],
        predictions=[
            rules.predict.output[0].format(variant=arm, rep=seed)
            for arm in ABLATION_ARMS
            for seed in ABLATION_SEEDS
        ],
    output:
        table=report(
            f"{RESULTS}/report/ablation.tsv",
            caption="../workflow/report/ablation.rst",
            category="Ablation",
        ),
        figure=report(
            f"{RESULTS}/report/ablation.png",
            caption="../workflow/report/ablation.rst",
            category="Ablation",
        ),
    log:
        f"{LOGS}/report/ablation.log",
    conda:
        "../envs/evaluation.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=script_code("ablation.py"),
        arms=ABLATION_ARMS,
        seeds=ABLATION_SEEDS,
        data=DATA_FILES,
        ablation=ABLATION.params(),
        embedding=EMBEDDING.params(),
    script:
        "../workflow/scripts/ablation.py"


rule annotate:
    input:
        model=lambda wildcards: variant_model(
            SimpleNamespace(variant=ANNOTATE.model, rep=0)
        ),
        h5ad=lambda wildcards: portable(ANNOTATE.inputs[wildcards.name]),
    output:
        h5ad=f"{RESULTS}/annotate/{{name}}.h5ad",
    log:
        f"{LOGS}/annotate/{{name}}.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **GENERATION_RESOURCES,
    params:
        code=cli_code("evaluation.annotate"),
        batch_size=ANNOTATE.batch_size,
    shell:
        "python -m cellduality.cli annotate --model {input.model:q} --h5ad {input.h5ad:q} "
        "--out {output.h5ad:q} --batch-size {params.batch_size} --log {log:q}"


rule annotations:
    input:
        expand(rules.annotate.output.h5ad, name=ANNOTATE.inputs),
