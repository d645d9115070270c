"""Batched completion of prompts (left padding, KV cache, stop strings) for evaluation and data generation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autocritic.model.sampling import prefill_for_samples
from autocritic.progress import track


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Drop the first stop string and everything after it (`generate` keeps the stop string)."""
    ends = [index for index in (text.find(s) for s in stop) if index >= 0]
    return text[: min(ends)] if ends else text


@torch.no_grad()
def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    num_samples: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generate",
) -> list[list[str]]:
    """`num_samples` continuations per prompt (greedy when temperature is 0), stop strings and eos cut off.

    `batch_size` counts generated rows (prompts x samples). Prompts are sorted by length so that batches carry
    little padding; the output keeps the order of `prompts`. The samples of a prompt share its prefill
    (`prefill_for_samples`).
    """
    model.eval()
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    per_batch = max(1, batch_size // num_samples)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    results: list[list[str]] = [[] for _ in prompts]
    # Left padding puts every prompt's last token at the end, where generation continues; restored after.
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for start in track(range(0, len(order), per_batch), desc=desc, enabled=progress):
                indices = order[start : start + per_batch]
                batch = tokenizer(
                    [prompts[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=False
                )
                input_ids, attention_mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
                prefilled = prefill_for_samples(model, input_ids, attention_mask, num_samples)
                output = model.generate(
                    input_ids=input_ids.repeat_interleave(num_samples, 0),
                    attention_mask=attention_mask.repeat_interleave(num_samples, 0),
                    cache=None if prefilled is None else prefilled[0],
                    max_new_tokens=max_new_tokens,
                    stop_strings=list(stop) or None,
                    tokenizer=tokenizer,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                for row, text in enumerate(tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    results[indices[row // num_samples]].append(cut_at_stop(text, stop))
    finally:
        tokenizer.padding_side = side
    return results
