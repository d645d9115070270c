"""Console scripts `autocritic-train` and `autocritic-evaluate`: the Hydra apps of train.py and evaluate.py, run from
the configs that ship inside the package (autocritic/conf), so they work from any directory after `pip install`.

They take the same overrides (`autocritic-train phase=finetune peft=lora`); outputs/ and data/ are relative to the
directory they are run from, as with `python train.py`. The repository's top-level conf/ is this same directory.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from autocritic.entry import task, train_job
from autocritic.training.sweep_args import sanitize_overrides


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train(cfg: DictConfig) -> float | None:
    return task(train_job, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def _evaluate(cfg: DictConfig) -> float | None:
    from autocritic.evaluation.run import evaluate

    return task(evaluate, cfg)


def train() -> None:
    sys.argv[1:] = sanitize_overrides(sys.argv[1:])  # safe for wandb sweep agents, a no-op otherwise
    _train()


def evaluate() -> None:
    _evaluate()
