import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.data.preprocess import PreprocessSettings, preprocess_file
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    settings = PreprocessSettings.from_params(smk.params.preprocess)
    report = preprocess_file(smk.input[0], smk.output.h5ad, smk.output.qc, smk.params.dataset, settings,
                             smk.wildcards.dataset)
    log.info("preprocessed: %s", report)


run(snakemake, main)
