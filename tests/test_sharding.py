"""Data parallelism: each rank runs whole batches of the one-process order (BatchShard), so shared-prompt batches
and length-grouped batches survive sharding; training ranks run equal batch counts, evaluation sees each row once."""

from __future__ import annotations

import types

import pytest
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from test_shared_prompts import datamodule_of, rows_with_shared_prompts
from torch.utils.data import DataLoader, DistributedSampler

from autocritic.data.datamodule import EpochShuffle, prompt_groups
from autocritic.data.sharding import BatchShard


def rank_batches(order, batch_size: int, world: int, even: bool) -> list[list[list[int]]]:
    """Every rank's batches as its DataLoader cuts them."""
    out = []
    for rank in range(world):
        shard = BatchShard(order, batch_size, world, rank, even)
        batches = [batch.tolist() for batch in DataLoader(range(len(order)), batch_size=batch_size, sampler=shard)]
        assert len(shard) == sum(map(len, batches))
        out.append(batches)
    return out


@pytest.mark.parametrize("rows,batch_size,world", [(23, 4, 2), (23, 4, 3), (24, 4, 3), (5, 4, 4), (40, 8, 8), (3, 2, 1)])
def test_ranks_run_the_one_process_batches_whole(rows, batch_size, world):
    order = list(reversed(range(rows)))
    one_process = [order[k : k + batch_size] for k in range(0, rows, batch_size)]
    training = rank_batches(order, batch_size, world, even=True)
    assert len({len(batches) for batches in training}) == 1  # equal step counts, or DDP's all-reduce hangs
    dealt = [b for rank in training for b in rank]
    assert all(b in one_process for b in dealt)  # every batch whole
    assert set(map(tuple, one_process)) <= set(map(tuple, dealt))  # every batch runs
    assert len(dealt) - len(one_process) < world  # at most one repeated batch per rank

    evaluation = rank_batches(order, batch_size, world, even=False)
    assert all(evaluation)  # no rank without a batch: it would skip the epoch end where metrics are gathered
    rows_seen = sorted(i for rank in evaluation for b in rank for i in b)
    if len(one_process) >= world:
        assert rows_seen == list(range(rows))  # each row exactly once
    else:
        assert set(rows_seen) == set(range(rows))


def test_epoch_reaches_the_wrapped_order_and_ranks_agree():
    order = EpochShuffle(30, seed=5)
    shards = [BatchShard(order, 4, 2, rank, even=True) for rank in range(2)]
    seen = {}
    for epoch in (0, 1):
        for shard in shards:
            shard.set_epoch(epoch)
        seen[epoch] = [list(shard) for shard in shards]
        assert not set(seen[epoch][0]) & set(seen[epoch][1])  # the ranks draw the same permutation
    assert seen[0] != seen[1]


def test_shared_prompt_batches_survive_data_parallelism(tiny_backbone, tmp_path):
    rows = rows_with_shared_prompts("pointwise")
    datamodule = datamodule_of(rows, "pointwise", tiny_backbone, tmp_path, share=True)
    datamodule.settings.batch_size = 4
    assert len(datamodule.encoded["train"]) == 16 and len(prompt_groups(datamodule.encoded["train"])) == 7

    def prompt_runs(world: int, shard) -> int:
        runs = 0
        for rank in range(world):
            datamodule.trainer = types.SimpleNamespace(world_size=world, global_rank=rank)
            loader = datamodule.train_dataloader()
            if shard is not None:  # what Lightning does to a sampler that is not a DistributedSampler
                loader = DataLoader(loader.dataset, 4, sampler=shard(loader.sampler, rank), collate_fn=loader.collate_fn)
            else:
                assert isinstance(loader.sampler, DistributedSampler)  # so Lightning does not wrap it again
            runs += sum(batch["prefix_ids"].shape[0] for batch in loader)
        return runs

    datamodule.trainer = None
    one_process = sum(batch["prefix_ids"].shape[0] for batch in datamodule.train_dataloader())
    assert one_process < len(rows)
    strided = prompt_runs(2, lambda sampler, rank: DistributedSamplerWrapper(sampler.order, num_replicas=2, rank=rank, shuffle=False))
    assert strided > one_process  # striding rows over ranks splits a prompt's answers: the prompt runs again
    assert prompt_runs(2, None) == one_process  # whole batches (16 rows: 4 batches, none repeated)
