import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.snakemake_script import log, run
from cellduality.tasks.inpainting import InpaintingSettings
from cellduality.tasks.settings import CellPuzzlesSettings, TaskTableSettings
from cellduality.tasks.tables import write_task_tables


def main(smk=snakemake):
    task = smk.wildcards.task
    table = write_task_tables(smk.input.cells, smk.output[0], [task], required=[task],
                              tables=TaskTableSettings.from_params(smk.params.task_tables),
                              inpainting=InpaintingSettings.from_params(smk.params.inpainting),
                              cellpuzzles=CellPuzzlesSettings.from_params(smk.params.cellpuzzles),
                              top_k=smk.params.top_k, candidates_from=smk.input.get("candidates"))
    counts = table.groupby(["stage", "direction"]).size().to_dict()
    log.info("wrote %s: %d prompts %s", smk.output[0], len(table), counts)


run(snakemake, main)
