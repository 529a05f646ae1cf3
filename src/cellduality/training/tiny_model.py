"""The embedded base model: a tiny Llama-architecture causal LM with a tokenizer trained locally.

The tokenizer is a byte-level BPE trained on the prompt/answer text of the task tables, plus every gene
symbol of the cell-sentence tables as a whole-word token, plus every answer label of the task tables (cell
types, sensitivity classes, drugs: the candidates of label and assignment answers) as one token, so a tiny
model answers a classification prompt by choosing one token instead of spelling ``CD14+ Monocyte`` in
pieces, plus the reasoning tags (``<think>`` ...) as
ordinary (non-special) tokens so that GRPO, which decodes with ``skip_special_tokens``, keeps them.
It is saved with ``save_pretrained`` and loads like any Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from cellduality.errors import CellDualityError
from cellduality.io import follow_umask
from cellduality.tasks.schema import decode_column, read_task_frame
from cellduality.training.settings import EmbeddedModelSettings

BOS, EOS, PAD, UNK = "<|begin|>", "<|end|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
ANSWER_TAG = "<answer>"
ANSWER_CLOSE = "</answer>"
REASONING_TAGS = ("<think>", "</think>", ANSWER_TAG, ANSWER_CLOSE)
# The prompt rendered with add_generation_prompt is a prefix of the rendered conversation, so TRL can
# compute the loss on the completion only; an assistant turn ends with EOS, so generation learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def gene_vocabulary(sentence_tables: Iterable[str | Path]) -> list[str]:
    """Sorted union of the genes appearing in the cell-sentence tables."""
    genes: set[str] = set()
    for path in sentence_tables:
        for sentence in pd.read_parquet(path, columns=["sentence"])["sentence"]:
            genes.update(sentence.split())
    return sorted(genes)


def label_vocabulary(task_tables: Iterable[str | Path]) -> list[str]:
    """Sorted union of the labels and candidates of the task tables' label and assignment answers."""
    from cellduality.tasks.registry import get_task

    labels: set[str] = set()
    for path in task_tables:
        table = read_task_frame(path, columns=["prompt_id", "task", "direction", "label", "candidates"])
        kinds = {(t, d): get_task(t).kind(d) for t, d in set(zip(table["task"], table["direction"]))}
        keep = [kinds[(t, d)] in ("label", "assignment") for t, d in zip(table["task"], table["direction"])]
        for candidates in decode_column(table[keep], "candidates", path):
            labels.update(str(c) for c in candidates)
        single = [kinds[(t, d)] == "label" for t, d in zip(table["task"], table["direction"])]
        labels.update(str(label) for label in table.loc[single, "label"] if label)  # not joined assignments
    return sorted(label for label in labels if label.strip())


def corpus_from_task_tables(task_tables: Iterable[str | Path]) -> Iterator[str]:
    """Prompt and answer texts of the task tables (the text the model will read and write)."""
    for path in task_tables:
        table = read_task_frame(path, columns=["prompt_id", "prompt", "answer"])
        for prompt, answer in zip(decode_column(table, "prompt", path), table["answer"]):
            for message in prompt:
                yield message["content"]
            if answer:
                yield answer


def train_tokenizer(corpus: Iterable[str], genes: Sequence[str], vocab_size: int = 2000,
                    labels: Sequence[str] = ()):
    """A fast BPE tokenizer with whole-gene and whole-label tokens and the chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK, *ROLE_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_tokens([AddedToken(tag, normalized=False) for tag in REASONING_TAGS])
    # a gene is one token, with or without its leading space (sentences separate genes by spaces); the
    # space-led form needs no word-boundary check on the left, the bare form (after "\n", ", ") does
    tokenizer.add_tokens([AddedToken(f" {g}", normalized=False) for g in genes])
    tokenizer.add_tokens([AddedToken(g, single_word=True, normalized=False) for g in genes])
    tokenizer.add_tokens([AddedToken(label, single_word=True, normalized=False) for label in labels])
    tokenizer.add_tokens([AddedToken(f" {label}", normalized=False) for label in labels])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, additional_special_tokens=list(ROLE_TOKENS))
    # whole-item tokens, saved in tokenizer_config.json: generation keeps answer items distinct
    # (cellduality.training.decoding.UniqueAnswerItems)
    fast.init_kwargs["answer_items"] = [*genes, *(f" {g}" for g in genes), *labels, *(f" {x}" for x in labels)]
    fast.init_kwargs["label_items"] = [*labels, *(f" {x}" for x in labels)]  # candidate-constrained decoding
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(sentence_tables: Sequence[str | Path], task_tables: Sequence[str | Path], out_dir: str | Path,
                     size: EmbeddedModelSettings) -> Path:
    """Train the tokenizer, initialise a tiny Llama of ``size`` (config ``model.embedded``) and save both to
    ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if not task_tables:
        raise CellDualityError("model.embedded: no task tables to train the tokenizer on; assign datasets under tasks:")
    genes = gene_vocabulary(sentence_tables)
    tokenizer = train_tokenizer(corpus_from_task_tables(task_tables), genes, size.vocab_size,
                                label_vocabulary(task_tables))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size.hidden_size,
                         intermediate_size=size.intermediate_size, num_hidden_layers=size.num_layers,
                         num_attention_heads=size.num_heads, num_key_value_heads=size.num_heads,
                         max_position_embeddings=size.max_position_embeddings, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(size.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    follow_umask(out_dir)
    return out_dir
