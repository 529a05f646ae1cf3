import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

import pandas as pd

from cellduality.evaluation.settings import EmbeddingSettings, EvaluationSettings
from cellduality.io import atomic_path
from cellduality.report.tables import paper_tables, protocol_note, render_html, render_markdown
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    results = pd.concat([pd.read_csv(p, sep="\t") for p in [*smk.input.metrics, smk.input.baselines]],
                        ignore_index=True)
    evaluation = EvaluationSettings.from_params(smk.params.evaluation)
    embedding = EmbeddingSettings.from_params(smk.params.embedding)
    layouts = paper_tables(results, embedding_method=embedding.method)
    note = protocol_note(evaluation, embedding, smk.params.replicates)
    with atomic_path(smk.output.results) as tmp:
        results.to_csv(tmp, sep="\t", index=False)
    with atomic_path(smk.output.html) as tmp:
        tmp.write_text(render_html(layouts, preamble=note))
    with atomic_path(smk.output.markdown) as tmp:
        tmp.write_text(render_markdown(layouts, preamble=note))
    log.info("wrote %d tables from %d metric values", len(layouts), len(results))


run(snakemake, main)
