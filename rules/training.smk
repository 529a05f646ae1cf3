# Training stage: base model -> SFT on teacher data -> GRPO (duality and ground-truth variants), each trained
# model once per replicate ({rep}: seeds + rep).


wildcard_constraints:
    rep=r"\d+",


localrules:
    fetch_model,  # on the submit node: compute nodes may have no network
    push_to_hub,  # likewise: an upload needs the network


rule build_model:
    input:
        sentences=expand(rules.cell_sentences.output.table, dataset=USED_DATASETS),
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
        code=cli_code("training.tiny_model"),
        settings=cli_json(embedded=EMBEDDED_MODEL),
        files=lambda wildcards, input, output: cli_json(
            sentence_tables=list(input.sentences),
            task_tables=list(input.tasks),
            out=output[0],
        ),
    shell:
        "python -m cellduality.cli build-model --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule fetch_model:
    output:
        directory(f"{RESULTS}/models/hub"),
    log:
        f"{LOGS}/fetch_model.log",
    conda:
        "../envs/training.yaml"
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=cli_code("training.hub"),
        settings=cli_json(model=MODEL),
        files=lambda wildcards, output: cli_json(out=output[0]),
    shell:
        "python -m cellduality.cli fetch-model --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule sft:
    input:
        model=[BASE_MODEL] if BUILT_MODEL else [],
        data=SFT_DATA,
        tables=ANNOTATION_TABLES,  # the label set of the model card (cellduality.json)
    output:
        directory(f"{RESULTS}/models/sft/rep{{rep}}"),
    log:
        f"{LOGS}/sft/rep{{rep}}.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    params:
        code=cli_code("training.sft"),
        # the card records the base model (model.source), so another base model reruns SFT
        settings=lambda wildcards: cli_json(
            sft=SFT.replicate(wildcards.rep), lora=LORA, card=MODEL_CARD
        ),
        files=lambda wildcards, input, output: cli_json(
            model=BASE_MODEL,
            data=list(input.data),
            out=output[0],
            checkpoints=f"{RESULTS}/checkpoints/sft/rep{wildcards.rep}",
            tables=list(input.tables),
            card_data=CARD_DATA,
            **report_files(f"sft_rep{wildcards.rep}"),
        ),
    shell:
        "python -m cellduality.cli sft --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule grpo:
    input:
        model=rules.sft.output[0],  # the SFT model of the same replicate
        tables=TASK_TABLES,
        # the label-signal gate: duality GRPO starts after the SFT model's true-label-wins diagnostic
        label_signal=lambda wildcards: (
            rules.true_label_wins.output
            if wildcards.reward == "duality" and TASKS.get("annotation")
            else []
        ),
        # and the ceiling check, where GRPO trains conditional generation
        ceiling=lambda wildcards: (
            rules.ceiling.output if wildcards.reward == "duality" and CEILING else []
        ),
    output:
        model=directory(f"{RESULTS}/models/grpo_{{reward}}/rep{{rep}}"),
    log:
        f"{LOGS}/grpo_{{reward}}/rep{{rep}}.log",
    wildcard_constraints:
        reward="duality|oracle|shuffled",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **TRAINING_RESOURCES,
    params:
        code=cli_code("training.grpo"),
        settings=lambda wildcards: cli_json(
            grpo=GRPO.replicate(wildcards.rep),
            rewards=REWARDS.replace(mode=wildcards.reward),
            lora=LORA,
            # label and CellPuzzles rollouts decoded as evaluation decodes them
            constrain_to_candidates=EVALUATION.constrain_to_candidates,
        ),
        files=lambda wildcards, input, output: cli_json(
            model=input.model,
            tables=list(input.tables),
            out=output.model,
            checkpoints=f"{RESULTS}/checkpoints/grpo_{wildcards.reward}/rep{wildcards.rep}",
            label_signal=input.label_signal[0] if input.label_signal else None,
            ceiling=input.ceiling[0] if input.ceiling else None,
            **report_files(f"grpo_{wildcards.reward}_rep{wildcards.rep}"),
        ),
    shell:
        "python -m cellduality.cli grpo --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule true_label_wins:
    input:
        model=rules.sft.output[0],
        tables=[
            f"{RESULTS}/tasks/annotation/{name}.parquet"
            for name in TASKS.get("annotation", [])
        ],
    output:
        f"{RESULTS}/diagnostics/true_label_wins/rep{{rep}}.json",
    log:
        f"{LOGS}/true_label_wins/rep{{rep}}.log",
    conda:
        "../envs/training.yaml"
    threads: 2
    resources:
        **GENERATION_RESOURCES,
    params:
        code=cli_code("training.label_signal"),
        # the diagnostic uses the RL prompts' selection seed and the reward's dual answer length
        settings=cli_json(
            diagnostics=DIAGNOSTICS,
            seed=TASK_TABLE.seed,
            max_new_tokens=GRPO.dual_max_new_tokens,
            # the annotation ceiling: the reward's KL-optimum at GRPO's beta
            beta=GRPO.beta,
        ),
        files=lambda wildcards, input, output: cli_json(
            model=input.model, tables=list(input.tables), out=output[0]
        ),
    shell:
        "python -m cellduality.cli true-label-wins --settings {params.settings:q} --files {params.files:q} --log {log:q}"


rule training:
    input:
        expand(rules.grpo.output.model, reward=GRPO.variants, rep=REPLICATES),
        (
            expand(rules.true_label_wins.output, rep=REPLICATES)
            if TASKS.get("annotation")
            else []
        ),


# Optional target (never part of all): upload a trained model folder with its model card to the Hugging Face
# Hub (config hub.*; the token only from the environment variable hub.token_env). The receipt names the commit.
rule push_to_hub:
    input:
        hub_model,
    output:
        f"{RESULTS}/hub/push_to_hub.json",
    log:
        f"{LOGS}/push_to_hub.log",
    conda:
        "../envs/training.yaml"
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=cli_code("training.publish"),
        settings=cli_json(hub=HUB_UPLOAD),
        files=lambda wildcards, input, output: cli_json(folder=input[0], out=output[0]),
    shell:
        "python -m cellduality.cli push-model --settings {params.settings:q} --files {params.files:q} --log {log:q}"
