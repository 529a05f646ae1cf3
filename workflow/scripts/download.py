import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from cellduality.data.download import DownloadLimits, fetch, sha256_of  # noqa: E402
from cellduality.io import atomic_path  # noqa: E402
from cellduality.snakemake_script import log, run  # noqa: E402


def main(smk=snakemake):  # noqa: F821
    ds, opts = smk.params.dataset, smk.params.download
    field = f"datasets.{smk.wildcards.dataset}.{ds.get('field', 'source')}"
    out = fetch(ds["source"], smk.output.raw, ds["sha256"], limits=DownloadLimits.from_config(opts), field=field)
    digest = sha256_of(out)
    with atomic_path(smk.output.sha256) as tmp:
        tmp.write_text(f"{digest}  {Path(out).name}\n")
    log.info("fetched %s from %s (sha256 %s)", out, ds["source"], digest)


run(snakemake, main)  # noqa: F821
