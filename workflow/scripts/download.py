import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from cellduality.data.download import DownloadSettings, fetch, sha256_of
from cellduality.io import atomic_path
from cellduality.snakemake_script import log, run


def main(smk=snakemake):
    ds = smk.params.dataset
    field = f"datasets.{smk.wildcards.dataset}.{ds.get('field', 'source')}"
    settings = DownloadSettings.from_params(smk.params.download)
    out = fetch(ds["source"], smk.output.raw, ds["sha256"], settings=settings, field=field)
    digest = sha256_of(out)
    with atomic_path(smk.output.sha256) as tmp:
        tmp.write_text(f"{digest}  {Path(out).name}\n")
    log.info("fetched %s from %s (sha256 %s)", out, ds["source"], digest)


run(snakemake, main)
