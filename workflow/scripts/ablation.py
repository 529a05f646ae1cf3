import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.evaluation.ablation import run_ablation
from cellduality.evaluation.settings import AblationSettings, EmbeddingSettings
from cellduality.io import atomic_path
from cellduality.report.figures import ablation_figure
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    keys = [(arm, seed) for arm in smk.params.arms for seed in smk.params.seeds]
    table = run_ablation(dict(zip(keys, smk.input.predictions)), smk.input.tables, smk.params.data,
                         AblationSettings.from_params(smk.params.ablation),
                         EmbeddingSettings.from_params(smk.params.embedding))
    with atomic_path(smk.output.table) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    ablation_figure(table, smk.output.figure)
    log.info("ablation: %d rows\n%s", len(table), table.to_string(index=False))


run(snakemake, main)
