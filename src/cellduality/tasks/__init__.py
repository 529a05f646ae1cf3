"""Stage 2, tasks (rules/tasks.smk): what a task is. The task registry (prompts, answer kind, parser,
reward, metrics per task and dual), the task-table row schema, prompt builders, inpainting masks, answer
parsing, RWJS and rewards. Teacher filtering, GRPO and evaluation all judge answers with these functions.

Imports only the ground floor.
"""
