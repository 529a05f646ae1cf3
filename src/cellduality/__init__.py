"""cellduality: teach language models to reason about single cells.

The library holds all pipeline logic; the Snakemake rules under ``rules/`` only call it.
"""

__version__ = "0.1.0"
