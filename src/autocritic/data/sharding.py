"""One rank's share of a loader's order under data parallelism (DDP, FSDP, DeepSpeed), dealt a whole batch at a time.

Lightning shards a custom sampler by striding its order across ranks (`DistributedSamplerWrapper`: row i goes to
rank i mod world). That splits what our orders keep together: the answers to one prompt (shared-prompt batches run
each prompt once) and the length-sorted runs of `group_by_length`, so every prompt runs again for each of its answers
(`bench/data_parallel_tokens.py` counts the tokens). Here rank r gets batches r, r + world, r + 2·world, ... of the
single-process order, each batch intact, so the ranks together run the batches one process would.

Training (`even=True`): every rank runs the same number of batches (a rank short of one repeats a batch from the
start of the epoch, as `DistributedSampler` repeats rows), or DDP's gradient all-reduce would wait forever.
Evaluation (`even=False`): each row exactly once across the ranks, so a metric gathered over ranks is the one
process's metric (padding would count some rows twice). The ranks may then run one batch more or less than
each other, which evaluation allows (no per-step collective), but not none: with fewer batches than ranks a
rank would skip the epoch's end, where the metrics are gathered, so such a split is dealt as in training.

Subclassing `DistributedSampler` tells Lightning the loader is already sharded, so it does not wrap it again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import DistributedSampler, Sampler


class BatchShard(DistributedSampler):
    def __init__(
        self, order: Sampler[int] | Sequence[int], batch_size: int, num_replicas: int, rank: int, even: bool
    ):
        super().__init__(range(len(order)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.order, self.batch_size, self.even = order, batch_size, even

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if callable(getattr(self.order, "set_epoch", None)):
            self.order.set_epoch(epoch)

    def _batch_indices(self) -> list[int]:
        """Which of the single-process batches this rank runs: repeats (taken from the start) come last."""
        batches = -(-len(self.order) // self.batch_size)
        mine = list(range(self.rank, batches, self.num_replicas))
        if (self.even or batches < self.num_replicas) and batches:
            per_rank = -(-batches // self.num_replicas)
            mine += [(self.rank + k * self.num_replicas) % batches for k in range(len(mine), per_rank)]
        return mine

    def __iter__(self) -> Iterator[int]:
        rows = list(self.order)
        size = self.batch_size
        return iter([i for b in self._batch_indices() for i in rows[b * size : (b + 1) * size]])

    def __len__(self) -> int:
        rows, size = len(self.order), self.batch_size
        return sum(min(size, rows - b * size) for b in self._batch_indices())
