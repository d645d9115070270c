"""Evaluate an exported critic with LangChain: prompts, few-shot, agent, memory and best-of-N reranking. Examples:

python evaluate.py                                          # every suite, latest export (finetune, else transfer)
python evaluate.py suites=[agent,rerank] ckpt=outputs/transfer/<run>/export n_samples=16
python evaluate.py logger=wandb                             # also an offline wandb run with tables and plots
"""

import hydra
from omegaconf import DictConfig

from autocritic.entry import task


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from autocritic.evaluation.run import evaluate

    return task(evaluate, cfg)


if __name__ == "__main__":
    main()
