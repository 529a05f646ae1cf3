"""cellduality: teach language models to reason about single cells.

The library holds all pipeline logic; the Snakemake rules under ``rules/`` only call it. ``cellduality.annotate``
labels an AnnData's cells with a trained model (:func:`cellduality.evaluation.annotate.annotate`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "annotate":  # imported on first use: ``import cellduality`` stays light
        from cellduality.evaluation.annotate import annotate

        return annotate
    raise AttributeError(f"module 'cellduality' has no attribute {name!r}")
