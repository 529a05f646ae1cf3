"""Stage 3, teacher (rules/teacher.smk): chain-of-thought answers from a teacher LLM (OpenAI-compatible,
Gemini, or the offline markers teacher in ``teacher.markers``), cached per request, filtered (rejection
sampling, rank-aware filtering) into SFT data.

Settings: ``runner.TeacherSettings`` (``teacher``), ``filtering.FilterSettings`` (``filtering``).

Imports: data, tasks and the ground floor; never training.
"""
