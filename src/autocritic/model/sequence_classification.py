"""The critic as a plain `AutoModelForSequenceClassification` (num_labels=1), for heads that one can express.

A head of kind `linear` reading the final state alone (window 1, no confidence features, no token ids) is
`w · h + b` on the state `lm_head` reads, which is what a `*ForSequenceClassification` model's `score` layer reads.
Its members, when several, average into one such layer. `score` has no bias in Falcon, Llama and most decoders:
the bias is folded into the final norm's bias, which in the classification model feeds `score` alone
(`w · (h + b w / |w|²) = w · h + b`); a final norm without a bias (RMSNorm) leaves nothing to fold into, and then
only a head whose bias is 0 is written.

Those models pool the rightmost token that is not `config.pad_token_id`. Falcon has no pad token, and pad = eos
would skip a real final eos; the classification model gets a pad token of its own that text never produces
(appending one embedding row when the vocabulary is full, read only at padded positions), and its tokenizer pads
on the right, where positions match the critic's. Its weights keep the backbone's dtype: in bfloat16 the folded
bias is rounded like any other weight.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from autocritic.model.head import CriticHead, HeadSettings

SEQUENCE_CLASSIFICATION_DIR = "sequence_classification"
PAD_TOKEN = "<|critic_pad|>"
FINAL_NORMS = ("ln_f", "norm", "final_layernorm", "norm_f")  # Falcon, Llama/Mistral/Qwen, Phi, others


def why_not_expressible(settings: HeadSettings) -> str | None:
    """None when a sequence-classification model can compute this head; else the reason, for the model card."""
    if settings.kind != "linear":
        return f"the head is {settings.kind}, not linear"
    if settings.confidence:
        return "the head also reads the response's log-probabilities (head.confidence=true)"
    if settings.window != 1 or settings.tokens:
        return "the head reads more than the last final state"
    return None


def linear_form(head: CriticHead) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,) weight and scalar bias of a linear head, fp32; members average into one."""
    members = list(head.members) if head.members is not None else [head]
    weight = torch.stack([m.net.weight.detach().float().cpu()[0] for m in members]).mean(0)
    bias = torch.stack([m.net.bias.detach().float().cpu()[0] for m in members]).mean(0)
    return weight, bias


def save_sequence_classification(
    backbone: PreTrainedModel, head: CriticHead, tokenizer: PreTrainedTokenizerBase, out_dir: Path
) -> str | None:
    """Write `out_dir` (model, config, tokenizer) from an unquantized, unwrapped causal LM and a linear head.
    Returns None when written, else why not (nothing written)."""
    reason = why_not_expressible(head.settings)
    if reason:
        return reason
    config = copy.deepcopy(backbone.config)
    config.num_labels, config.architectures = 1, None
    try:
        with torch.device("meta"):  # the decoder comes from `backbone`: allocate nothing for it here
            model = AutoModelForSequenceClassification.from_config(config)
    except ValueError:
        return f"transformers has no sequence-classification model for {config.model_type}"
    score = getattr(model, "score", None)
    if not isinstance(score, nn.Linear) or score.out_features != 1:
        return f"{type(model).__name__} has no linear `score` layer"
    decoder = backbone.base_model
    prefix = model.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in decoder.state_dict().items()}
    reference = backbone.get_input_embeddings().weight
    weight, bias = (x.to(reference.device) for x in linear_form(head))
    dtype = reference.dtype
    state["score.weight"] = weight[None].to(dtype)
    if score.bias is not None:
        state["score.bias"] = bias[None].to(dtype)
    elif bias != 0:
        norm = next((n for n in FINAL_NORMS if getattr(getattr(decoder, n, None), "bias", None) is not None), None)
        if norm is None:
            return "its score layer has no bias and its final norm none to fold the head's bias into"
        key = f"{prefix}.{norm}.bias"
        state[key] = (state[key].float() + bias * weight / weight.dot(weight)).to(dtype)

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    own = AutoTokenizer.from_pretrained(out_dir)
    common = {own.eos_token_id, own.bos_token_id, own.unk_token_id}
    if own.pad_token_id is None or own.pad_token_id in common:
        own.add_special_tokens({"pad_token": PAD_TOKEN})
    own.padding_side = "right"
    own.save_pretrained(out_dir)
    embeddings = next(n for n, m in decoder.named_modules() if m is decoder.get_input_embeddings())
    key = f"{prefix}.{embeddings}.weight"
    rows, width = state[key].shape
    if own.pad_token_id >= rows:
        state[key] = torch.cat([state[key], state[key].new_zeros(own.pad_token_id + 1 - rows, width)])
        model.config.vocab_size = own.pad_token_id + 1
    model.config.pad_token_id = own.pad_token_id
    setattr(model, prefix, decoder)  # shared, not copied; the changed tensors are in `state`
    model.score = nn.Linear(width, 1, bias=score.bias is not None, device=reference.device)
    model.save_pretrained(out_dir, state_dict=state)
    return None
