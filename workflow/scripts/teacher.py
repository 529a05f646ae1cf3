import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.snakemake_script import run  # noqa: E402
from cellduality.teacher.filtering import FilterSettings  # noqa: E402
from cellduality.teacher.runner import TeacherSettings, default_cache_path  # noqa: E402
from cellduality.teacher.sft_data import write_sft_dataset  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    teacher = TeacherSettings.from_config(smk.config["teacher"])  # params hold the output-relevant subset
    write_sft_dataset(smk.input.table, smk.output.sft, smk.output.stats, teacher,
                      FilterSettings.from_config(smk.params.filtering),
                      cache_path=default_cache_path(teacher, smk.config["results_dir"]),
                      species=smk.params.dataset["species"], label=f"{smk.wildcards.task}/{smk.wildcards.dataset}")


run(snakemake, main)  # noqa: F821
