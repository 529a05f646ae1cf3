"""Stage 1, data (rules/data.smk): sources (built-in, URL, local) -> download -> preprocess (normalisation,
gene symbols, QC) -> cell sentences (top-K genes per cell) with deterministic splits.

Imports only the ground floor (errors, io, seeding, config).
"""
