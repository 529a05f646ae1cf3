import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.report.figures import write_report_figures
from cellduality.snakemake_script import run


def main(smk=snakemake):
    write_report_figures(
        predictions=dict(zip(smk.params.variants, smk.input.predictions)),
        curves={v: Path(d) / "reward_curve.tsv" for v, d in zip(smk.params.grpo_variants, smk.input.curves)},
        label_signal=list(smk.input.label_signal),
        ceiling=list(smk.input.ceiling),
        data=smk.params.data,
        outputs=smk.output,
    )


run(snakemake, main)
