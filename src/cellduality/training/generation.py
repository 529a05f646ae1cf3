"""Batched chat generation with a causal LM (used for dual rewards, diagnostics and evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

Messages = list[dict[str, str]]


def generate_chat(model, tokenizer, conversations: Sequence[Messages], *, max_new_tokens: int = 256,
                  temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16) -> list[str]:
    """Generate one assistant reply per conversation (greedy when ``temperature`` is 0)."""
    import torch

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
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies
