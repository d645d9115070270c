"""Shared by the benchmarks: compose the real config, and read the same data the way Hugging Face users do."""

from __future__ import annotations

import resource
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from autocritic.data.datamodule import CriticDataModule
from autocritic.entry import quiet_libraries
from autocritic.model.backbone import load_tokenizer
from autocritic.training.run import data_settings, ensure_offline_inputs

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(overrides: list[str]) -> DictConfig:
    quiet_libraries()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


def prepared_data(cfg: DictConfig) -> CriticDataModule:
    """The offline default is built if missing; the rows are read and tokenized by our datamodule."""
    ensure_offline_inputs(cfg)
    datamodule = CriticDataModule(data_settings(cfg), load_tokenizer(cfg.model.name_or_path))
    datamodule.setup()
    return datamodule


def hf_rows(datamodule: CriticDataModule, split: str) -> dict[str, list]:
    """Token ids and labels as a `datasets.Dataset` would hold them for a Hugging Face `Trainer`."""
    items = datamodule.encoded[split]
    return {"input_ids": [it["ids"][0] for it in items], "labels": [int(it["target"] >= 0.5) for it in items]}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def auroc(scores, labels) -> float:
    """Through torchmetrics, exactly as training computes it."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(torch.as_tensor(scores).float(), torch.as_tensor(labels).long()))
