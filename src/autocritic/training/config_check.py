"""Config validation before any compute: one clear paragraph per mistake (what, where, how to fix)."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from autocritic.errors import ConfigError, invalid_value, is_of_kind
from autocritic.tracking import is_wandb, wandb_mode
from autocritic.training.objectives import SCHEMA_OF, STEPWISE_OBJECTIVES

PHASES = ("transfer", "finetune", "pretrain", "generate")
SCRATCH = "scratch"  # phase.init_from=scratch: a new head (and, in finetune, the whole model from the backbone)
INIT_FROM = (SCRATCH, "transfer", "finetune")
EXPORTS = ("best", "last")  # checkpoint.export: the epoch whose weights are tested and exported


def starts_from_scratch(cfg: DictConfig) -> bool:
    """No export to start from: phase.init_from is scratch (null and none say the same)."""
    return OmegaConf.select(cfg, "phase.init_from") in (None, SCRATCH, "none")


def positive(x) -> bool:
    return x > 0


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xpu")
PRECISIONS = ("32", "32-true", "64", "64-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true")


def batch_limit(x) -> bool:
    return 0 < x <= 1 if isinstance(x, float) else x >= 1


def device_spec(x) -> bool:
    if isinstance(x, list):
        return bool(x) and all(is_of_kind(i, (int,)) and i >= 0 for i in x)
    if isinstance(x, str):
        return x == "auto" or x.lstrip("-").isdigit()
    return x >= 1 or x == -1


def fraction(x) -> bool:
    return 0 <= x < 1


# key: (expected types, predicate on the value, what a good value looks like)
RULES: dict[str, tuple[tuple[type, ...], Callable | None, str]] = {
    "seed": ((int,), None, "an integer"),
    "phase.lr": ((float, int), positive, "a positive number such as 1e-3"),
    "phase.max_epochs": ((int,), positive, "a positive integer"),
    "phase.weight_decay": ((float, int), lambda x: x >= 0, "a number ≥ 0"),
    "phase.warmup_steps": ((int,), lambda x: x >= 0, "an integer ≥ 0"),
    "phase.schedule": ((str,), lambda x: x in ("constant", "cosine"), "constant or cosine"),
    "phase.freeze_backbone": ((bool,), None, "true or false"),
    "phase.cache_features": ((bool,), None, "true or false"),
    "phase.optimizer": ((str,), lambda x: x in ("adamw", "adamw8bit"), "adamw or adamw8bit"),
    "phase.init_from": ((str,), lambda x: x in (*INIT_FROM, "none"), "scratch (a new head) or transfer (the latest "
                        "transfer export)"),
    "data.batch_size": ((int,), positive, "a positive integer"),
    "data.eval_batch_size": ((int,), positive, "a positive integer"),
    "data.max_length": ((int,), positive, "a positive integer"),
    "data.val_fraction": ((float,), lambda x: 0 < x < 1, "a number in (0, 1)"),
    "data.group_by_length": ((bool,), None, "true or false"),
    "data.share_prompts": ((bool,), None, "true or false"),
    "data.template": ((str,), None, "a string with {prompt} and a final {response}"),
    "data.chat_template": ((str,), lambda x: x in ("auto", "none"), "auto or none"),
    "data.step_separator": ((str,), lambda x: bool(x), "a non-empty string (stepwise rows: the end of a step)"),
    "head.kind": ((str,), lambda x: x in ("linear", "mlp", "attention"), "linear, mlp or attention"),
    "head.window": ((int,), positive, "a positive integer (final states an attention head reads)"),
    "head.layers": ((int,), positive, "a positive integer"),
    "head.attention_heads": ((int,), positive, "a positive integer"),
    "head.dropout": ((float, int), fraction, "a number in [0, 1)"),
    "head.hidden_dim": ((int,), lambda x: x >= 0, "an integer ≥ 0"),
    "head.confidence": ((bool,), None, "true or false"),
    "head.tokens": ((bool,), None, "true or false"),
    "head.members": ((int,), positive, "a positive integer (heads averaged into the score)"),
    "head.feedforward": ((int,), positive, "a positive integer, or null (4 x head.hidden_dim)"),
    "head.attention_dropout": ((float, int), fraction, "a number in [0, 1), or null (head.dropout)"),
    "objective.kind": ((str,), lambda x: x in SCHEMA_OF, f"one of {list(SCHEMA_OF)}"),
    "objective.margin": ((float, int), None, "a number"),
    "objective.center_coef": ((float, int), lambda x: x >= 0, "a number ≥ 0"),
    "objective.lm_weight": ((float, int), lambda x: x >= 0, "a number ≥ 0"),
    "objective.replay_weight": ((float, int), lambda x: x >= 0, "a number ≥ 0"),
    "objective.value_weight": ((float, int), lambda x: x >= 0, "a number ≥ 0"),
    "objective.calibrate": ((bool,), None, "true or false"),
    "data.replay_batch_size": ((int,), positive, "a positive integer"),
    "model.name_or_path": ((str,), lambda x: bool(x.strip()), "a hub id or a local directory"),
    "model.dtype": ((str,), lambda x: x in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
    "model.trust_remote_code": ((bool,), None, "true or false"),
    "peft.mode": ((str,), lambda x: x in ("none", "lora"), "none or lora"),
    "peft.r": ((int,), positive, "a positive integer"),
    "peft.alpha": ((int, float), positive, "a positive number"),
    "peft.dropout": ((float, int), fraction, "a number in [0, 1)"),
    "export_diverged": ((bool,), None, "true or false"),
    "export.merged": ((bool,), None, "true or false"),
    "export.sequence_classification": ((bool,), None, "true or false"),
    "export.license": ((str,), None, "a license id such as apache-2.0, or null"),
    "progress_bar": ((str,), lambda x: x in ("rich", "tqdm", "none"), "rich, tqdm or none"),
    "paths.cache_max_gb": ((float, int), positive, "a positive number of GB, or null (no limit)"),
    "trainer.max_epochs": ((int,), positive, "a positive integer"),
    "trainer.accumulate_grad_batches": ((int,), positive, "a positive integer"),
    "trainer.gradient_clip_val": ((float, int), lambda x: x >= 0, "a number ≥ 0 (0 turns clipping off)"),
    "trainer.log_every_n_steps": ((int,), positive, "a positive integer"),
    "trainer.num_sanity_val_steps": ((int,), lambda x: x >= -1, "an integer ≥ -1"),
    "trainer.deterministic": ((bool, str), lambda x: x in (True, False, "warn"), "true, false or warn"),
    "trainer.fast_dev_run": ((bool, int), lambda x: x is True or x is False or x >= 1, "true, false or a number of batches"),
    "trainer.limit_train_batches": ((int, float), batch_limit, "a number of batches (≥ 1) or a fraction in (0, 1]"),
    "trainer.limit_val_batches": ((int, float), batch_limit, "a number of batches (≥ 1) or a fraction in (0, 1]"),
    "trainer.accelerator": ((str,), lambda x: x in ACCELERATORS, f"one of {list(ACCELERATORS)}"),
    "trainer.precision": ((str, int), lambda x: str(x) in PRECISIONS, f"one of {list(PRECISIONS)}"),
    "trainer.devices": ((int, str, list), device_spec, "a positive integer, -1, auto, or a list of device indices"),
    "checkpoint.save_top_k": ((int,), lambda x: x >= -1, "an integer ≥ -1 (-1 keeps every epoch, 0 none)"),
    "checkpoint.every_n_train_steps": ((int,), positive, "a positive integer, or null"),
    "checkpoint.export": ((str,), lambda x: x in EXPORTS, "best (the best validation epoch) or last (the last epoch)"),
}


def check_value(cfg: DictConfig, key: str) -> None:
    # A key that does not resolve belongs to a part this phase does not use (phase=pretrain has no max_epochs for
    # trainer.max_epochs: ${phase.max_epochs}); a phase that uses it fails on it with its own message.
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if value is None:
        return
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    kinds, predicate, expected = RULES[key]
    if not is_of_kind(value, kinds) or (predicate is not None and not predicate(value)):
        raise invalid_value(key, value, expected, f"Override it, e.g. `{key}=<value>`.")


def check_trainer_keys(cfg: DictConfig) -> None:
    """A key Lightning's Trainer does not take (added with +trainer.<key>) fails here, not deep in its constructor."""
    import inspect

    import lightning

    section = cfg.get("trainer")
    if not isinstance(section, DictConfig):
        return
    accepted = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(k for k in section if k != "_target_" and k not in accepted)
    if unknown:
        raise ConfigError(
            f"trainer has keys Lightning's Trainer does not take: {unknown}. Remove them, or see "
            "https://lightning.ai/docs/pytorch/stable/common/trainer.html for its arguments."
        )


def gpus_asked(devices) -> int:
    """How many GPUs trainer.devices names: a count, a list of indices, or 1 for auto/-1 (at least one)."""
    if isinstance(devices, (list, ListConfig)):
        return max(devices) + 1 if devices else 1
    if isinstance(devices, str):
        devices = int(devices) if devices.lstrip("-").isdigit() else 1
    return devices if devices > 0 else 1


def check_devices(cfg: DictConfig) -> None:
    """A trainer that asks for GPUs on a machine whose torch sees fewer fails now, not after the data is built
    (Lightning's own message, "No supported gpu backend found!", comes late and names no setting)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    asked = gpus_asked(devices)
    if seen == 0:
        cpu_build = torch.version.cuda is None and getattr(torch.version, "hip", None) is None
        why = "this torch is a CPU build" if cpu_build else "no GPU or driver is visible"
        raise ConfigError(
            f"trainer.accelerator={accelerator} asks for a GPU (trainer=gpu, fsdp and deepspeed do), but torch sees "
            f"none ({why}). Run on a machine with a GPU and a CUDA build of torch, or train on the CPU: leave "
            "trainer at its default (it takes the GPU when there is one) or set trainer.accelerator=cpu."
        )
    if asked > seen:
        raise ConfigError(
            f"trainer.devices={OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices} "
            f"asks for {asked} GPUs, but torch sees {seen}. Set trainer.devices={seen} (or auto), or check "
            "CUDA_VISIBLE_DEVICES."
        )


def check_config(cfg: DictConfig) -> None:
    phase = OmegaConf.select(cfg, "phase.name")
    if phase not in PHASES:
        raise ConfigError(f"phase={phase!r} is unknown: use one of {list(PHASES)}, e.g. `python train.py phase=transfer`.")
    builds = phase in ("pretrain", "generate")  # no Trainer: trainer.max_epochs refers to a phase.max_epochs absent here
    for key in RULES:
        if not (builds and key.startswith(("trainer.", "phase."))):
            check_value(cfg, key)
    if not builds:
        check_trainer_keys(cfg)
    if is_wandb(cfg.get("logger")):
        wandb_mode(cfg.logger.get("offline", True))  # an online run without a key fails here, before any compute
    if phase in ("pretrain", "generate"):
        return
    if cfg.get("ckpt") and starts_from_scratch(cfg):
        raise ConfigError(
            f"ckpt={cfg.ckpt!r} is read by phases that start from an export (phase=finetune); phase={phase} "
            f"(phase.init_from={OmegaConf.select(cfg, 'phase.init_from')}) starts a new head. Remove ckpt=, or use "
            "phase=finetune ckpt=<export dir>."
        )
    head_kind, window = OmegaConf.select(cfg, "head.kind"), OmegaConf.select(cfg, "head.window", default=1)
    if head_kind != "attention" and window != 1:
        raise ConfigError(
            f"head.window={window} needs an attention head: a {head_kind} head reads the last state only. Use "
            "head=attention, or head.window=1."
        )
    if head_kind != "attention" and OmegaConf.select(cfg, "head.tokens", default=False):
        raise ConfigError(
            f"head.tokens=true needs an attention head: a {head_kind} head reads one state. Use head=attention."
        )
    if head_kind == "attention" and cfg.head.hidden_dim % OmegaConf.select(cfg, "head.attention_heads", default=4):
        raise ConfigError(
            f"head.hidden_dim={cfg.head.hidden_dim} (the attention head's width) must be a multiple of "
            f"head.attention_heads={cfg.head.attention_heads}."
        )
    schema, kind = cfg.data.schema, cfg.objective.kind
    if schema == "stepwise" and kind not in STEPWISE_OBJECTIVES:
        raise ConfigError(
            f"objective={kind} needs pairs (chosen, rejected), but data.schema=stepwise gives one labelled row per "
            f"step: use objective=bce (or objective=mse, the 0/1 labels as targets)."
        )
    train_schema = cfg.data.get("train_schema") or schema
    if train_schema != schema:
        if train_schema == "pairwise" and kind != "pairwise":
            raise ConfigError(
                f"data.train_schema={train_schema} holds (chosen, rejected) pairs, which objective={kind} cannot "
                "train on: use objective.kind=pairwise, or leave data.train_schema unset (null)."
            )
    elif schema != "stepwise" and SCHEMA_OF[kind] != schema:
        raise ConfigError(
            f"objective={kind} needs {SCHEMA_OF[kind]} data but data.schema={schema}: use objective="
            f"{[k for k, s in SCHEMA_OF.items() if s == schema][0]} or data of the {SCHEMA_OF[kind]} schema."
        )
    if cfg.phase.freeze_backbone and cfg.objective.lm_weight > 0:
        raise ConfigError(
            "objective.lm_weight>0 trains the language model, but phase=transfer freezes it: use it with "
            "phase=finetune, or set objective.lm_weight=0."
        )
    if cfg.phase.freeze_backbone and (OmegaConf.select(cfg, "objective.replay_weight", default=0) or 0) > 0:
        raise ConfigError(
            "objective.replay_weight>0 trains the language model on replay documents, but phase=transfer freezes "
            "it: use it with phase=finetune, or set objective.replay_weight=0."
        )
    if (OmegaConf.select(cfg, "objective.value_weight", default=0) or 0) > 0 and cfg.phase.freeze_backbone and cfg.phase.cache_features:
        raise ConfigError(
            "objective.value_weight>0 trains every response token's value, but the feature cache keeps the last "
            "token only: set phase.cache_features=false, or use it with phase=finetune."
        )
    if cfg.phase.freeze_backbone and cfg.peft.mode != "none":
        raise ConfigError("peft=lora trains adapters, but phase=transfer freezes the backbone: use phase=finetune.")
    quant = OmegaConf.select(cfg, "quantization.mode", default="none")
    if quant != "none" and not cfg.phase.freeze_backbone and cfg.peft.mode == "none":
        raise ConfigError(
            f"quantization={quant} with peft=none would fully fine-tune a quantized model, which cannot be trained: "
            "use peft=lora (QLoRA) or quantization=none."
        )
    strategy = OmegaConf.select(cfg, "trainer.strategy", default=None)
    if isinstance(strategy, DictConfig) and "DeepSpeed" in str(strategy.get("_target_")) and strategy.get("stage") == 3:
        raise ConfigError(
            "trainer=deepspeed with trainer.strategy.stage=3 is not supported: the run trains, then DeepSpeed 0.19 "
            "cannot test it (measured on an H200, docs/results.md). Shard the weights with "
            "trainer=fsdp, or use ZeRO stage 2 (trainer=deepspeed, the default stage)."
        )
    check_devices(cfg)
