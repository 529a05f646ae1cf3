"""Stage 4, training (rules/training.smk): the embedded tiny model, SFT (TRL SFTTrainer), duality GRPO
(TRL GRPOTrainer), decoding (constrained generation), the model cards of trained model folders and the
"true label wins" signal diagnostic.

Settings (``settings``): ``ModelSettings`` (``model``), ``EmbeddedModelSettings`` (``model.embedded``),
``LoraSettings`` (``model.lora``), ``SFTSettings`` (``sft``), ``GRPOSettings`` (``grpo``), ``DiagnosticsSettings``
(``diagnostics``), ``TrainingSettings`` (``training``), ``HubSettings`` (``hub``).

Imports: tasks and the ground floor; never teacher.
"""
