import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

import pandas as pd  # noqa: E402

from cellduality.evaluation.score import score_predictions  # noqa: E402
from cellduality.io import atomic_path  # noqa: E402
from cellduality.snakemake_script import log, run  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    pred = pd.read_parquet(smk.input.predictions)
    pred["model"] = smk.wildcards.variant
    metrics = score_predictions(pred, smk.input.tables, smk.params.data, embedding=smk.params.embedding)
    with atomic_path(smk.output[0]) as tmp:
        metrics.to_csv(tmp, sep="\t", index=False)
    log.info("%s: %d metric values", smk.wildcards.variant, len(metrics))


run(snakemake, main)  # noqa: F821
