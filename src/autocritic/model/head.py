"""The critic head: a small network reading the final decoder state (what `lm_head` reads) and, with
`confidence`, the model's mean and min log-probability of the response tokens so far.

`linear` and `mlp` read the state at the last token. `attention` reads the final states of the last `window`
tokens (the end of the question and the answer) through a few transformer layers and answers at the last one:
it can compare positions, e.g. an answer's last digit with the operands'. With `tokens`
it also reads which token sits in each slot (a learned embedding of the ids, added to the projected states): a
final state is tuned to predict the next token and may blur the one it sits on.

With `members` > 1 the head is that many heads of the same kind, each with its own initialisation and dropout,
scoring as the mean of their logits; training fits each member to the labels on its own (CriticModule), so they
disagree where one alone would guess, and their mean ranks answers better than any one of them
(docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from autocritic.model.window import WindowEncoder

CONFIDENCE_FEATURES = 2  # mean and min log-probability of the response tokens
KINDS = ("linear", "mlp", "attention")


@dataclass
class HeadSettings:
    kind: str = "linear"  # "linear" | "mlp" | "attention"
    hidden_dim: int = 256  # mlp: hidden units; attention: the layers' width
    dropout: float = 0.1
    init_std: float | None = None  # None: 1/sqrt(hidden+1), as OpenRLHF (linear and mlp)
    confidence: bool = False  # also read the response's mean and min token log-probability (CriticModel)
    window: int = 1  # attention: how many final states it reads, ending at the last token
    layers: int = 2  # attention: transformer layers
    attention_heads: int = 4  # attention: heads per layer (hidden_dim must be a multiple)
    tokens: bool = False  # attention: also read the token ids of the window (an embedding of its own)
    members: int = 1  # independently trained heads of this kind; the score is the mean of their logits
    feedforward: int | None = None  # attention: the layers' feed-forward width (None: 4 x hidden_dim)
    attention_dropout: float | None = None  # attention: dropout on the attention weights (None: dropout)


def check_head_settings(settings: HeadSettings) -> None:
    if settings.kind not in KINDS:
        raise ValueError(f"head.kind must be one of {', '.join(KINDS)}; got {settings.kind!r}")
    if settings.members < 1:
        raise ValueError(f"head.members must be ≥ 1 (heads averaged into the score), got {settings.members}")
    if settings.window < 1:
        raise ValueError(f"head.window must be ≥ 1 (tokens the head reads), got {settings.window}")
    if settings.kind != "attention" and settings.window != 1:
        raise ValueError(
            f"head.window={settings.window} needs head.kind=attention: a {settings.kind} head reads the last state only"
        )
    if settings.feedforward is not None and settings.feedforward < 1:
        raise ValueError(f"head.feedforward must be ≥ 1 or null (4 x hidden_dim), got {settings.feedforward}")
    if settings.attention_dropout is not None and not 0 <= settings.attention_dropout < 1:
        raise ValueError(f"head.attention_dropout must be in [0, 1) or null (head.dropout), got {settings.attention_dropout}")
    if settings.tokens and settings.kind != "attention":
        raise ValueError(f"head.tokens=true needs head.kind=attention: a {settings.kind} head reads one state")
    if settings.kind == "attention" and (
        settings.hidden_dim < 1 or settings.layers < 1 or settings.attention_heads < 1
        or settings.hidden_dim % settings.attention_heads
    ):
        raise ValueError(
            "an attention head needs head.hidden_dim ≥ 1, head.layers ≥ 1 and head.attention_heads ≥ 1 dividing "
            f"head.hidden_dim; got {settings.hidden_dim}, {settings.layers}, {settings.attention_heads}"
        )


class CriticHead(nn.Module):
    """Maps a hidden state (..., H), or for `attention` the states of a window (..., W, H) with its mask
    (..., W) (True on real tokens; the last slot is the token scored) and with `tokens` their ids (..., W), and
    with `confidence` the features (..., 2), to a score (...). Always computed in fp32, whatever the backbone
    dtype. `vocab_size`: the token ids a `tokens` head can read. With `members` > 1, `member_scores` gives each
    member's score (..., M) and the score is their mean."""

    def __init__(self, hidden_size: int, settings: HeadSettings | None = None, vocab_size: int | None = None):
        super().__init__()
        settings = settings or HeadSettings()
        check_head_settings(settings)
        if settings.tokens and not vocab_size:
            raise ValueError("a head reading token ids (head.tokens=true) needs the vocabulary size")
        self.settings = settings
        self.window = settings.window
        if settings.members > 1:
            one = replace(settings, members=1)
            self.members = nn.ModuleList(CriticHead(hidden_size, one, vocab_size) for _ in range(settings.members))
            return
        self.members = None
        extra = CONFIDENCE_FEATURES if settings.confidence else 0
        if settings.kind == "attention":
            width = settings.hidden_dim
            self.dropout = nn.Identity()  # the layers drop their own activations
            self.project = nn.Linear(hidden_size, width)
            self.position = nn.Parameter(torch.randn(settings.window, width) * 0.02)  # slot W-1: the scored token
            self.embed = nn.Embedding(vocab_size, width) if settings.tokens else None
            self.layers = WindowEncoder(
                width,
                settings.attention_heads,
                settings.feedforward or 4 * width,
                settings.dropout,
                settings.dropout if settings.attention_dropout is None else settings.attention_dropout,
                settings.layers,
            )
            self.net = nn.Sequential(nn.LayerNorm(width + extra), nn.Linear(width + extra, 1))
            self.float()
            return
        self.dropout = nn.Dropout(settings.dropout)
        inputs = hidden_size + extra
        if settings.kind == "linear":
            self.net = nn.Linear(inputs, 1)
        else:
            self.net = nn.Sequential(
                nn.Linear(inputs, settings.hidden_dim),
                nn.GELU(),
                nn.Dropout(settings.dropout),
                nn.Linear(settings.hidden_dim, 1),
            )
        std = settings.init_std if settings.init_std is not None else (hidden_size + 1) ** -0.5
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
        self.float()

    def forward(
        self,
        hidden: torch.Tensor,
        confidence: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.members is not None:
            return self.member_scores(hidden, confidence, mask, tokens).mean(-1)
        # fp32 unless a strategy cast the whole model (DeepSpeed's bf16 does); scores always come out fp32
        dtype = next(self.net.parameters()).dtype
        x = self.dropout(hidden.to(dtype))
        if self.settings.kind == "attention":
            x = self._read_window(x, mask, tokens)
        if self.settings.confidence:
            if confidence is None:
                raise ValueError("this head reads confidence features (head.confidence=true): none were given")
            x = torch.cat([x, confidence.to(dtype)], dim=-1)  # never dropped: two numbers, not redundant units
        return self.net(x).squeeze(-1).float()

    def member_scores(
        self,
        hidden: torch.Tensor,
        confidence: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each member's score (..., M); a head of one member gives (..., 1)."""
        if self.members is None:
            return self(hidden, confidence, mask, tokens)[..., None]
        return torch.stack([member(hidden, confidence, mask, tokens) for member in self.members], dim=-1)

    def _read_window(
        self, states: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        """(..., W, H) states, (..., W) mask and token ids -> (..., width): the layers' output at the last slot."""
        if states.shape[-2] != self.window:
            raise ValueError(f"this head reads windows of {self.window} states, got {states.shape[-2]}")
        lead = states.shape[:-2]
        x = self.project(states.reshape(-1, self.window, states.shape[-1])) + self.position
        if self.embed is not None:
            if tokens is None:
                raise ValueError("this head reads the window's token ids (head.tokens=true): none were given")
            x = x + self.embed(tokens.reshape(-1, self.window).long())
        keep = None if mask is None else mask.reshape(-1, self.window).bool()
        return self.layers(x, keep).reshape(*lead, -1)
