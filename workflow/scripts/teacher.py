import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.snakemake_script import run
from cellduality.tasks.settings import TaskTableSettings
from cellduality.teacher.filtering import FilterSettings
from cellduality.teacher.runner import TeacherSettings
from cellduality.teacher.sft_data import sft_cell_profiles, write_sft_dataset


def main(smk=snakemake):
    teacher = TeacherSettings.from_params(smk.params.teacher)
    data = (
        sft_cell_profiles(smk.input.cells, TaskTableSettings.from_params(smk.params.task_tables))
        if teacher.provider == "markers"
        else None
    )
    write_sft_dataset(smk.input.table, smk.output.sft, smk.output.stats, teacher,
                      FilterSettings.from_params(smk.params.filtering), data=data,
                      cache_path=smk.params.cache,
                      species=smk.params.dataset["species"], label=f"{smk.wildcards.task}/{smk.wildcards.dataset}")


run(snakemake, main)
