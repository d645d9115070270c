"""Tokens a data-parallel epoch runs: Lightning's sharding of our sampler vs BatchShard, same rows, same order.

Lightning shards a custom sampler by striding it (`DistributedSamplerWrapper`: row i to rank i mod world), which
splits the answers to one prompt across ranks, so each rank runs the prompt again. `BatchShard` deals whole
batches. Counted (no timing: a rank's step time follows the tokens it runs) over one epoch of the finetune split,
all ranks summed, for 1, 2, 4 and 8 simulated ranks; the ratio is against one process.

    python bench/data_parallel_tokens.py [hydra overrides]
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from common import compose_config, prepared_data
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader

WORLDS = (2, 4, 8)


def tokens(loader) -> tuple[int, int]:
    """(tokens, prompt runs) of one epoch."""
    total = prompts = 0
    for batch in loader:
        total += sum(int(batch[k].sum()) for k in ("attention_mask", "prefix_mask", "answer_mask") if k in batch)
        prompts += int(batch["prefix_ids"].shape[0]) if "prefix_ids" in batch else int(batch["target"].shape[0])
    return total, prompts


def main() -> None:
    cfg = compose_config(["phase=finetune", *sys.argv[1:]])
    datamodule = prepared_data(cfg)
    one = datamodule.train_dataloader()
    one = one["critic"] if isinstance(one, dict) else one
    base, base_prompts = tokens(one)
    print(f"finetune split: {len(datamodule.encoded['train']):,} rows, batch {cfg.data.batch_size}, "
          f"share_prompts={cfg.data.share_prompts}")
    print(f"1 process: {base:,} tokens, {base_prompts:,} prompt runs")
    for world in WORLDS:
        strided = dealt = strided_prompts = dealt_prompts = 0
        for rank in range(world):
            datamodule.trainer = SimpleNamespace(world_size=world, global_rank=rank)
            loaders = datamodule.train_dataloader()
            ours = loaders["critic"] if isinstance(loaders, dict) else loaders
            t, p = tokens(ours)
            dealt, dealt_prompts = dealt + t, dealt_prompts + p
            wrapper = DistributedSamplerWrapper(ours.sampler.order, num_replicas=world, rank=rank, shuffle=False)
            t, p = tokens(DataLoader(ours.dataset, ours.batch_size, sampler=wrapper, collate_fn=ours.collate_fn))
            strided, strided_prompts = strided + t, strided_prompts + p
        print(
            f"{world} ranks: Lightning's striding {strided:,} tokens ({strided / base:.2f}x), {strided_prompts:,} prompt runs"
            f" | BatchShard {dealt:,} tokens ({dealt / base:.2f}x), {dealt_prompts:,} prompt runs"
        )


if __name__ == "__main__":
    main()
