import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

import pandas as pd

from cellduality.evaluation.score import chance_results, run_baselines, score_predictions
from cellduality.evaluation.settings import EmbeddingSettings
from cellduality.io import atomic_path
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    pred = run_baselines(smk.input.tables, smk.params.data, smk.params.control_values,
                         smk.params.max_prompts_per_table)
    metrics = score_predictions(pred, smk.input.tables, smk.params.data,
                                embedding=EmbeddingSettings.from_params(smk.params.embedding))
    chance = chance_results(smk.input.tables, smk.params.max_prompts_per_table)
    metrics = pd.concat([metrics, chance], ignore_index=True)
    with atomic_path(smk.output.predictions) as tmp:
        pred.to_parquet(tmp, index=False)
    with atomic_path(smk.output.metrics) as tmp:
        metrics.to_csv(tmp, sep="\t", index=False)
    log.info("baselines: %d predictions, %d metric values", len(pred), len(metrics))


run(snakemake, main)
