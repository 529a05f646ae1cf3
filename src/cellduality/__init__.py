"""cellduality: teach language models to reason about single cells.

The library holds all pipeline logic; the Snakemake rules under ``rules/`` only call it. ``cellduality.annotate``
labels an AnnData's cells with a trained model (:func:`cellduality.evaluation.annotate.annotate`).
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    # loaded on first use, and by name rather than by an import statement: every module runs this package's
    # __init__, and the rerun digest (cellduality.provenance) follows import statements, so a static import here
    # would make every step's code include the whole evaluation stage
    if name == "annotate":
        return importlib.import_module("cellduality.evaluation.annotate").annotate
    raise AttributeError(f"module 'cellduality' has no attribute {name!r}")
