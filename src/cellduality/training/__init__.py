"""Stage 4, training (rules/training.smk): the embedded tiny model, SFT (TRL SFTTrainer), duality GRPO
(TRL GRPOTrainer), LM decoding and the "true label wins" signal diagnostic.

Imports tasks and the ground floor; never teacher.
"""
