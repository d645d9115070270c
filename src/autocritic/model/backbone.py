"""Loading a causal LM and its tokenizer, freezing it, and wrapping it with LoRA (peft)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from autocritic.errors import ConfigError
from autocritic.model.adapter import with_new_lora
from autocritic.model.falcon_attention import use_fused_attention

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["query_key_value"])


def looks_local(name_or_path: str) -> bool:
    return (
        name_or_path.startswith((".", "/", "~")) or os.path.isabs(name_or_path) or Path(name_or_path).exists()
    )


def check_model_source(name_or_path: str) -> None:
    """Fail before any compute when a local model directory is missing."""
    if looks_local(name_or_path) and not Path(name_or_path).expanduser().is_dir():
        raise ConfigError(
            f"model.name_or_path={name_or_path!r} does not exist. Point it to a directory written by "
            "`save_pretrained` (config.json + weights), use a hub id such as tiiuae/falcon-7b-instruct on a machine "
            "with hub access, or run `python train.py phase=pretrain` to build the offline default."
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    check_model_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ConfigError(f"could not load the tokenizer of {name_or_path!r}: {error}") from None
    if tokenizer.pad_token is None:
        # Pooling reads the attention mask, never the pad id, so pad = eos is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    quantization=None,
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` of a hub id or a local dir, optionally quantized (bitsandbytes)."""
    check_model_source(name_or_path)
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}.")
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if quantization is not None and quantization.mode != "none":
            from autocritic.model.quantization import load_causal_lm

            model = load_causal_lm(name_or_path, quantization, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"could not load the model {name_or_path!r}: {error}. On a machine without hub access, point "
            "model.name_or_path to a local directory."
        ) from None
    except Exception as error:  # safetensors' own error for a truncated or corrupt weights file, among others
        raise ConfigError(
            f"the weights of {name_or_path!r} could not be read ({type(error).__name__}: {error}): a file may be "
            "truncated or corrupt. Rebuild or re-download the model (the offline one: python train.py phase=pretrain)."
        ) from None
    use_fused_attention(model)
    return model


def enable_checkpointing(backbone: nn.Module) -> None:
    """Non-reentrant: the answers' gradients reach a shared prompt through its cached keys (`SharedPromptCache`)."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.23 (the old name warns)
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def freeze(module: nn.Module) -> None:
    """No gradients and eval mode (dropout off): a frozen backbone stores no activations for backward."""
    module.requires_grad_(False)
    module.eval()


def apply_lora(critic: nn.Module, settings: LoraSettings) -> nn.Module:
    """LoRA on the backbone; the head is trained in full and saved by `save_critic` (head.safetensors).

    Not through `modules_to_save=["head"]`: peft matches those names by suffix, so "head" also catches the
    backbone's `lm_head` and would train and save a full copy of it (vocab x hidden) beside the adapter.
    """
    targets = list(settings.target_modules)
    model = with_new_lora(
        critic,
        {"r": settings.r, "lora_alpha": settings.alpha, "lora_dropout": settings.dropout, "target_modules": targets},
        "Set peft.target_modules to linear layer names of this model (Falcon: query_key_value, dense, "
        "dense_h_to_4h, dense_4h_to_h; Llama: q_proj, k_proj, v_proj, o_proj).",
    )
    unwrap(model).head.requires_grad_(True)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The CriticModel inside a PeftModel (LoRA layers injected in place), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
