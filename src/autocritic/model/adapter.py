"""The LoRA adapter of an export as a standard PEFT adapter of the plain causal LM.

Training wraps the whole CriticModel (backbone + head) with peft, so peft's own `save_pretrained` would write keys
under `backbone.` and no base model: loaded onto a plain causal LM it matches nothing and changes nothing. Here
the keys lose that prefix and the config names the base model and the task, so
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "export/adapter")` (and
`AutoPeftModelForCausalLM`) apply it; the head stays in head.safetensors beside it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from autocritic.errors import CheckpointError, ConfigError

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CRITIC_PREFIX = "base_model.model.backbone."  # a key of the adapter of a PeftModel around a CriticModel
PLAIN_PREFIX = "base_model.model."  # the same key for a PeftModel around the causal LM


def save_adapter(model: torch.nn.Module, out_dir: Path, base_model_name_or_path: str) -> None:
    """Write the LoRA weights and config of `model` (a PeftModel around a CriticModel) as a PEFT adapter of the
    causal LM alone."""
    from peft import get_peft_model_state_dict

    name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    state = get_peft_model_state_dict(model, adapter_name=name)
    outside = sorted(k for k in state if not k.startswith(CRITIC_PREFIX))
    if outside:  # e.g. a `modules_to_save` copy of the head: not part of the causal LM
        raise CheckpointError(
            f"the adapter holds weights outside the backbone ({', '.join(outside[:3])}): LoRA must target backbone "
            "layers only; the head is saved in head.safetensors."
        )
    plain = {PLAIN_PREFIX + k[len(CRITIC_PREFIX) :]: v.detach().cpu().contiguous() for k, v in state.items()}
    config = copy.deepcopy(model.peft_config[name])
    config.base_model_name_or_path = base_model_name_or_path
    config.task_type = "CAUSAL_LM"  # AutoPeftModelForCausalLM picks its class from this
    config.inference_mode = True
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file(plain, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})


@contextlib.contextmanager
def bitsandbytes_quiet() -> Iterator[None]:
    """peft imports bitsandbytes when it is installed (peft 0.22: when it first wraps a model or loads an adapter),
    and on CPUs with AVX512-BF16 bitsandbytes then looks for its CPU 4-bit kernel on the Hub (through the `kernels`
    package) and warns when it cannot have it: a matter for quantized models only (loading one runs its backend
    first, model/quantization.py), noise to someone training or loading an adapter. Both libraries' warnings are
    quiet inside this block alone."""
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def with_new_lora(model: torch.nn.Module, config: dict, fix: str, task_type: str | None = None) -> torch.nn.Module:
    """`model` under a fresh LoRA adapter (peft's `LoraConfig(**config)`; its base weights frozen). peft's refusal, a
    target that names no layer of the model, becomes a ConfigError that ends with `fix`."""
    with bitsandbytes_quiet():
        from peft import LoraConfig, get_peft_model

        try:
            return get_peft_model(model, LoraConfig(**config, task_type=task_type))
        except ValueError as error:
            raise ConfigError(f"LoRA could not be applied ({error}). {fix}") from None


def apply_adapter(critic: torch.nn.Module, adapter_dir: Path, merge: bool, plain: bool = True) -> torch.nn.Module:
    """`critic` (a CriticModel) with the export's adapter on its backbone: merged into the weights (a CriticModel
    again), or as a PeftModel around it. `plain`: the adapter is a causal LM's (this module's layout); exports of
    format 1 wrote the CriticModel's own."""
    with bitsandbytes_quiet():
        from peft import PeftConfig, PeftModel

        try:
            extra = {}
            if plain:
                config = PeftConfig.from_pretrained(str(adapter_dir))
                config.task_type = None  # peft's causal-LM wrapper would call the CriticModel like a causal LM
                extra = {"config": config, "key_mapping": {"^": "backbone."}}
            model = PeftModel.from_pretrained(critic, str(adapter_dir), **extra)
        except Exception as error:  # a missing or truncated adapter file
            raise CheckpointError(
                f"the LoRA adapter in {adapter_dir} could not be read ({type(error).__name__}: {error}). Use another "
                "export, or export again."
            ) from None
    return model.merge_and_unload() if merge else model
