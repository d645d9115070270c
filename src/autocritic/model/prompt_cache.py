"""The KV cache of shared-prompt batches, safe under gradient checkpointing.

A shared-prompt batch runs each prompt once with the KV cache on, then the answers attend to their prompt's
cached keys (`CriticModel.hidden_after_prefixes`). Under gradient checkpointing the backward pass runs every
layer's forward again, and a plain `DynamicCache` would then append the same keys a second time. transformers
therefore drops the cache from checkpointed layers, unless a layer declares it safe (`_can_checkpoint_with_cache`).
This cache is safe:

- prompt pass: each layer writes its keys once; a second `update` of the same layer (the backward's recompute)
  gets its recomputed keys back and leaves the cache as the forward wrote it;
- answers pass (`answers_view`): a layer reads the prompt's keys and stores nothing, so the recompute reads the
  same keys again.

The answers' gradients reach the prompt through the keys the forward stored (non-reentrant checkpointing keeps
their autograd graph and recomputes what it saved). Same losses and gradients as one sequence per row, with or
without checkpointing (tests/test_shared_prompts.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer


class SharedPromptCache(DynamicCache):
    read_only = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.read_only:  # update a copy of the layer: its tensors are rebound, never written in place
            return copy.copy(self.layers[layer_idx]).update(key_states, value_states, *args, **kwargs)
        if layer_idx < len(self.layers) and self.layers[layer_idx].is_initialized:
            return key_states, value_states  # the layer again, recomputed for the backward pass
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def answers_view(self, rows: torch.Tensor) -> SharedPromptCache:
        """The prompts' keys, one row per answer (`rows[b]`: answer b's prompt), read-only. Selects the rows in this
        cache itself (its prompt pass is over; a recompute of it returns before reading the cache)."""
        self.batch_select_indices(rows)
        view = copy.copy(self)  # shares the layers
        view.read_only = True
        return view


@contextmanager
def cache_through_checkpointing(decoder: nn.Module) -> Iterator[bool]:
    """Let the checkpointed layers of `decoder` receive a `SharedPromptCache` (transformers drops a cache from a
    checkpointed layer unless the layer says it is safe). The flag is read when a layer runs forward; the
    backward's recompute reuses the arguments of that call. Yields whether transformers checkpoints any layer:
    then pass `use_cache=False` (the layers write to the cache they are given all the same), or transformers
    warns that it turned the cache off."""
    layers = [m for m in decoder.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield bool(layers) and decoder.training and torch.is_grad_enabled()
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache
