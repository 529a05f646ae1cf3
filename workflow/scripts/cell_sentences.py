import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.data.sentence_table import write_sentence_table  # noqa: E402
from cellduality.io import atomic_path  # noqa: E402
from cellduality.snakemake_script import log, run  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    cs, splits, ds = smk.params.cell_sentence, smk.params.splits, smk.params.dataset
    counts = write_sentence_table(smk.input[0], smk.output.table, dataset=smk.wildcards.dataset, top_k=cs["top_k"],
                                  chunk_size=cs["chunk_size"], tie_break=cs["tie_break"], role=ds["role"],
                                  test_fraction=splits["test_fraction"], seed=splits["seed"],
                                  ood_labels=ds["ood_labels"])
    with atomic_path(smk.output.summary) as tmp:
        tmp.write_text(json.dumps({"dataset": smk.wildcards.dataset, "top_k": cs["top_k"], "splits": counts}, indent=2))
    log.info("wrote %s: %s", smk.output.table, counts)


run(snakemake, main)  # noqa: F821
