"""Batched chat generation with a causal LM (used for dual rewards, diagnostics and evaluation).

Answers list distinct items: a cell sentence names each gene once, a CellPuzzles assignment uses each cell type
once. With a tokenizer that knows its whole-item tokens (the embedded tokenizer records every gene and label
token under ``answer_items``, see :mod:`cellduality.training.tiny_model`), :class:`UniqueAnswerItems` forbids
generating an item token that the reply's answer already contains (either spelling: ``CD74`` or `` CD74``), so
a small model cannot loop on one gene. When the tokenizer has an ``<answer>`` token, only what follows it
counts: the reasoning may name a gene or a cell type that the answer names again. With ``allowed_labels``
(``evaluation.constrain_to_candidates``, ``annotate``), :class:`CandidateItems` also bans label tokens that
are not among the prompt's candidates, and :class:`LabelAnswerGrammar` keeps the answer to candidate labels
joined by the separator. Tokenizers without ``answer_items`` (Hugging Face models, whose genes
span several tokens) decode unconstrained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cellduality.tasks.prompts import CELLPUZZLES_ANSWER_SEP
from cellduality.training.tiny_model import ANSWER_CLOSE, ANSWER_TAG

Messages = list[dict[str, str]]


def answer_item_groups(tokenizer) -> dict[int, int]:
    """``token id -> item index`` for the tokenizer's whole-item tokens (both spellings of an item share it)."""
    items = tokenizer.init_kwargs.get("answer_items") or []
    vocab = tokenizer.get_vocab()
    groups: dict[str, int] = {}
    out: dict[int, int] = {}
    for text in items:
        if text in vocab:
            out[vocab[text]] = groups.setdefault(text.strip(), len(groups))
    return out


class UniqueAnswerItems:
    """Logits processor: an item token already generated in this reply (after ``prompt_length``) is banned;
    with ``answer_token`` (the id of ``<answer>``) only items generated after that token count; with ``rows``
    (one flag per batch row) only the flagged rows are constrained."""

    def __init__(self, groups: dict[int, int], prompt_length: int, answer_token: int | None = None,
                 rows: Sequence[bool] | None = None) -> None:
        self.groups = groups
        self.prompt_length = prompt_length
        self.answer_token = answer_token
        self.rows = None if rows is None else list(rows)
        self.n_groups = max(groups.values(), default=-1) + 1
        self._vocab_groups = None  # token id -> item index (n_groups = no item), built once per vocabulary size

    def _group_of(self, vocab_size: int, device):
        import torch

        if self._vocab_groups is None or len(self._vocab_groups) != vocab_size:
            table = torch.full((vocab_size,), self.n_groups, dtype=torch.long)
            for token, group in self.groups.items():
                if token < vocab_size:
                    table[token] = group
            self._vocab_groups = table.to(device)
        return self._vocab_groups

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0 or self.n_groups == 0:
            return scores
        group_of = self._group_of(scores.shape[1], scores.device)
        items = group_of[generated.clamp(max=scores.shape[1] - 1)]
        if self.answer_token is not None:  # reasoning (before <answer>) maps to the "no item" column
            in_answer = (generated == self.answer_token).cumsum(dim=1) > 0
            items = items.masked_fill(~in_answer, self.n_groups)
        seen = torch.zeros(scores.shape[0], self.n_groups + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, items, True)
        banned = seen[:, group_of] & (group_of < self.n_groups)
        if self.rows is not None:
            banned &= torch.tensor(self.rows[: scores.shape[0]], dtype=torch.bool, device=scores.device)[:, None]
        return scores.masked_fill(banned, float("-inf"))


def label_item_tokens(tokenizer) -> dict[int, str]:
    """``token id -> label`` for the tokenizer's whole-label tokens (both spellings), from ``label_items``."""
    vocab = tokenizer.get_vocab()
    return {vocab[text]: text.strip() for text in tokenizer.init_kwargs.get("label_items") or [] if text in vocab}


class CandidateItems:
    """Logits processor: in row i, label tokens outside ``allowed[i]`` are banned (None: no restriction), so
    a label or assignment answer can only name the prompt's candidates (constrained decoding)."""

    def __init__(self, labels: dict[int, str], allowed: Sequence[Sequence[str] | None]) -> None:
        self.labels = labels
        self.allowed = [None if a is None else set(a) for a in allowed]
        self._mask = None

    def _banned(self, vocab_size: int, device):
        import torch

        if self._mask is None or self._mask.shape[1] != vocab_size:
            mask = torch.zeros(len(self.allowed), vocab_size, dtype=torch.bool)
            for row, allowed in enumerate(self.allowed):
                if allowed is None:
                    continue
                for token, label in self.labels.items():
                    if token < vocab_size and label not in allowed:
                        mask[row, token] = True
            self._mask = mask.to(device)
        return self._mask

    def __call__(self, input_ids, scores):
        return scores.masked_fill(self._banned(scores.shape[1], scores.device)[: scores.shape[0]], float("-inf"))


class LabelAnswerGrammar:
    """Logits processor for the rows with candidates: inside the answer (after the last ``<answer>``), a label or
    CellPuzzles answer is labels joined by the separator and closed by ``</answer>``: after ``<answer>`` or a
    separator only a label token may follow, after a label only the separator (while fewer labels than
    candidates were named) or ``</answer>``. Without it a small model that must name the one candidate left for
    the last cell of a puzzle writes a gene or a tag there instead (a format error)."""

    def __init__(self, labels: dict[int, str], allowed: Sequence[Sequence[str] | None], prompt_length: int,
                 open_token: int, close_token: int, separator: int) -> None:
        self.label_ids = sorted(labels)
        self.label_set = set(labels)
        self.n_allowed = [None if a is None else len(set(a)) for a in allowed]
        self.prompt_length = prompt_length
        self.open, self.close, self.separator = open_token, close_token, separator

    def __call__(self, input_ids, scores):
        for row, n_allowed in enumerate(self.n_allowed[: scores.shape[0]]):
            generated = input_ids[row, self.prompt_length:].tolist()
            if n_allowed is None or self.open not in generated:
                continue
            answer = generated[len(generated) - generated[::-1].index(self.open):]
            if self.close in answer:
                continue
            last = answer[-1] if answer else self.open
            if last in (self.open, self.separator):
                keep = self.label_ids
            elif last in self.label_set:
                named = sum(token in self.label_set for token in answer)
                keep = [self.separator, self.close] if named < n_allowed else [self.close]
            else:
                continue
            kept = scores[row, keep].clone()
            scores[row] = float("-inf")
            scores[row, keep] = kept
        return scores


def answer_grammar_tokens(tokenizer) -> tuple[int, int, int] | None:
    """``(<answer>, </answer>, separator)`` token ids where each is one token of ``tokenizer`` (the embedded
    tokenizer), else None (no grammar)."""
    vocab = tokenizer.get_vocab()
    separator = tokenizer(CELLPUZZLES_ANSWER_SEP.rstrip(), add_special_tokens=False)["input_ids"]
    if ANSWER_TAG not in vocab or ANSWER_CLOSE not in vocab or len(separator) != 1:
        return None
    return vocab[ANSWER_TAG], vocab[ANSWER_CLOSE], separator[0]


def answer_processors(tokenizer, prompt_length: int, *, unique_items: bool = True,
                      allowed_labels: Sequence[Sequence[str] | None] | None = None,
                      unique_rows: Sequence[bool] | None = None,
                      gene_rows: Sequence[bool] | None = None) -> list:
    """The logits processors of one batch whose prompts are ``prompt_length`` tokens long (left-padded):
    :class:`UniqueAnswerItems` (on ``unique_rows`` only, when given) where the tokenizer records its answer items,
    and with ``allowed_labels`` (one entry per row, None = free) :class:`CandidateItems` and
    :class:`LabelAnswerGrammar` where it records its labels and answer tags. ``gene_rows`` (one flag per row):
    rows whose answer is a gene list, in which no label token may be generated (a cell type, drug or response
    is not a gene: without this a policy can learn to write one into its cells). Empty for other tokenizers."""
    groups = answer_item_groups(tokenizer) if unique_items else {}
    answer_token = tokenizer.get_vocab().get(ANSWER_TAG)
    processors: list = [UniqueAnswerItems(groups, prompt_length, answer_token, unique_rows)] if groups else []
    genes = list(gene_rows) if gene_rows is not None and any(gene_rows) else None
    labels = label_item_tokens(tokenizer) if allowed_labels is not None or genes else {}
    if labels:
        rows = list(allowed_labels) if allowed_labels is not None else [None] * len(genes)
        banned = rows if genes is None else [() if gene else a for a, gene in zip(rows, genes)]
        processors.append(CandidateItems(labels, banned))
        grammar = answer_grammar_tokens(tokenizer)
        if grammar and allowed_labels is not None and any(a is not None for a in allowed_labels):
            processors.append(LabelAnswerGrammar(labels, rows, prompt_length, *grammar))
    return processors


def generate_chat(model, tokenizer, conversations: Sequence[Messages], *, max_new_tokens: int = 256,
                  temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16,
                  unique_items: bool = True, allowed_labels: Sequence[Sequence[str] | None] | None = None,
                  gene_rows: Sequence[bool] | None = None) -> list[str]:
    """Generate one assistant reply per conversation (greedy when ``temperature`` is 0); ``unique_items``
    applies :class:`UniqueAnswerItems` when the tokenizer records its answer items; ``allowed_labels`` (one
    entry per conversation, None for no restriction) applies :class:`CandidateItems` when it records its label
    items (``label_items``, see :mod:`cellduality.training.tiny_model`); ``gene_rows`` (one flag per
    conversation) bans label tokens from gene-list replies (:func:`answer_processors`)."""
    import torch
    from transformers import LogitsProcessorList

    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
                     for c in conversations[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
                {"do_sample": False}
            rows = None if allowed_labels is None else allowed_labels[start:start + batch_size]
            genes = None if gene_rows is None else gene_rows[start:start + batch_size]
            processors = answer_processors(tokenizer, batch["input_ids"].shape[1], unique_items=unique_items,
                                           allowed_labels=rows, gene_rows=genes)
            if processors:
                sampling["logits_processor"] = LogitsProcessorList(processors)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies


ANSWER_ONLY_PREFIX = f"<think></think>\n{ANSWER_TAG}"  # a reply without reasoning, up to its answer


def continuation_log_probs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                           batch_size: int = 32) -> list[float]:
    """The summed log-probability of each continuation's tokens right after its context (texts, teacher-forced,
    in right-padded batches); -inf where the continuation adds no token."""
    import torch

    out = [float("-inf")] * len(contexts)
    items = []  # (index, token ids, number of continuation tokens at the end)
    for i, (context, continuation) in enumerate(zip(contexts, continuations)):
        n_before = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if len(ids) > n_before:
            items.append((i, ids, len(ids) - n_before))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logp = logits[:, :-1].float().log_softmax(-1).gather(2, input_ids[:, 1:, None].to(model.device))[..., 0]
        for row, (i, ids, n_new) in enumerate(chunk):
            out[i] = float(logp[row, len(ids) - 1 - n_new: len(ids) - 1].sum().item())
    return out


def reply_prefix(reply: str) -> str:
    """A reply up to and including its ``<answer>`` tag, where its answer is scored (:data:`ANSWER_ONLY_PREFIX`
    when it has none)."""
    at = reply.find(ANSWER_TAG)
    return reply[: at + len(ANSWER_TAG)] if at >= 0 else ANSWER_ONLY_PREFIX


def candidate_log_probs(model, tokenizer, conversations: Sequence[Messages], candidates: Sequence[Sequence[str]],
                        prefixes: Sequence[str] | None = None, batch_size: int = 32) -> list[list[float]]:
    """Per conversation, the model's log-probability of answering each of its candidates: teacher-forced after
    the chat prompt and the reply's prefix (``prefixes``, e.g. :func:`reply_prefix` of the model's own reply, so
    a reasoning model is scored after its reasoning; default :data:`ANSWER_ONLY_PREFIX`)."""
    prefixes = prefixes if prefixes is not None else [ANSWER_ONLY_PREFIX] * len(conversations)
    contexts, continuations = [], []
    for conversation, options, prefix in zip(conversations, candidates, prefixes):
        prompt = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        contexts += [prompt + prefix] * len(options)
        continuations += list(options)
    flat = iter(continuation_log_probs(model, tokenizer, contexts, continuations, batch_size))
    return [[next(flat) for _ in options] for options in candidates]


def label_probabilities(model, tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]],
                        labels: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """cells x labels: the model's probability of answering each label, teacher-forced after the chat prompt and
    the answer-only reply prefix, renormalised over ``labels``. One forward pass per cell where every label is a
    single token of the tokenizer (the embedded tokenizer's label items); else one per (cell, label)
    (:func:`candidate_log_probs`)."""
    by_label: dict[str, list[int]] = {}
    for token, label in label_item_tokens(tokenizer).items():
        by_label.setdefault(label, []).append(token)
    if not all(label in by_label for label in labels):
        scores = np.array(candidate_log_probs(model, tokenizer, conversations, [list(labels)] * len(conversations),
                                              batch_size=batch_size))
        return _softmax(scores)
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
                     + ANSWER_ONLY_PREFIX for c in conversations[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():  # only the last position's logits (the LM head over every position dominates)
                logp = model(**batch, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
            out.append(torch.stack([torch.logsumexp(logp[:, by_label[label]], dim=1) for label in labels], 1).cpu())
    finally:
        tokenizer.padding_side = side
    return _softmax(torch.cat(out).numpy()) if out else np.zeros((0, len(labels)))


def _softmax(scores):
    scores = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=1, keepdims=True)
