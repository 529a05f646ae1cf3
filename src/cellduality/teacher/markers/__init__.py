"""The offline markers teacher: reasons from shipped marker and gene-program tables, no network."""
