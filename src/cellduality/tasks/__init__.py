"""Stage 2, tasks (rules/tasks.smk): what a task is. The task registry (prompts, answer kind, parser,
reward, metrics per task and dual), the task-table row schema, prompt builders, inpainting masks, answer
parsing, RWJS and rewards. Teacher filtering, GRPO and evaluation all judge answers with these functions.

Settings, one class per config section: ``settings.TaskSettings`` (``tasks``), ``settings.TaskTableSettings``
(``task_tables``), ``settings.CellPuzzlesSettings`` (``cellpuzzles``), ``inpainting.InpaintingSettings``
(``inpainting``), ``rewards.RewardSettings`` (``rewards``).

Imports: data (label profiles of the SFT cells) and the ground floor.
"""
