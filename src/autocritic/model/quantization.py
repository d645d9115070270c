"""bitsandbytes quantization of the backbone (nf4 / int8) that really quantizes Falcon, and QLoRA preparation.

Why this file exists: transformers replaces only modules whose type is exactly `nn.Linear`
(`type(module) is nn.Linear` in `integrations/bitsandbytes.py`), and Falcon builds its layers from the subclass
`FalconLinear`. `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))` then loads a
Falcon without error and without quantizing a single layer (checked on transformers 5.24). While a Falcon is
built, `plain_linear_layers` makes `FalconLinear` plain `nn.Linear` (its forward, `x @ W.T + b`, is the same
computation), and `load_causal_lm` checks afterwards that the layers are really bitsandbytes layers.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from autocritic.errors import ConfigError

MODES = ("none", "nf4", "int8")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# model_type -> (module, class) of the nn.Linear subclasses that transformers' bitsandbytes pass skips.
LINEAR_SUBCLASSES = {"falcon": [("transformers.models.falcon.modeling_falcon", "FalconLinear")]}

_PATCH_LOCK = threading.Lock()


@dataclass
class QuantizationSettings:
    """The `quantization` config group. `double_quant`, `quant_type` and `compute_dtype` only matter for nf4."""

    mode: str = "none"  # none | nf4 | int8
    double_quant: bool = True
    compute_dtype: str = "bfloat16"  # float32 | bfloat16 | float16
    quant_type: str = "nf4"  # nf4 | fp4 (the 4-bit data type of mode=nf4)
    # Kept in full precision. An empty list falls back to transformers' default (the output embeddings).
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> QuantizationSettings:
        """From a plain mapping or a Hydra `DictConfig` (the `quantization` group); unknown keys are refused."""
        if hasattr(config, "_metadata"):  # an OmegaConf container: make lists plain lists
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(config, resolve=True)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown quantization keys {unknown}; known keys are {sorted(known)}.")
        values = dict(config)
        if "skip_modules" in values:
            values["skip_modules"] = list(values["skip_modules"] or [])
        return cls(**values)


def as_settings(settings: QuantizationSettings | Mapping[str, Any] | None) -> QuantizationSettings:
    if settings is None:
        return QuantizationSettings()
    if isinstance(settings, QuantizationSettings):
        return settings
    return QuantizationSettings.from_config(settings)


def validate_settings(settings: QuantizationSettings) -> None:
    if settings.mode not in MODES:
        raise ConfigError(f"quantization.mode={settings.mode!r} is not one of {list(MODES)}.")
    if settings.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(
            f"quantization.compute_dtype={settings.compute_dtype!r} is not one of {list(COMPUTE_DTYPES)}."
        )
    if settings.quant_type not in QUANT_TYPES:
        raise ConfigError(
            f"quantization.quant_type={settings.quant_type!r} is not one of {list(QUANT_TYPES)}."
        )


def bnb_config(settings: QuantizationSettings | Mapping[str, Any]) -> BitsAndBytesConfig | None:
    """The `quantization_config` for `from_pretrained`, or None for mode=none."""
    settings = as_settings(settings)
    validate_settings(settings)
    skip = list(settings.skip_modules) or None  # None: transformers adds its default skips
    if settings.mode == "none":
        return None
    if settings.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quant_type,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[settings.compute_dtype],
        llm_int8_skip_modules=skip,
    )


@contextlib.contextmanager
def plain_linear_layers(model_type: str) -> Iterator[None]:
    """While a model of `model_type` is built, its `nn.Linear` subclasses are plain `nn.Linear`.

    The modeling module looks the class up when a layer is created, so only models built inside the block are
    affected. The lock keeps two concurrent loads from restoring each other's patch out of order.
    """
    targets = LINEAR_SUBCLASSES.get(model_type, [])
    with _PATCH_LOCK:
        saved = []
        try:
            for module_name, class_name in targets:
                module = importlib.import_module(module_name)
                saved.append((module, class_name, getattr(module, class_name)))
                setattr(module, class_name, nn.Linear)
            yield
        finally:
            for module, class_name, original in reversed(saved):
                setattr(module, class_name, original)


def require_bitsandbytes(mode: str) -> Any:
    """Import bitsandbytes and run one tiny quantized layer, or raise a ConfigError that says what to do."""
    advice = (
        f"quantization={mode} needs bitsandbytes>=0.45 with a backend for this device (0.45+ ships CPU and "
        "CUDA backends: `pip install -U bitsandbytes accelerate`), or set quantization=none."
    )
    try:
        import bitsandbytes as bnb
    except Exception as error:  # ImportError, or a broken binary failing at import
        raise ConfigError(f"bitsandbytes cannot be imported ({error}). {advice}") from None
    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError(f"transformers needs `accelerate` to load bitsandbytes models. {advice}")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where from_pretrained puts the model by default
    try:
        with torch.no_grad():
            if mode == "int8":
                layer = bnb.nn.Linear8bitLt(16, 16, has_fp16_weights=False)
            else:
                layer = bnb.nn.Linear4bit(16, 16, compute_dtype=torch.float32)
            layer = layer.to(device)  # quantizes the weight
            layer(torch.randn(2, 16, device=device))
    except Exception as error:
        raise ConfigError(
            f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run a {mode} layer on {device} "
            f"({type(error).__name__}: {error}). {advice}"
        ) from None
    return bnb


def load_causal_lm(
    name_or_path: str,
    settings: QuantizationSettings | Mapping[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained`, quantized as `settings` says, checked to be really quantized."""
    settings = as_settings(settings)
    quantization_config = bnb_config(settings)
    if "quantization_config" in from_pretrained_kwargs:
        raise ConfigError(
            "pass quantization through QuantizationSettings, not a quantization_config argument."
        )
    if quantization_config is None:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **from_pretrained_kwargs)

    require_bitsandbytes(settings.mode)
    config = from_pretrained_kwargs.get("config")
    if config is None:
        config_kwargs = {
            k: from_pretrained_kwargs[k]
            for k in ("trust_remote_code", "revision", "cache_dir", "local_files_only", "token")
            if k in from_pretrained_kwargs
        }
        config = AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    with plain_linear_layers(config.model_type):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, quantization_config=quantization_config, **from_pretrained_kwargs
        )
    check_quantized(model, settings)
    return model


def check_quantized(model: nn.Module, settings: QuantizationSettings) -> None:
    """Raise unless every linear layer that should be quantized is a bitsandbytes layer."""
    import bitsandbytes as bnb

    target = bnb.nn.Linear8bitLt if settings.mode == "int8" else bnb.nn.Linear4bit
    quantizer = getattr(model, "hf_quantizer", None)
    skips = list(getattr(quantizer, "modules_to_not_convert", None) or settings.skip_modules)
    missed = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not isinstance(module, target) and not _is_skipped(name, skips)
    ]
    quantized = sum(isinstance(module, target) for module in model.modules())
    if missed or quantized == 0:
        raise ConfigError(
            f"quantization={settings.mode} left {len(missed)} linear layers unquantized "
            f"({', '.join(missed[:4]) or 'no layer was quantized'}) in a {type(model).__name__}. transformers "
            "replaces only exact nn.Linear: add this architecture's nn.Linear subclass to "
            "autocritic.model.quantization.LINEAR_SUBCLASSES, or use quantization=none."
        )


def _is_skipped(name: str, skips: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in skips)


def prepare_for_kbit_training(
    model: PreTrainedModel, gradient_checkpointing: bool = False
) -> PreTrainedModel:
    """peft's QLoRA preparation: freezes the backbone, casts fp16/bf16 weights (norms, embeddings) to fp32; then
    non-reentrant checkpointing (which needs no input-embedding gradient hack) under transformers' current name."""
    from peft import prepare_model_for_kbit_training

    from autocritic.model.backbone import enable_checkpointing

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model


def count_quantized_linears(model: nn.Module) -> dict[str, int]:
    """How many linear layers are 4-bit, 8-bit, or plain (`nn.Linear`: lm_head, LoRA adapters, unquantized)."""
    try:
        import bitsandbytes as bnb

        four_bit, eight_bit = bnb.nn.Linear4bit, bnb.nn.Linear8bitLt
    except Exception:  # no bitsandbytes: nothing can be quantized
        four_bit = eight_bit = ()
    counts = {"linear4bit": 0, "linear8bit": 0, "linear": 0}
    for module in model.modules():
        if four_bit and isinstance(module, four_bit):
            counts["linear4bit"] += 1
        elif eight_bit and isinstance(module, eight_bit):
            counts["linear8bit"] += 1
        elif isinstance(module, nn.Linear):
            counts["linear"] += 1
    return counts


def model_footprint_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (tied weights once), plus bitsandbytes quantization constants."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    for tensor in list(tensors.values()):
        tensors.update((id(c), c) for c in _quantization_constants(tensor))
    for module in model.modules():
        scale = getattr(getattr(module, "state", None), "SCB", None)  # int8 scales move here on first forward
        if isinstance(scale, torch.Tensor):
            tensors[id(scale)] = scale
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _quantization_constants(tensor: torch.Tensor) -> list[torch.Tensor]:
    found = []
    scale = getattr(tensor, "SCB", None)  # int8 row scales
    if isinstance(scale, torch.Tensor):
        found.append(scale)
    state = getattr(tensor, "quant_state", None)  # 4-bit block scales, nested (double quant) state
    while state is not None:
        found.extend(v for v in vars(state).values() if isinstance(v, torch.Tensor))
        state = getattr(state, "state2", None)
    return found


def check_quantization_compatible(quant_mode: str, peft_mode: str, backbone_trainable: bool = True) -> None:
    """Refuse a quantized backbone that would be trained in full (peft=none while the backbone trains).

    A frozen backbone (the transfer phase, only the head trains) may be quantized with or without peft.
    """
    if quant_mode not in MODES:
        raise ConfigError(f"quantization.mode={quant_mode!r} is not one of {list(MODES)}.")
    if quant_mode == "none" or not backbone_trainable:
        return
    if peft_mode in (None, "", "none"):
        bits = "a 4-bit" if quant_mode == "nf4" else "an 8-bit"
        raise ConfigError(
            f"{bits} model cannot be fully fine-tuned (quantization={quant_mode} with peft=none in a phase "
            "that trains the backbone): use peft=lora (QLoRA) or quantization=none, or freeze the backbone."
        )
