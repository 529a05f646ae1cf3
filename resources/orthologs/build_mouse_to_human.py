"""Build ``mouse_to_human.tsv.gz`` (beside this script) from CellTypist's Ensembl 105 human-mouse gene table.

Source: ``celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv`` of the ``celltypist`` package (1.7.1;
Teichmann Lab, MIT licence), two columns without a header: human gene symbol, mouse gene symbol (Ensembl release
105 orthologs; a side is empty where a gene has no ortholog). Rows with an empty side are left out: a mouse gene
absent from the output has no human ortholog in that table.

Output: a gzipped TSV with ``#`` comment lines (source, licence, counts), then a header row ``mouse_symbol
human_symbol orthology`` and one row per (mouse, human) pair, sorted. ``orthology`` is read from the mouse side:

- ``one2one``: the mouse gene pairs with one human gene, which pairs with no other mouse gene (Cd3e - CD3E);
- ``one2many``: the mouse gene pairs with several human genes, none of which pairs with another mouse gene;
- ``many2one``: the mouse gene pairs with one human gene that other mouse genes pair with too (Ins1, Ins2 - INS);
- ``many2many``: every other pair.

``gene_map: mouse_to_human`` (src/cellduality/data/preprocess.py) uses the ``one2one`` rows only.

Run: ``python resources/orthologs/build_mouse_to_human.py [path/to/Ensembl105_Human2Mouse_Genes.csv]`` (default:
the file of the installed celltypist). The output is byte-for-byte reproducible (gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import io
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "mouse_to_human.tsv.gz"
SOURCE_NAME = "Ensembl105_Human2Mouse_Genes.csv"


def default_source() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("celltypist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("celltypist is not installed; pass the path of Ensembl105_Human2Mouse_Genes.csv")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "samples" / SOURCE_NAME


def orthology(pairs: pd.DataFrame) -> pd.Series:
    """The mouse-side orthology type of each (mouse, human) pair."""
    per_mouse = pairs.groupby("mouse_symbol")["human_symbol"].transform("size")
    per_human = pairs.groupby("human_symbol")["mouse_symbol"].transform("size")
    # a mouse gene is one2many when it has several human partners that all have it as their only mouse partner
    human_only_this = (per_human == 1).groupby(pairs["mouse_symbol"]).transform("all")
    kind = pd.Series("many2many", index=pairs.index)
    kind[(per_mouse == 1) & (per_human == 1)] = "one2one"
    kind[(per_mouse > 1) & human_only_this] = "one2many"
    kind[(per_mouse == 1) & (per_human > 1)] = "many2one"
    return kind


def build(source: Path) -> bytes:
    table = pd.read_csv(source, header=None, names=["human_symbol", "mouse_symbol"], dtype=str,
                        keep_default_na=False, na_filter=False)
    table = table.apply(lambda col: col.str.strip())
    pairs = table[(table.human_symbol != "") & (table.mouse_symbol != "")].drop_duplicates()
    pairs = pairs[["mouse_symbol", "human_symbol"]].sort_values(["mouse_symbol", "human_symbol"], kind="stable")
    pairs = pairs.reset_index(drop=True)
    pairs["orthology"] = orthology(pairs)
    counts = pairs.orthology.value_counts()
    try:
        source_version = f"celltypist {version('celltypist')}"
    except Exception:  # a CSV given by path without the package installed
        source_version = "celltypist"
    header = [
        f"# mouse -> human gene symbols: Ensembl release 105 orthologs, from {source_version} "
        f"data/samples/{SOURCE_NAME} (Teichmann Lab, MIT licence)",
        "# built by resources/orthologs/build_mouse_to_human.py; orthology is the mouse-side type (one2one, "
        "one2many, many2one, many2many)",
        f"# {len(pairs)} pairs, {pairs.mouse_symbol.nunique()} mouse genes, {pairs.human_symbol.nunique()} human "
        "genes; " + ", ".join(f"{kind} {int(counts.get(kind, 0))}"
                              for kind in ("one2one", "one2many", "many2one", "many2many")),
    ]
    text = "\n".join(header) + "\n" + pairs.to_csv(sep="\t", index=False, lineterminator="\n")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(text.encode())
    return buffer.getvalue()


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else default_source()
    OUTPUT.write_bytes(build(source))
    with gzip.open(OUTPUT, "rt") as handle:
        print("".join(line for line in handle if line.startswith("#")), end="")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
