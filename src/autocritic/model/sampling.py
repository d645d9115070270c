"""n samples of a prompt from one prefill.

transformers' `generate(num_return_sequences=n)` copies each prompt n times before its first forward, so the
prompt runs n times. `prefill_for_samples` runs each prompt, less its last token, once, and copies the KV cache
for the samples; `generate` given that cache and the copied prompts feeds only the last prompt token. The tokens
are those of `generate(num_return_sequences=n)` under the same seed (tests/test_inference.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from autocritic.model.critic import decoder_of, positions_from_mask


def takes_outside_cache(backbone: PreTrainedModel) -> bool:
    """Whether `generate` accepts a `DynamicCache` built outside it: not when the generation config names a
    `cache_implementation`, nor for the few models without a default dynamic cache."""
    supports_dynamic = getattr(backbone, "_supports_default_dynamic_cache", lambda: True)()
    return backbone.generation_config.cache_implementation is None and supports_dynamic


@torch.no_grad()
def prefill_for_samples(
    backbone: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int
) -> tuple[DynamicCache, torch.Tensor] | None:
    """Left-padded prompts (B, P) less their last token through the decoder once: the KV cache, copied for `n`
    samples each (row = prompt * n + sample), and the final states (B, P - 1, H). None where there is nothing to
    prefill (P < 2) or `generate` takes no cache from outside: it then runs each copy of the prompt itself."""
    if input_ids.shape[1] < 2 or not takes_outside_cache(backbone):
        return None
    cache = DynamicCache(config=backbone.config)
    mask = attention_mask[:, :-1]
    hidden = decoder_of(backbone)(
        input_ids=input_ids[:, :-1],
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    cache.batch_repeat_interleave(n)
    return cache, hidden
