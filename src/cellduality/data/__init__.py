"""Stage 1, data (rules/data.smk): sources (built-in, URL, local) -> download -> preprocess (normalisation,
gene symbols, QC) -> cell sentences (top-K genes per cell) with deterministic splits.

Settings, one class per config section: ``download.DownloadSettings`` (``download``),
``preprocess.PreprocessSettings`` (``preprocess``), ``sentence_table.CellSentenceSettings`` (``cell_sentence``),
``splits.SplitSettings`` (``splits``).

Imports: the ground floor.
"""
