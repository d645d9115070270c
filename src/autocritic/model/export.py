"""The export directory (Hugging Face form) and `load_critic`, its one way back in.

    export/
      critic_config.json    backbone reference, head settings, template, how the backbone was trained
      head.safetensors      the critic head (always, also under LoRA)
      tokenizer files
      backbone/             full fine-tuning only: `save_pretrained` of the backbone
      adapter/              LoRA only: `save_pretrained` of the PeftModel (LoRA weights + head)

Written into a temporary sibling directory and renamed at the end, so a crash never leaves half an export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autocritic.errors import CheckpointError
from autocritic.model.backbone import load_backbone, load_tokenizer, unwrap
from autocritic.model.critic import CriticModel, new_head
from autocritic.model.head import CriticHead, HeadSettings

CONFIG_NAME = "critic_config.json"
HEAD_NAME = "head.safetensors"
FORMAT_VERSION = 1


@dataclass
class LoadedCritic:
    model: CriticModel
    tokenizer: PreTrainedTokenizerBase
    template: str
    config: dict


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights, also when peft wraps it in a `modules_to_save` copy."""
    head = unwrap(model).head
    active = getattr(head, "modules_to_save", None)
    if active is not None:
        head = active[head.active_adapter if isinstance(head.active_adapter, str) else head.active_adapter[0]]
    return {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}


def save_critic(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    backbone_name_or_path: str,
    head_settings: HeadSettings,
    template: str,
    backbone_mode: str,
    extra: dict | None = None,
) -> Path:
    """backbone_mode: "frozen" (reference only), "full" (weights saved) or "lora" (adapter saved)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(head_state(model), str(tmp / HEAD_NAME))
    tokenizer.save_pretrained(tmp)
    if backbone_mode == "full":
        unwrap(model).backbone.save_pretrained(tmp / "backbone")
    elif backbone_mode == "lora":
        model.save_pretrained(tmp / "adapter")
    config = {
        "format_version": FORMAT_VERSION,
        "backbone": {"name_or_path": str(backbone_name_or_path), "mode": backbone_mode},
        "head": asdict(head_settings),
        "template": template,
        **(extra or {}),
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def read_critic_config(path: str | Path) -> dict:
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} is not an autocritic export: {CONFIG_NAME} is missing. Exports are written at the end of "
            "`python train.py` into <run dir>/export."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{config_file} is damaged ({error}): the export may have been cut short. Use another export, or "
            "export again (`python train.py ... ckpt=` needs a complete <run dir>/export)."
        ) from None
    if not isinstance(config, dict) or not {"backbone", "head", "template"} <= set(config):
        raise CheckpointError(f"{config_file} lacks backbone, head or template: it is not an autocritic export.")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_file} has format_version {config.get('format_version')}, this autocritic reads "
            f"{FORMAT_VERSION}: re-export it with a matching version."
        )
    return config


def load_head(path: str | Path, backbone: PreTrainedModel, settings: HeadSettings) -> CriticHead:
    head = new_head(backbone, settings)
    state = read_safetensors(Path(path) / HEAD_NAME)
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"the head in {path} does not fit this backbone (hidden size {backbone.config.hidden_size}): {error}"
        ) from None
    return head


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or damaged file is a CheckpointError naming it."""
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the export is incomplete. Use another export, or export again.")
    try:
        return load_file(str(file))
    except Exception as error:  # safetensors raises its own error type for a truncated or corrupt file
        raise CheckpointError(
            f"{file} is damaged ({error}): it may have been cut short. Use another export, or export again."
        ) from None


def load_critic(
    path: str | Path, dtype: str = "float32", merge: bool = True, device: str | torch.device = "cpu"
) -> LoadedCritic:
    """Rebuild the CriticModel of an export, in eval mode. With `merge`, LoRA is merged into the backbone."""
    path = Path(path)
    config = read_critic_config(path)
    mode = config["backbone"]["mode"]
    source = str(path / "backbone") if mode == "full" else config["backbone"]["name_or_path"]
    backbone = load_backbone(source, dtype=dtype)
    settings = HeadSettings(**config["head"])
    model: torch.nn.Module = CriticModel(backbone, load_head(path, backbone, settings))
    if mode == "lora":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(path / "adapter"))
        except Exception as error:  # a missing or truncated adapter file
            raise CheckpointError(
                f"the LoRA adapter in {path / 'adapter'} could not be read ({type(error).__name__}: {error}). Use "
                "another export, or export again."
            ) from None
        model = model.merge_and_unload() if merge else model
    return LoadedCritic(
        model=model.to(device).eval(), tokenizer=load_tokenizer(str(path)), template=config["template"], config=config
    )
