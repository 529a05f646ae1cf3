import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.data.preprocess import preprocess_file  # noqa: E402
from cellduality.snakemake_script import log, run  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    report = preprocess_file(smk.input[0], smk.output.h5ad, smk.output.qc, smk.params.dataset,
                             smk.params.preprocess, smk.wildcards.dataset)
    log.info("preprocessed: %s", report)


run(snakemake, main)  # noqa: F821
