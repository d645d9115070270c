"""Falcon's multi-query attention through PyTorch's fused SDPA kernels, on the transformers releases that need it.

Before transformers 5.25, `FalconAttention` handed `scaled_dot_product_attention` one key/value head for all query
heads (Falcon-7B: 1 for 71). The fused kernels (flash, memory-efficient) need equal head counts, so PyTorch silently
took the math kernel, which materialises every (batch, head, query, key) score. Broadcasting the shared key/value
head to every query head is a view (no copy), lets SDPA pick a fused kernel, and gives the same numbers.

transformers 5.25 moved Falcon onto its generic attention interface, whose SDPA path repeats the key/value heads
(or passes `enable_gqa`) itself: it reaches the fused kernels without help, and nothing is swapped there. The swap
recognises the older attention by its `forward` signature, so any other release is left as it is.
"""

from __future__ import annotations

import inspect
import logging

from torch import nn
from torch.nn import functional as F

log = logging.getLogger("autocritic")

_EXPECTED_PARAMETERS = [
    "self",
    "hidden_states",
    "alibi",
    "attention_mask",
    "position_ids",
    "layer_past",
    "use_cache",
    "output_attentions",
    "position_embeddings",
    "kwargs",
]


def _falcon_attention_class():
    try:
        from transformers.models.falcon.modeling_falcon import FalconAttention, apply_rotary_pos_emb
    except ImportError:  # pragma: no cover - a transformers without Falcon
        return None, None
    if list(inspect.signature(FalconAttention.forward).parameters) != _EXPECTED_PARAMETERS:
        return None, None  # another transformers: its attention is left as it is
    return FalconAttention, apply_rotary_pos_emb


def _fused_attention_class():
    base, apply_rotary_pos_emb = _falcon_attention_class()
    if base is None:
        return None

    class FalconFusedAttention(base):
        """`FalconAttention` with key/value broadcast to every query head before SDPA (rotary path only)."""

        def forward(
            self,
            hidden_states,
            alibi,
            attention_mask,
            position_ids=None,
            layer_past=None,
            use_cache=False,
            output_attentions=False,
            position_embeddings=None,
            **kwargs,
        ):
            if alibi is not None or output_attentions:
                return super().forward(
                    hidden_states,
                    alibi,
                    attention_mask,
                    position_ids=position_ids,
                    layer_past=layer_past,
                    use_cache=use_cache,
                    output_attentions=output_attentions,
                    position_embeddings=position_embeddings,
                    **kwargs,
                )
            query, key, value = (
                x.transpose(1, 2) for x in self._split_heads(self.query_key_value(hidden_states))
            )
            batch, _, length, _ = query.shape
            cos, sin = position_embeddings
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            if layer_past is not None:
                key, value = layer_past.update(key, value, self.layer_idx)
            if key.shape[1] != self.num_heads:
                key = key.expand(-1, self.num_heads, -1, -1)
                value = value.expand(-1, self.num_heads, -1, -1)
            output = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=0.0,
                is_causal=self.is_causal and attention_mask is None and length > 1,
            )
            output = output.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
            return self.dense(output), None

    return FalconFusedAttention


def swap_needed() -> bool:
    """Whether the installed transformers has the Falcon attention that falls back to the math kernel."""
    return _falcon_attention_class()[0] is not None


def use_fused_attention(model: nn.Module) -> int:
    """Swap each multi-query `FalconAttention` (SDPA, rotary) for the fused-kernel version; returns how many."""
    fused = _fused_attention_class()
    if fused is None:
        return 0
    base = fused.__mro__[1]
    swapped = 0
    for module in model.modules():
        if type(module) is base and module.config._attn_implementation == "sdpa" and module.num_kv_heads == 1:
            module.__class__ = fused
            swapped += 1
    if swapped:
        log.info("Falcon multi-query attention: %d layers through fused SDPA kernels", swapped)
    return swapped


def attention_is_fused(model: nn.Module) -> bool:
    return any(type(m).__name__ == "FalconFusedAttention" for m in model.modules())
