import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

import pandas as pd

from cellduality.evaluation.score import score_predictions
from cellduality.evaluation.settings import EmbeddingSettings
from cellduality.io import atomic_path
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    pred = pd.read_parquet(smk.input.predictions)
    pred["model"] = smk.wildcards.variant
    metrics = score_predictions(pred, smk.input.tables, smk.params.data,
                                embedding=EmbeddingSettings.from_params(smk.params.embedding))
    with atomic_path(smk.output[0]) as tmp:
        metrics.to_csv(tmp, sep="\t", index=False)
    log.info("%s: %d metric values", smk.wildcards.variant, len(metrics))


run(snakemake, main)
