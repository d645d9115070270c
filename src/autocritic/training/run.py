"""`python train.py`: build everything from the config, train, test the best checkpoint, export.

Phases are configuration: `phase.freeze_backbone` decides what trains, `phase.init_from` where the head starts,
`peft` whether LoRA wraps the model. The offline phases (pretrain, generate) live in `autocritic.offline`.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from autocritic.chat_format import DIALOGUE_CHAT_TEMPLATE, has_chat_template
from autocritic.data.datamodule import SPLITS, CriticDataModule, DataSettings, as_list
from autocritic.data.stepwise import DEFAULT_SEPARATOR
from autocritic.data.template import read_template_file
from autocritic.errors import ConfigError, DivergedError
from autocritic.model.backbone import (
    LoraSettings,
    apply_lora,
    count_parameters,
    enable_checkpointing,
    freeze,
    load_backbone,
    load_tokenizer,
)
from autocritic.model.card import file_facts
from autocritic.model.critic import CriticModel
from autocritic.model.export import load_head, read_critic_config, save_critic
from autocritic.model.head import HeadSettings
from autocritic.settings import settings_from
from autocritic.signals import SaveOnSignal, interrupted
from autocritic.tracking import is_wandb, wandb_mode
from autocritic.training.calibration import Calibration
from autocritic.training.config_check import check_config
from autocritic.training.divergence import LossWatch, divergence
from autocritic.training.feature_cache import FEATURES, Ranks, cache_key, load_or_compute
from autocritic.training.module import CriticModule, NonFiniteLossError, OptimSettings
from autocritic.training.objectives import ObjectiveSettings
from autocritic.training.preflight import METRICS_NAME, preflight, uses_offline_backbone, uses_offline_data

log = logging.getLogger("autocritic")


def data_settings(cfg: DictConfig) -> DataSettings:
    extra = {} if replays(cfg) else {"replay_files": []}  # a frozen backbone or no replay loss: nothing reads them
    return settings_from(DataSettings, cfg.data, "data", skip=("offline_default", "template_file"), seed=cfg.seed, **extra)


def use_template_file(cfg: DictConfig) -> None:
    """data.template_file: the template read from a file replaces data.template (one value for the whole run)."""
    path = OmegaConf.select(cfg, "data.template_file", default=None)
    if path:
        with open_dict(cfg):
            cfg.data.template = read_template_file(path)
    elif "\\n" in (OmegaConf.select(cfg, "data.template", default="") or ""):
        log.warning(
            "data.template holds a backslash followed by n, not a newline (a shell passes '\\n' as two characters): "
            "write the template in a file and pass data.template_file=<file>, or use bash's $'...' quoting"
        )


def head_settings_of(cfg: DictConfig) -> HeadSettings:
    return settings_from(HeadSettings, cfg.head, "head")


def objective_settings(cfg: DictConfig) -> ObjectiveSettings:
    return settings_from(ObjectiveSettings, cfg.objective, "objective", skip=("monitor", "mode"))


def optim_settings(cfg: DictConfig) -> OptimSettings:
    phase_keys = ("name", "freeze_backbone", "cache_features", "init_from", "max_epochs")
    return settings_from(OptimSettings, cfg.phase, "phase", skip=phase_keys)


def replays(cfg: DictConfig) -> bool:
    """Whether the language model trains on replay documents in this run."""
    weight = OmegaConf.select(cfg, "objective.replay_weight", default=0.0) or 0.0
    return bool(weight > 0 and not cfg.phase.freeze_backbone and as_list(cfg.data.get("replay_files")))


def build_critic(cfg: DictConfig, start: Path | None) -> tuple[torch.nn.Module, HeadSettings]:
    quantization = None
    if OmegaConf.select(cfg, "quantization.mode", default="none") != "none":
        from autocritic.model.quantization import QuantizationSettings

        quantization = settings_from(QuantizationSettings, cfg.quantization, "quantization")
    backbone = load_backbone(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code, quantization)
    if start is not None:
        head_settings = HeadSettings(**read_critic_config(start)["head"])
        head = load_head(start, backbone, head_settings)
    else:
        head_settings = head_settings_of(cfg)
        head = None
    critic = CriticModel(backbone, head, head_settings)
    if cfg.phase.freeze_backbone:
        freeze(critic.backbone)
        return critic, head_settings
    critic.backbone.train()  # from_pretrained returns eval mode: dropout would silently stay off
    if quantization is not None:
        from autocritic.model.quantization import prepare_for_kbit_training

        prepare_for_kbit_training(critic.backbone, cfg.model.gradient_checkpointing)
    elif cfg.model.gradient_checkpointing:
        enable_checkpointing(critic.backbone)
    if cfg.peft.mode == "lora":
        lora = settings_from(LoraSettings, cfg.peft, "peft", skip=("mode",))
        return apply_lora(critic, lora), head_settings
    return critic, head_settings


def chat_template_key(cfg: DictConfig) -> dict:
    """The features' chat layout, named only when it is not the default (the keys of existing caches stay valid)."""
    layout = cfg.data.get("chat_template", "auto")
    return {} if layout == "auto" else {"chat_template": layout}


def step_separator_key(cfg: DictConfig) -> dict:
    """Stepwise rows: the separator makes the texts, so it keys their features (other schemas' keys stay as they were)."""
    if cfg.data.schema != "stepwise":
        return {}
    return {"step_separator": OmegaConf.select(cfg, "data.step_separator", default=DEFAULT_SEPARATOR)}


class FeatureCache(L.Callback):
    """The frozen phase's features (`feature_cache.load_or_compute`), read or computed once the Trainer has set up
    this process: on its own device, and under data parallelism each rank computes a share of the rows and the
    ranks exchange them. Before the Trainer has set each rank's device, `cuda` is the first GPU for every rank."""

    def __init__(self, cfg: DictConfig, critic: CriticModel):
        files = as_list(cfg.data.train_files) + as_list(cfg.data.val_files) + as_list(cfg.data.test_files)
        layout = FEATURES if critic.window == 1 else f"{FEATURES}, window {critic.window}"
        layout += ", token ids" if critic.reads_tokens else ""
        self.key = cache_key(
            cfg.model.name_or_path,
            files,
            cfg.data.template,
            cfg.data.max_length,
            {"dtype": cfg.model.dtype, "schema": cfg.data.schema, "hub": cfg.data.hub_id, "columns": dict(cfg.data.columns),
             **chat_template_key(cfg), **step_separator_key(cfg), **train_schema_key(cfg),
             "quantization": OmegaConf.to_container(cfg.quantization), "seed": cfg.seed, "features": layout},
        )
        self.cache_dir, self.critic = cfg.paths.cache, critic
        limit = OmegaConf.select(cfg, "paths.cache_max_gb", default=None)
        self.max_bytes = None if limit is None else int(limit * 1e9)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule.features:
            return  # fit set them up; test comes after
        ranks = None
        if trainer.world_size > 1:
            strategy = trainer.strategy
            ranks = Ranks(trainer.global_rank, trainer.world_size, strategy.all_gather, lambda ok: strategy.reduce_boolean_decision(ok, all=True))
        device = trainer.strategy.root_device
        features, hit = load_or_compute(
            self.critic.to(device), datamodule, self.cache_dir, self.key, device, ranks, self.max_bytes
        )
        log.info("feature cache %s (%s)", "hit" if hit else "computed", self.key)
        datamodule.use_features(features)


RANKING_MONITORS = ("val/auroc", "val/within_auroc")


def train_schema_key(cfg: DictConfig) -> dict:
    """Pairwise training rows read from the same source as pointwise ones (a hub split) are other features; the
    key of a run without data.train_schema stays what it was."""
    train_schema = cfg.data.get("train_schema")
    return {"train_schema": train_schema} if train_schema not in (None, cfg.data.schema) else {}


def checkpoint_monitor(cfg: DictConfig, rows: dict[str, list[dict]] | None) -> tuple[str, str]:
    """objective.monitor and its mode, unless the validation rows cannot rank the epochs with it: an AUROC over
    labels of one class is the same every epoch, and the first epoch would be exported however the run went on.
    The validation loss ranks them then."""
    monitor, mode = cfg.objective.monitor, cfg.objective.mode
    labels = {row["label"] >= 0.5 for row in (rows or {}).get("val", []) if "label" in row}
    if monitor in RANKING_MONITORS and len(labels) == 1:
        log.warning(
            "every validation label is %s: %s cannot tell the epochs apart, the best epoch is chosen by val/loss",
            int(labels.pop()), monitor,
        )
        return "val/loss", "min"
    return monitor, mode


def run_summary(cfg: DictConfig, start: Path | None, monitor: str, mode: str) -> str:
    """One line saying what this run trains, on which losses, from where, and which epoch it exports."""
    frozen = cfg.phase.freeze_backbone
    trains = "the head (backbone frozen)" if frozen else f"head and backbone ({'LoRA' if cfg.peft.mode == 'lora' else 'full'})"
    losses = [f"{cfg.objective.kind} critic loss"]
    if not frozen and cfg.objective.lm_weight > 0:
        losses.append(f"{cfg.objective.lm_weight:g} × LM loss on right/chosen responses (objective.lm_weight=0: off)")
    if replays(cfg):
        losses.append(f"{cfg.objective.replay_weight:g} × LM loss on data.replay_files")
    origin = f"the export {start}" if start else "a new head (phase.init_from=scratch)"
    exported = (
        "the last epoch" if cfg.checkpoint.export == "last" else f"the best epoch by {monitor} ({mode})"
    )
    return (
        f"phase={cfg.phase.name}: trains {trains} of {cfg.model.name_or_path} on {' + '.join(losses)}; "
        f"starts from {origin}; exports {exported} (checkpoint.export)"
    )


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    extra_callbacks: list[L.Callback] | None = None,
    monitor: tuple[str, str] | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """`monitor`: (metric, mode) choosing the best checkpoint; objective.monitor and objective.mode by default."""
    metric, mode = monitor or (cfg.objective.monitor, cfg.objective.mode)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=metric,
        mode=mode,
        save_top_k=cfg.checkpoint.save_top_k,
    )
    # last.ckpt comes from callbacks without a monitor: since Lightning 2.6 a monitored callback rewrites last.ckpt
    # only when its metric improves, and defers step saves until validation has run (the end of the epoch).
    last = dict(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False)
    callbacks: list = [*(extra_callbacks or []), checkpoint, ModelCheckpoint(**last)]  # every epoch
    if cfg.checkpoint.every_n_train_steps:
        callbacks.append(ModelCheckpoint(**last, every_n_train_steps=cfg.checkpoint.every_n_train_steps))
    if cfg.progress_bar == "rich":
        callbacks.append(RichProgressBar())
    elif cfg.progress_bar == "tqdm":
        callbacks.append(TQDMProgressBar())
    logger = False
    if "_target_" in cfg.logger:
        extra = {"mode": wandb_mode(cfg.logger.offline)} if is_wandb(cfg.logger) else {}
        logger = instantiate(cfg.logger, save_dir=str(run_dir), **extra)
    trainer = instantiate(
        cfg.trainer,
        strategy=build_strategy(cfg.trainer.get("strategy")),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.progress_bar != "none",
    )
    return trainer, checkpoint


LAYER_POLICIES = ("auto_wrap_policy", "activation_checkpointing_policy")


def build_strategy(spec):
    """A strategy name passes through; a `_target_` spec is built, its layer-class names resolved to classes."""
    if spec is None:
        return "auto"
    if isinstance(spec, str) or "_target_" not in spec:
        return spec
    layer_sets = {k: {get_class(name) for name in spec[k]} for k in LAYER_POLICIES if spec.get(k)}
    try:
        return instantiate(spec, **layer_sets)
    except Exception as error:  # a missing optional backend (deepspeed) or a bad argument
        raise ConfigError(
            f"trainer.strategy {spec._target_} could not be built: {error}. Install its backend on this machine "
            "(e.g. pip install deepspeed) or choose trainer=default / trainer=ddp."
        ) from None


def gathered_critic(
    cfg: DictConfig, trainer: L.Trainer, module: CriticModule, start: Path | None
) -> torch.nn.Module | None:
    """The critic to export, whole, on rank 0 (None on other ranks). Every rank must call it: under FSDP each
    rank holds shards, so the weights are gathered and loaded into a fresh unsharded copy. The other strategies
    (DDP, DeepSpeed ZeRO-2) hold whole weights on every rank and export the live module."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.critic if trainer.is_global_zero else None
    state = trainer.strategy.lightning_module_state_dict()  # full state on rank 0 (state_dict_type: full)
    if not trainer.is_global_zero:
        return None
    critic, _ = build_critic(cfg, start)
    prefix = "critic."
    critic.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return critic


@contextmanager
def stopped_on_non_finite(last_checkpoint: Path):
    """A non-finite loss stops training; the message says which checkpoint, if any, holds the last good state."""
    try:
        yield
    except NonFiniteLossError as error:
        kept = f"{last_checkpoint} is intact" if last_checkpoint.is_file() else "no checkpoint had been written yet"
        raise NonFiniteLossError(f"{error} {kept}.") from None


def ensure_offline_inputs(cfg: DictConfig) -> None:
    """The offline default builds its backbone and critic data on first use, when this run uses them."""
    backbone, data = uses_offline_backbone(cfg), uses_offline_data(cfg)
    if not (backbone or data):
        return
    from autocritic.offline.pipeline import (
        check_offline_settings,
        ensure_backbone,
        ensure_critic_data,
        ensure_replay_documents,
        offline_replay_file,
    )

    check_offline_settings(cfg)
    if backbone:
        ensure_backbone(cfg, force=False)
    if data:
        ensure_critic_data(cfg, force=False)
        if replays(cfg) and str(offline_replay_file(cfg)) in as_list(cfg.data.replay_files):
            ensure_replay_documents(cfg, force=False)


def warn_truncated(stats: dict, max_length: int) -> None:
    """Rows longer than data.max_length keep their last tokens (the response, cut from the prompt's start): said
    once per split, since a limit set too low trains on fragments of every prompt."""
    for split in SPLITS:
        cut, rows = stats.get(f"data/{split}_truncated", 0), stats.get(f"data/{split}_examples", 0)
        if cut:
            log.warning(
                "data: %d of %d %s rows are longer than data.max_length=%d tokens and keep only their last %d "
                "(the start of the prompt is cut); raise data.max_length to keep them whole.",
                cut, rows, split, max_length, max_length,
            )


def chat_tokenizer(cfg: DictConfig, tokenizer):
    """The tokenizer with the chat template that renders this run's conversations, saved with the export so that
    CriticChatModel renders them the same way: none for data.chat_template=none (the dialogue layout), and the
    dialogue layout as a template for an offline backbone built before its tokenizer had one."""
    if cfg.data.get("chat_template", "auto") == "none":
        tokenizer.chat_template = None
    elif uses_offline_backbone(cfg) and not has_chat_template(tokenizer):
        tokenizer.chat_template = DIALOGUE_CHAT_TEMPLATE
    return tokenizer


def export_facts(cfg: DictConfig, data: DataSettings, metrics: dict, start: Path | None) -> dict:
    """What the export's critic_config.json and model card say about this run."""
    return {
        "phase": cfg.phase.name,
        "test_metrics": metrics,
        "started_from": str(start) if start else None,
        "objective": OmegaConf.to_container(cfg.objective, resolve=True),
        "data": {
            **{f"{split}_files": file_facts(getattr(data, f"{split}_files")) for split in ("train", "val", "test")},
            "hub_id": data.hub_id,
            "schema": data.schema,
        },
        "license": OmegaConf.select(cfg, "export.license", default=None),
    }


def label_your_problems(cfg: DictConfig) -> None:
    """phase=generate on the user's problems (autocritic.labelling); the offline backbone is built only if it is
    the model that answers them."""
    from autocritic.labelling.run import label_your_problems, prepare

    prepared = prepare(cfg)  # checker, problems and settings: before the offline build or any model load
    if uses_offline_backbone(cfg):
        from autocritic.offline.pipeline import ensure_backbone

        ensure_backbone(cfg, force=False)
    return label_your_problems(cfg, prepared)


def train(cfg: DictConfig) -> float | None:
    use_template_file(cfg)
    check_config(cfg)
    run_dir = Path(cfg.paths.run_dir or cfg.paths.outputs)
    if cfg.phase.name == "generate" and OmegaConf.select(cfg, "generate.problems"):
        return label_your_problems(cfg)
    if cfg.phase.name in ("pretrain", "generate"):
        from autocritic.offline.pipeline import run_offline_phase

        return run_offline_phase(cfg)
    data = data_settings(cfg)
    checked = preflight(cfg, data)  # paths, checkpoints and every row of the user's files, in seconds
    ensure_offline_inputs(cfg)  # builds the offline default when this run uses it
    L.seed_everything(cfg.seed, workers=True)

    tokenizer = chat_tokenizer(cfg, load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code))
    datamodule = CriticDataModule(data, tokenizer, rows=checked.rows)
    datamodule.setup()  # every row read and checked before the model is loaded
    if data.schema == "stepwise":
        stats = datamodule.stats
        log.info("stepwise rows, one example per step: %s", ", ".join(
            f"{split} {stats[f'data/{split}_solutions']} solutions → {stats[f'data/{split}_steps']} steps"
            for split in ("train", "val", "test")
        ))
    warn_truncated(datamodule.stats, data.max_length)
    objective = objective_settings(cfg)
    cached = cfg.phase.freeze_backbone and cfg.phase.cache_features
    critic, head_settings = build_critic(cfg, checked.start)

    eval_kind = "bce" if data.schema_of("train") != data.schema else None  # pairs train, pointwise val/test
    module = CriticModule(
        critic, objective, optim_settings(cfg), backbone_frozen=cfg.phase.freeze_backbone, eval_kind=eval_kind
    )
    last_checkpoint = run_dir / "checkpoints" / "last.ckpt"
    on_signal, watch = SaveOnSignal(last_checkpoint), LossWatch()
    callbacks = [on_signal, watch, *([FeatureCache(cfg, critic)] if cached else [])]
    if module.kinds["val"] == "bce" and objective.calibrate:
        callbacks.append(Calibration())
    monitor, mode = checkpoint_monitor(cfg, checked.rows)
    trainer, checkpoint = build_trainer(cfg, run_dir, callbacks, (monitor, mode))
    log.info("%s", run_summary(cfg, checked.start, monitor, mode))
    params = {f"params/{k}": v for k, v in count_parameters(critic).items()}
    log.info("parameters: %s", ", ".join(f"{k.split('/')[1]} {v:,}" for k, v in params.items()))
    if trainer.logger:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | params | datamodule.stats)

    resume_hint = f"python train.py phase={cfg.phase.name} resume={last_checkpoint}"
    with interrupted(on_signal, resume_hint), stopped_on_non_finite(last_checkpoint):
        trainer.fit(module, datamodule=datamodule, ckpt_path=checked.resume)
    best_score = checkpoint.best_model_score  # the monitored validation metric, before test() resets the metrics
    best = checkpoint.best_model_path or None
    if cfg.trainer.fast_dev_run or cfg.checkpoint.export == "last":
        best = None  # fast_dev_run saves no checkpoint; export=last tests and exports the weights as they end
    with interrupted(on_signal, resume_hint):
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False) if best else trainer.test(module, datamodule=datamodule)
    metrics = tested[0] if tested else {}
    value = best_score if best_score is not None else trainer.callback_metrics.get(monitor)
    diverged = divergence(watch, metrics)
    if diverged and not cfg.export_diverged:
        if trainer.is_global_zero:
            (run_dir / METRICS_NAME).write_text(json.dumps(metrics | {"diverged": diverged}, indent=2))
        raise DivergedError(
            f"the run diverged: {diverged}. Nothing was exported; the checkpoints are in {run_dir / 'checkpoints'}. "
            "Lower phase.lr, keep gradient clipping on (trainer.gradient_clip_val), or check the labels; "
            "export_diverged=true exports it anyway."
        )
    exported = gathered_critic(cfg, trainer, module, checked.start)
    if exported is None:
        return None  # one export per run, written by rank 0
    if diverged:
        log.warning("the run diverged (%s); exported anyway (export_diverged=true)", diverged)
    backbone_mode = "frozen" if cfg.phase.freeze_backbone else ("lora" if cfg.peft.mode == "lora" else "full")
    export = save_critic(
        exported,
        tokenizer,
        run_dir / "export",
        backbone_name_or_path=cfg.model.name_or_path,
        head_settings=head_settings,
        template=cfg.data.template,
        backbone_mode=backbone_mode,
        # chat_template: what rendered conversations; null: "Human:/AI:" lines
        extra=export_facts(cfg, data, metrics, checked.start) | {"chat_template": tokenizer.chat_template},
        merged=bool(OmegaConf.select(cfg, "export.merged", default=False)),
        sequence_classification=bool(OmegaConf.select(cfg, "export.sequence_classification", default=True)),
    )
    (run_dir / METRICS_NAME).write_text(json.dumps(metrics | ({"diverged": diverged} if diverged else {}), indent=2))
    log.info("export written to %s", export)
    return float(value) if value is not None else None
