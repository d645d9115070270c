"""The layers of a window head: pre-norm transformer encoder layers over the final states of the last tokens.

Numerically `nn.TransformerEncoderLayer(norm_first=True, activation=relu)` with the same parameter names, so heads
saved with it load unchanged; written out for three reasons (profiled on the checker's training step, figures in
docs/results.md):
- dropout masks come from `torch.rand_like(x) >= p`: PyTorch's CPU `bernoulli_` (what `F.dropout` draws with) is
  slower than a uniform draw and was the largest single cost of the step;
- attention goes through `scaled_dot_product_attention` (its fused CPU kernel, dropout included);
- the top layer computes its query, attention and feed-forward at the last slot only, the one the head answers at.

With `causal`, the layers below the top let a slot attend to itself and the slots before it only (the top layer
still reads every slot at the last one). A slot's output then depends on the slots up to it alone, so rows whose
windows begin with the same slots (the answers to one question, of one length) compute that prefix once:
`forward_shared` gives the same outputs as `forward` on the full windows, at the cost of the prefix once per group
and of each row's own slots.
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


def causal_keep(keep: torch.Tensor | None, queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """(B or 1, Q, K) attention mask of the last `queries` of `keys` slots: each sees the slots up to itself that
    `keep` (B, K) marks real, and always itself, so a padding slot never attends to nothing (NaN)."""
    rows = torch.arange(keys - queries, keys, device=device)[:, None]
    columns = torch.arange(keys, device=device)[None, :]
    upto, itself = columns <= rows, columns == rows
    if keep is None:
        return upto[None]
    return (upto[None] & keep[:, None, :]) | itself[None]


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

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value (each (B, T, D)) of x (B, T, D)."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias).split(x.shape[-1], dim=-1)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, Q, D) queries over (B, K, D) keys and values; mask broadcastable to (B, Q, K), True where seen."""
        batch, width = query.shape[0], query.shape[-1]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, h, T, D/h)
            return t.reshape(batch, t.shape[1], self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(query),
            heads(key),
            heads(value),
            attn_mask=None if mask is None else mask[:, None],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, -1, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, last_only: bool, causal: bool = False) -> torch.Tensor:
        """x (B, W, D), keep (B, W) True on real slots -> (B, W or 1, D)."""
        query, key, value = self.project(x)
        if last_only:
            query = query[:, -1:]
        if causal:
            mask = causal_keep(keep, query.shape[1], key.shape[1], x.device)
        else:
            mask = None if keep is None else keep[:, None, :]
        return self.attend(query, key, value, mask)


class WindowLayer(nn.Module):
    """A pre-norm encoder layer: x + attention(norm1(x)), then + feed-forward(norm2(.)), dropout on each branch."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.self_attn = WindowAttention(width, heads, attention_dropout)
        self.linear1, self.linear2 = nn.Linear(width, feedforward), nn.Linear(feedforward, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.p = dropout

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None, last_only: bool = False, causal: bool = False
    ) -> torch.Tensor:
        attended = self.self_attn(self.norm1(x), keep, last_only, causal)
        return self.feed_forward((x[:, -1:] if last_only else x), attended)

    def feed_forward(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention: residual, then the feed-forward block."""
        h = x + dropout(attended, self.p, self.training)
        hidden = dropout(F.relu(self.linear1(self.norm2(h))), self.p, self.training)
        return h + dropout(self.linear2(hidden), self.p, self.training)

    def forward_shared(
        self,
        prefix: torch.Tensor,
        prefix_keep: torch.Tensor | None,
        own: torch.Tensor,
        own_keep: torch.Tensor | None,
        group: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The causal layer over windows split in two: `prefix` (G, P, D), the first P slots of each group's rows,
        and `own` (B, R, D), each row's last R slots; row b's window is prefix[group[b]] then own[b]."""
        attention = self.self_attn
        query_p, key_p, value_p = attention.project(self.norm1(prefix))
        query_o, key_o, value_o = attention.project(self.norm1(own))
        attended_p = attention.attend(query_p, key_p, value_p, causal_keep(prefix_keep, prefix.shape[1], prefix.shape[1], prefix.device))
        keys = torch.cat([key_p[group], key_o], dim=1)
        values = torch.cat([value_p[group], value_o], dim=1)
        keep = None if prefix_keep is None else torch.cat([prefix_keep[group], own_keep], dim=1)
        attended_o = attention.attend(query_o, keys, values, causal_keep(keep, own.shape[1], keys.shape[1], own.device))
        return self.feed_forward(prefix, attended_p), self.feed_forward(own, attended_o)

    def top_shared(
        self,
        prefix: torch.Tensor,
        prefix_keep: torch.Tensor | None,
        own: torch.Tensor,
        own_keep: torch.Tensor | None,
        group: torch.Tensor,
    ) -> torch.Tensor:
        """The top layer at the last slot over windows split as in `forward_shared`: (B, 1, D)."""
        attention = self.self_attn
        _, key_p, value_p = attention.project(self.norm1(prefix))
        query_o, key_o, value_o = attention.project(self.norm1(own))
        keys = torch.cat([key_p[group], key_o], dim=1)
        values = torch.cat([value_p[group], value_o], dim=1)
        keep = None if prefix_keep is None else torch.cat([prefix_keep[group], own_keep], dim=1)[:, None, :]
        return self.feed_forward(own[:, -1:], attention.attend(query_o[:, -1:], keys, values, keep))


class WindowEncoder(nn.Module):
    """The stack (`.layers`, as `nn.TransformerEncoder` names it), read at the last slot: (B, W, D) -> (B, D)."""

    def __init__(
        self,
        width: int,
        heads: int,
        feedforward: int,
        dropout: float,
        attention_dropout: float,
        layers: int,
        causal: bool = False,
    ):
        super().__init__()
        self.causal = causal
        self.layers = nn.ModuleList(
            WindowLayer(width, heads, feedforward, dropout, attention_dropout) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        *below, top = self.layers
        for layer in below:
            x = layer(x, keep, causal=self.causal)
        return top(x, keep, last_only=True)[:, 0]

    def forward_shared(
        self,
        prefix: torch.Tensor,
        prefix_keep: torch.Tensor | None,
        own: torch.Tensor,
        own_keep: torch.Tensor | None,
        group: torch.Tensor,
    ) -> torch.Tensor:
        """`forward` of the windows cat([prefix[group], own], 1) (a causal stack only), each prefix computed once:
        prefix (G, P, D) and its keep (G, P), own (B, R, D) and its keep (B, R), group (B,) -> (B, D)."""
        if not self.causal:
            raise ValueError("only a causal window head (head.causal=true) can share its rows' first slots")
        *below, top = self.layers
        for layer in below:
            prefix, own = layer.forward_shared(prefix, prefix_keep, own, own_keep, group)
        return top.top_shared(prefix, prefix_keep, own, own_keep, group)[:, 0]
