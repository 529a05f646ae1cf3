import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.snakemake_script import run  # noqa: E402
from cellduality.tasks.tables import TaskTableParams  # noqa: E402
from cellduality.teacher.filtering import FilterSettings  # noqa: E402
from cellduality.teacher.runner import TeacherSettings, default_cache_path  # noqa: E402
from cellduality.teacher.sft_data import sft_cell_profiles, write_sft_dataset  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    teacher = TeacherSettings.from_config(smk.config["teacher"])  # params hold the output-relevant subset
    data = sft_cell_profiles(smk.input.cells, TaskTableParams.from_dict(smk.params.task_tables)) \
        if teacher.provider == "markers" else None
    write_sft_dataset(smk.input.table, smk.output.sft, smk.output.stats, teacher,
                      FilterSettings.from_config(smk.params.filtering), data=data,
                      cache_path=default_cache_path(teacher, smk.config["results_dir"]),
                      species=smk.params.dataset["species"], label=f"{smk.wildcards.task}/{smk.wildcards.dataset}")


run(snakemake, main)  # noqa: F821
