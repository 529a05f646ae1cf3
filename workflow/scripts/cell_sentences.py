import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.data.sentence_table import CellSentenceSettings, peer_ood_cells, write_sentence_table
from cellduality.data.splits import SplitSettings
from cellduality.io import atomic_path
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    cell_sentence = CellSentenceSettings.from_params(smk.params.cell_sentence)
    splits = SplitSettings.from_params(smk.params.splits)
    ds, context = smk.params.dataset, smk.params.cells
    counts = write_sentence_table(smk.input[0], smk.output.table, dataset=smk.wildcards.dataset,
                                  cell_sentence=cell_sentence, splits=splits, role=ds["role"],
                                  ood_labels=ds["ood_labels"], origin=context["origin"],
                                  ood_cells=peer_ood_cells(context, list(smk.input.ood_peers)))
    summary = {"dataset": smk.wildcards.dataset, "top_k": cell_sentence.top_k, "splits": counts}
    with atomic_path(smk.output.summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    log.info("wrote %s: %s", smk.output.table, counts)


run(snakemake, main)
