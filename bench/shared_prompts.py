"""Fine-tuning steps with shared prompts (data.share_prompts=true) vs one row per sequence, same model and rows.

Self-generated critic data holds K answers per prompt, and the few-shot prompt is most of each row's tokens:
with shared prompts a batch runs each distinct prompt once and only the answers per row (the losses and
gradients are the same, tests/test_shared_prompts.py). Timed: STEPS training steps of the finetune phase
(LoRA, critic + joint LM loss + replay documents, as `python train.py phase=finetune` runs them), forward,
backward and optimizer step; each side REPEATS times, alternating; medians.

    python bench/shared_prompts.py [hydra overrides]       # prints rows/s of both and the ratio shared / plain
    python bench/shared_prompts.py objective.replay_weight=0   # the critic rows alone
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from common import compose_config, prepared_data

STEPS = 60
REPEATS = 3


def batches(cfg, share: bool) -> tuple[list, int]:
    """The first STEPS training batches (critic rows, replay documents) and the tokens they run."""
    cfg.data.share_prompts = share
    datamodule = prepared_data(cfg)
    loaders = datamodule.train_dataloader()
    critic_batches = loaders["critic"] if isinstance(loaders, dict) else loaders
    replay = iter(loaders["replay"]) if isinstance(loaders, dict) else None
    out, tokens = [], 0
    for step, critic_batch in enumerate(critic_batches):
        if step == STEPS:
            break
        out.append(critic_batch if replay is None else {"critic": critic_batch, "replay": next(replay)})
        masks = [critic_batch[k] for k in ("attention_mask", "prefix_mask", "answer_mask") if k in critic_batch]
        tokens += sum(int(m.sum()) for m in masks)
    return out, tokens


def timed_run(cfg, steps: list) -> float:
    from autocritic.training.module import CriticModule, OptimSettings
    from autocritic.training.run import build_critic, objective_settings

    torch.manual_seed(0)
    critic, _ = build_critic(cfg, start=None)
    objective = objective_settings(cfg)
    module = CriticModule(critic, objective, OptimSettings(lr=cfg.phase.lr), backbone_frozen=False)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.phase.lr)
    started = time.perf_counter()
    for index, batch in enumerate(steps):
        loss = module.training_step(batch, index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> None:
    cfg = compose_config(["phase=finetune", *sys.argv[1:]])
    plain, plain_tokens = batches(cfg, share=False)
    shared, shared_tokens = batches(cfg, share=True)
    rows = cfg.data.batch_size * STEPS
    seconds = {"plain": [], "shared": []}
    for _ in range(REPEATS):
        seconds["plain"].append(timed_run(cfg, plain))
        seconds["shared"].append(timed_run(cfg, shared))
    plain_s, shared_s = statistics.median(seconds["plain"]), statistics.median(seconds["shared"])
    replay = f" + {cfg.data.replay_batch_size} replay documents" if isinstance(plain[0], dict) and "replay" in plain[0] else ""
    print(f"{STEPS} finetune steps of {cfg.data.batch_size} rows{replay}, torch threads {torch.get_num_threads()}")
    print(f"critic-row tokens run: plain {plain_tokens:,}, shared prompts {shared_tokens:,} ({shared_tokens / plain_tokens:.2f}x)")
    print(f"plain rows:     {rows / plain_s:7.1f} rows/s  (runs {', '.join(f'{s:.1f}' for s in seconds['plain'])} s)")
    print(f"shared prompts: {rows / shared_s:7.1f} rows/s  (runs {', '.join(f'{s:.1f}' for s in seconds['shared'])} s)")
    print(f"speed-up: {plain_s / shared_s:.2f}x")


if __name__ == "__main__":
    main()
