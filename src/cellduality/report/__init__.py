"""Stage 6, report (rules/evaluation.smk, report rules): paper-style tables and figures.

Imports: evaluation and the ground floor.
"""
