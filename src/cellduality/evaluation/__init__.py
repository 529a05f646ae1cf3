"""Stage 5, evaluation (rules/evaluation.smk): model predictions on eval prompts, metrics (classification,
CellPuzzles, generated cells via rank -> expression inversion) and non-LLM baselines.

Imports training, tasks, data and the ground floor; only report imports it.
"""
