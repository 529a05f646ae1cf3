import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.snakemake_script import log, run  # noqa: E402
from cellduality.tasks.tables import TaskTableParams, write_task_tables  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    p = smk.params.tables
    config = {"task_tables": {**p["task_tables"], "tasks": [smk.wildcards.task]}, "inpainting": p["inpainting"],
              "cellpuzzles": p["cellpuzzles"], "cell_sentence": {"top_k": p["top_k"]}}
    table = write_task_tables(smk.input.cells, smk.output[0], TaskTableParams.from_config(config),
                              required=[smk.wildcards.task], candidates_from=smk.input.get("candidates"))
    counts = table.groupby(["stage", "direction"]).size().to_dict()
    log.info("wrote %s: %d prompts %s", smk.output[0], len(table), counts)


run(snakemake, main)  # noqa: F821
