"""The export directory (Hugging Face form) and `load_critic`, its one way back in.

    export/
      critic_config.json    backbone reference, head settings, template, how the backbone was trained, and the
                            facts of training (phase, objective, data files with their sha256, test metrics)
      README.md             the model card, built from critic_config.json (model/card.py)
      head.safetensors      the critic head (always, also under LoRA)
      tokenizer files
      backbone/             full fine-tuning, or LoRA with `merged`: `save_pretrained` of the causal LM
      adapter/              LoRA only: a standard PEFT adapter of the causal LM (model/adapter.py)
      sequence_classification/   a linear head on the last state: an `AutoModelForSequenceClassification`

A backbone the export does not store is referenced portably (model/reference.py). Exports of format 1 (the
adapter of the whole critic, an absolute backbone path) still load. Written into a temporary sibling directory
and renamed at the end, so a crash never leaves half an export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autocritic.errors import CheckpointError, ConfigError
from autocritic.model.adapter import ADAPTER_DIR, apply_adapter, save_adapter
from autocritic.model.backbone import DTYPES, load_backbone, load_tokenizer, unwrap
from autocritic.model.card import CARD_NAME, model_card
from autocritic.model.critic import CriticModel, new_head
from autocritic.model.head import CriticHead, HeadSettings
from autocritic.model.reference import backbone_reference, resolve_backbone
from autocritic.model.sequence_classification import (
    SEQUENCE_CLASSIFICATION_DIR,
    save_sequence_classification,
    why_not_expressible,
)

CONFIG_NAME = "critic_config.json"
HEAD_NAME = "head.safetensors"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: the adapter of the whole critic (keys under `backbone.`), an absolute backbone path
WRITTEN_BY_TRAINING = ("format_version", "backbone", "head", "template", "sequence_classification")


@dataclass
class LoadedCritic:
    model: CriticModel
    tokenizer: PreTrainedTokenizerBase
    template: str
    config: dict
    path: Path | None = None  # the export directory it was read from
    backbone_source: str | None = None  # the hub id or directory its backbone was loaded from

    def save_pretrained(self, out_dir: str | Path, **options) -> Path:
        """Write this critic as an export (`options`: `save_critic`'s `merged`, `sequence_classification`). A LoRA
        critic loaded unmerged keeps its adapter and a frozen one its backbone reference; any other (full, or LoRA
        merged on loading) stores its backbone whole."""
        mode = self.config["backbone"]["mode"]
        if self.model is not unwrap(self.model):
            mode = "lora"
        elif mode == "lora":
            mode = "full"
        return save_critic(
            self.model,
            self.tokenizer,
            out_dir,
            self.backbone_source or self.config["backbone"]["name_or_path"],
            HeadSettings(**self.config["head"]),
            self.template,
            mode,
            extra={k: v for k, v in self.config.items() if k not in WRITTEN_BY_TRAINING},
            **options,
        )

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None, **kwargs) -> str:
        """`save_pretrained` into a temporary directory and upload it (`autocritic.model.hub.push_export`)."""
        import tempfile

        from autocritic.model.hub import push_export

        with tempfile.TemporaryDirectory() as tmp:
            export = self.save_pretrained(Path(tmp) / "export")
            return push_export(export, repo_id, private=private, token=token, **kwargs)


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights, also when peft wraps it in a `modules_to_save` copy."""
    head = unwrap(model).head
    active = getattr(head, "modules_to_save", None)
    if active is not None:
        head = active[head.active_adapter if isinstance(head.active_adapter, str) else head.active_adapter[0]]
    return {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}


def dtype_name(model: torch.nn.Module) -> str:
    names = {v: k for k, v in DTYPES.items()}
    return names.get(getattr(model, "dtype", None), "float32")


def save_critic(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    backbone_name_or_path: str,
    head_settings: HeadSettings,
    template: str,
    backbone_mode: str,
    extra: dict | None = None,
    merged: bool = False,
    sequence_classification: bool = True,
) -> Path:
    """backbone_mode: "frozen" (reference only), "full" (weights saved) or "lora" (adapter saved; with `merged`
    also the backbone with the adapter merged in). `sequence_classification`: also write that model when the head
    can be one. `extra`: facts for critic_config.json and the model card (phase, objective, data, test_metrics,
    license)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reference = backbone_reference(backbone_name_or_path, out_dir)
    live = unwrap(model).backbone
    save_file(head_state(model), str(tmp / HEAD_NAME))
    tokenizer.save_pretrained(tmp)
    if backbone_mode == "full":
        live.save_pretrained(tmp / BACKBONE_DIR)
    elif backbone_mode == "lora":
        save_adapter(model, tmp / ADAPTER_DIR, reference.get("absolute_path", reference["name_or_path"]))

    seq_cls_reason = why_not_expressible(head_settings) if sequence_classification else "export.sequence_classification is off"
    plain = None
    if (backbone_mode == "lora" and merged) or seq_cls_reason is None:
        plain = plain_backbone(live, backbone_mode, str(backbone_name_or_path), tmp, head_settings)
    if backbone_mode == "lora" and merged:
        plain.save_pretrained(tmp / BACKBONE_DIR)
    if seq_cls_reason is None:
        head = new_head(plain, head_settings)
        head.load_state_dict(head_state(model))
        seq_cls_reason = save_sequence_classification(plain, head, tokenizer, tmp / SEQUENCE_CLASSIFICATION_DIR)
    seq_cls = {"written": seq_cls_reason is None} | ({"reason": seq_cls_reason} if seq_cls_reason else {})

    mode_entry = {"mode": backbone_mode} | ({"merged": merged} if backbone_mode == "lora" else {})
    config = {
        "format_version": FORMAT_VERSION,
        "backbone": reference | mode_entry,
        "head": asdict(head_settings),
        "template": template,
        "sequence_classification": seq_cls,
        **(extra or {}),
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    has = {d for d in (ADAPTER_DIR, BACKBONE_DIR, SEQUENCE_CLASSIFICATION_DIR) if (tmp / d).is_dir()}
    (tmp / CARD_NAME).write_text(model_card(config, has), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def plain_backbone(
    live: PreTrainedModel, mode: str, source: str, written: Path, head_settings: HeadSettings
) -> PreTrainedModel:
    """The causal LM as loading the export rebuilds it, merged and unquantized: the live one when it is that
    (frozen or full, not quantized), else the base reloaded on the CPU with the just-written adapter merged in."""
    quantized = getattr(live, "hf_quantizer", None) is not None
    if mode != "lora" and not quantized:
        return live
    base = load_backbone(source, dtype=dtype_name(live))
    if mode != "lora":
        return base
    critic = CriticModel(base, new_head(base, head_settings))
    return apply_adapter(critic, written / ADAPTER_DIR, merge=True).backbone


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
    if config.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{config_file} has format_version {config.get('format_version')}, this autocritic reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}: re-export it with a matching version."
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


def device_and_dtype(device: str | torch.device, dtype: str) -> tuple[torch.device, str]:
    """"auto" for either: the GPU in bfloat16 when there is one, else the CPU in float32."""
    cuda = torch.cuda.is_available()
    if str(device) == "auto":
        device = "cuda" if cuda else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if cuda and torch.device(device).type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {sorted(DTYPES)} or auto.")
    return torch.device(device), dtype


def load_critic(
    path: str | Path,
    dtype: str = "float32",
    merge: bool = True,
    device: str | torch.device = "cpu",
    backbone: str | Path | None = None,
) -> LoadedCritic:
    """Rebuild the CriticModel of an export, in eval mode.

    Args:
        path: the export directory (`AutoCritic.from_pretrained` also takes a hub id).
        dtype: float32, bfloat16, float16, or "auto" (bfloat16 on a GPU, else float32).
        merge: LoRA merged into the backbone; False keeps a PeftModel around the critic.
        device: where the model goes; "auto": the GPU when there is one.
        backbone: the base model's directory or hub id, instead of the export's reference (an export whose
            backbone moved).

    Example:
        critic = load_critic("outputs/finetune/<run>/export", device="auto", dtype="auto")
    """
    path = Path(path)
    config = read_critic_config(path)
    device, dtype = device_and_dtype(device, dtype)
    entry = config["backbone"]
    mode = entry["mode"]
    merged_copy = mode == "lora" and merge and entry.get("merged") and backbone is None
    if mode == "full" or merged_copy:
        source = str(path / BACKBONE_DIR)
    else:
        source = resolve_backbone(path, entry, backbone)
    loaded = load_backbone(source, dtype=dtype)
    model: torch.nn.Module = CriticModel(loaded, load_head(path, loaded, HeadSettings(**config["head"])))
    if mode == "lora" and not merged_copy:
        model = apply_adapter(model, path / ADAPTER_DIR, merge, plain=config["format_version"] >= 2)
    return LoadedCritic(
        model=model.to(device).eval(),
        tokenizer=load_tokenizer(str(path)),
        template=config["template"],
        config=config,
        path=path,
        backbone_source=source,
    )
