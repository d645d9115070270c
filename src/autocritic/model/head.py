"""The critic head: a small network reading the final decoder state (what `lm_head` reads) and, with
`confidence`, the model's mean and min log-probability of the response tokens so far."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONFIDENCE_FEATURES = 2  # mean and min log-probability of the response tokens


@dataclass
class HeadSettings:
    kind: str = "linear"  # "linear" | "mlp"
    hidden_dim: int = 256  # mlp only
    dropout: float = 0.1
    init_std: float | None = None  # None: 1/sqrt(hidden+1), as OpenRLHF
    confidence: bool = False  # also read the response's mean and min token log-probability (CriticModel)


class CriticHead(nn.Module):
    """Maps a hidden state (..., H), and with `confidence` the features (..., 2), to a score (...). Always
    computed in fp32, whatever the backbone dtype."""

    def __init__(self, hidden_size: int, settings: HeadSettings | None = None):
        super().__init__()
        settings = settings or HeadSettings()
        if settings.kind not in ("linear", "mlp"):
            raise ValueError(f"head.kind must be 'linear' or 'mlp', got {settings.kind!r}")
        self.settings = settings
        self.dropout = nn.Dropout(settings.dropout)
        inputs = hidden_size + (CONFIDENCE_FEATURES if settings.confidence else 0)
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

    def forward(self, hidden: torch.Tensor, confidence: torch.Tensor | None = None) -> torch.Tensor:
        # fp32 unless a strategy cast the whole model (DeepSpeed's bf16 does); scores always come out fp32
        dtype = next(self.net.parameters()).dtype
        x = self.dropout(hidden.to(dtype))
        if self.settings.confidence:
            if confidence is None:
                raise ValueError("this head reads confidence features (head.confidence=true): none were given")
            x = torch.cat([x, confidence.to(dtype)], dim=-1)  # never dropped: two numbers, not redundant units
        return self.net(x).squeeze(-1).float()
