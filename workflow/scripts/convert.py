import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.data.convert import convert_file
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    report = convert_file(smk.input.raw, smk.output.h5ad, smk.output.report, smk.params.dataset,
                          dataset=smk.wildcards.dataset, obs_table=smk.input.get("obs_table"))
    log.info("converted: %s", report)


run(snakemake, main)
