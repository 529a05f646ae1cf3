# Teacher stage: chain-of-thought samples for every SFT prompt of a task table, filtered into SFT data
# (rejection sampling for labels, RWJS >= threshold for gene lists; duals only for accepted primal prompts).
# Runs on the submitting machine (localrule: API teachers need the network). Cap concurrent API-bound jobs
# with `--resources teacher_api=N` (profiles/slurm sets 1); the offline markers teacher needs no such slot.
# Responses are cached in teacher.cache_dir (default <results_dir>/teacher_cache), outside the rule's
# outputs, so a failed or interrupted job resumes without paying for any response twice.


localrules:
    teacher,
    sft_data,


rule teacher:
    input:
        table=rules.task_table.output[0],
        cells=rules.cell_sentences.output.table,
        knowledge=teacher_knowledge,
    output:
        sft=f"{RESULTS}/sft/{{task}}/{{dataset}}.parquet",
        stats=f"{RESULTS}/sft/{{task}}/{{dataset}}.stats.json",
    log:
        f"{LOGS}/teacher/{{task}}/{{dataset}}.log",
    conda:
        "../envs/teacher.yaml"
    threads: 1
    resources:
        teacher_api=0 if _MARKERS else 1,
        mem_mb=4000,
        runtime=1500 if TEACHER.batch_api else 240,
    params:
        code=script_code("teacher.py"),
        # the whole section reaches the job in a param Snakemake does not record (a function of output); only
        # the fields that change the SFT data are recorded, so tuning concurrency, retries, timeouts, cache or
        # batch mode reruns nothing (cellduality.teacher.runner.TeacherSettings)
        teacher=lambda wildcards, output: TEACHER.params(),
        teacher_reruns=TEACHER.rerun_params(),
        cache=lambda wildcards, output: str(default_cache_path(TEACHER, RESULTS)),
        filtering=FILTERING.params(),
        task_tables=TASK_TABLE.params(),
        dataset=dataset_params("species"),
    script:
        "../workflow/scripts/teacher.py"


rule sft_data:
    input:
        SFT_DATA,
