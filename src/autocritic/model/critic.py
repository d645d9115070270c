"""CriticModel: any Hugging Face causal LM plus a critic head on its final decoder state.

    tokens ──► decoder ──► final norm ──► hidden (B, T, H) ──┬──► lm_head ──► logits   (only when asked)
                                                             ├──► head ─────► values   (B, T) (only when asked)
                                                             └─ last real token ─► head ─► score (B,)

The score is read at the last position whose attention mask is 1 and positions are derived from the mask,
so a sequence scores the same under left padding, right padding or alone (Falcon has no pad token, and
pad = eos makes "last non-pad token" pooling pick the wrong token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from autocritic.model.head import CriticHead, HeadSettings


@dataclass
class CriticOutput:
    score: torch.Tensor  # (B,) fp32, one logit per sequence
    hidden: torch.Tensor | None = None  # (B, H) final decoder state at the last real token
    values: torch.Tensor | None = None  # (B, T) per-token scores, when asked
    logits: torch.Tensor | None = None  # (B, T, V) LM logits, when asked


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (works for left, right or no padding)."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decoder_of(backbone: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (`transformer` for Falcon, `model` for Llama...)."""
    base = getattr(backbone, "base_model", None)
    if base is None or base is backbone:
        raise TypeError(
            f"{type(backbone).__name__} exposes no base decoder (`base_model`): autocritic needs a Hugging Face "
            "causal LM (AutoModelForCausalLM)."
        )
    return base


class CriticModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, head: CriticHead | None = None, head_settings: HeadSettings | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else CriticHead(backbone.config.hidden_size, head_settings)

    @property
    def config(self):  # peft and Lightning look for a `config` on the wrapped model
        return self.backbone.config

    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final decoder state (B, T, H), after the final norm: what `lm_head` reads. No other layer is kept."""
        out = decoder_of(self.backbone)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_values: bool = False,
        return_logits: bool = False,
    ) -> CriticOutput:
        hidden = self.final_hidden(input_ids, attention_mask)  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]  # (B, H)
        return CriticOutput(
            score=self.head(pooled),
            hidden=pooled,
            values=self.head(hidden) if return_values else None,
            logits=self.backbone.get_output_embeddings()(hidden) if return_logits else None,
        )

    def score_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """Score precomputed final states (the frozen phase's feature cache)."""
        return self.head(pooled)
