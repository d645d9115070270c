"""Train the auto-critic. Examples:

    python train.py phase=transfer                 # head only, backbone frozen (offline default)
    python train.py phase=finetune peft=lora       # whole model through LoRA, from the transfer export
    python train.py phase=finetune peft=none       # full fine-tuning
    python train.py phase=pretrain | phase=generate  # rebuild the offline backbone / self-labelled data
"""

import sys

import hydra
from omegaconf import DictConfig

from autocritic.entry import task, train_job
from autocritic.training.sweep_args import sanitize_overrides


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return task(train_job, cfg)


if __name__ == "__main__":
    sys.argv[1:] = sanitize_overrides(sys.argv[1:])  # safe for wandb sweep agents, a no-op otherwise
    main()
