# Task stage: per-task prompt/answer tables (SFT, RL, evaluation rows) from the cell-sentence tables.


wildcard_constraints:
    task="|".join(TASKS) or "__none__",


rule task_table:
    input:
        unpack(task_table_inputs),
    output:
        f"{RESULTS}/tasks/{{task}}/{{dataset}}.parquet",
    log:
        f"{LOGS}/task_table/{{task}}/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=script_code("task_table.py"),
        task_tables=TASK_TABLE.params(),
        inpainting=INPAINTING.params(),
        cellpuzzles=CELLPUZZLES.params(),
        top_k=CELL_SENTENCE.top_k,
    script:
        "../workflow/scripts/task_table.py"


rule tasks:
    input:
        [
            expand(rules.task_table.output[0], task=task, dataset=names)
            for task, names in TASKS.items()
        ],
