# cellduality: raw single-cell data -> cell sentences -> teacher CoT -> SFT -> duality GRPO -> evaluation.
# Run:  snakemake --cores 2                      (embedded default, offline)
#       snakemake --profile profiles/slurm --configfile config/paper.yaml   (cluster)
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/tasks.smk"
include: "rules/teacher.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.tasks.input,
        rules.sft_data.input,
        rules.training.input,
        rules.evaluation.input,
