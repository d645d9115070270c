"""The layers of a window head: pre-norm transformer encoder layers over the final states of the last tokens.

Numerically `nn.TransformerEncoderLayer(norm_first=True, activation=relu)` with the same parameter names, so heads
saved with it load unchanged; written out for three reasons (profiled on the checker's training step, figures in
docs/results.md):
- dropout masks come from `torch.rand_like(x) >= p`: PyTorch's CPU `bernoulli_` (what `F.dropout` draws with) is
  slower than a uniform draw and was the largest single cost of the step;
- attention goes through `scaled_dot_product_attention` (its fused CPU kernel, dropout included);
- the top layer computes its query, attention and feed-forward at the last slot only, the one the head answers at.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as `F.dropout`, with masks drawn from a uniform sample (the faster draw on CPU)."""
    if not training or p == 0.0:
        return x
    return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))


class WindowAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameters (in_proj_weight/bias, out_proj)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, last_only: bool) -> torch.Tensor:
        """x (B, W, D), keep (B, W) True on real slots -> (B, W or 1, D)."""
        batch, window, width = x.shape
        query, key, value = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(width, dim=-1)
        if last_only:
            query = query[:, -1:]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, h, T, D/h)
            return t.reshape(batch, t.shape[1], self.heads, width // self.heads).transpose(1, 2)

        mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(
            heads(query), heads(key), heads(value), attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, -1, width))


class WindowLayer(nn.Module):
    """A pre-norm encoder layer: x + attention(norm1(x)), then + feed-forward(norm2(.)), dropout on each branch."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.self_attn = WindowAttention(width, heads, attention_dropout)
        self.linear1, self.linear2 = nn.Linear(width, feedforward), nn.Linear(feedforward, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.p = dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, last_only: bool = False) -> torch.Tensor:
        attended = self.self_attn(self.norm1(x), keep, last_only)
        h = (x[:, -1:] if last_only else x) + dropout(attended, self.p, self.training)
        hidden = dropout(F.relu(self.linear1(self.norm2(h))), self.p, self.training)
        return h + dropout(self.linear2(hidden), self.p, self.training)


class WindowEncoder(nn.Module):
    """The stack (`.layers`, as `nn.TransformerEncoder` names it), read at the last slot: (B, W, D) -> (B, D)."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float, attention_dropout: float, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            WindowLayer(width, heads, feedforward, dropout, attention_dropout) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        *below, top = self.layers
        for layer in below:
            x = layer(x, keep)
        return top(x, keep, last_only=True)[:, 0]
