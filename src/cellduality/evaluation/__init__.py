"""Stage 5, evaluation (rules/evaluation.smk): model predictions on eval prompts, metrics (classification,
CellPuzzles, generated cells via rank -> expression inversion) and non-LLM baselines, all on the prompts
``selection.eval_rows`` picks; ``annotate`` labels new cells with a trained model.

Settings (``settings``): ``EvaluationSettings`` (``evaluation``), ``EmbeddingSettings`` (``evaluation.embedding``),
``AnnotateSettings`` (``annotate``).

Imports: data, tasks, training and the ground floor; only report imports it.
"""
