import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.evaluation.score import run_baselines, score_predictions  # noqa: E402
from cellduality.io import atomic_path  # noqa: E402
from cellduality.snakemake_script import log, run  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    pred = run_baselines(smk.input.predictions, smk.input.tables, smk.params.data, smk.params.control_values)
    metrics = score_predictions(pred, smk.input.tables, smk.params.data, embedding=smk.params.embedding)
    with atomic_path(smk.output.predictions) as tmp:
        pred.to_parquet(tmp, index=False)
    with atomic_path(smk.output.metrics) as tmp:
        metrics.to_csv(tmp, sep="\t", index=False)
    log.info("baselines: %d predictions, %d metric values", len(pred), len(metrics))


run(snakemake, main)  # noqa: F821
