"""The critic head: a small network reading the final decoder state (what `lm_head` reads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class HeadSettings:
    kind: str = "linear"  # "linear" | "mlp"
    hidden_dim: int = 256  # mlp only
    dropout: float = 0.1
    init_std: float | None = None  # None: 1/sqrt(hidden+1), as OpenRLHF


class CriticHead(nn.Module):
    """Maps a hidden state (..., H) to a score (...). Always computed in fp32, whatever the backbone dtype."""

    def __init__(self, hidden_size: int, settings: HeadSettings | None = None):
        super().__init__()
        settings = settings or HeadSettings()
        if settings.kind not in ("linear", "mlp"):
            raise ValueError(f"head.kind must be 'linear' or 'mlp', got {settings.kind!r}")
        self.settings = settings
        self.dropout = nn.Dropout(settings.dropout)
        if settings.kind == "linear":
            self.net = nn.Linear(hidden_size, 1)
        else:
            self.net = nn.Sequential(
                nn.Linear(hidden_size, settings.hidden_dim),
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

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(self.dropout(hidden.float())).squeeze(-1)
