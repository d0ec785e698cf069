"""Data-parallel training with torch DDP under torchrun: each rank trains on its slice of every global batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class BatchShard:
    """This rank's rows of a global batch: rank r of W holds rows [r*n, (r+1)*n) of W*n."""

    rank: int
    world: int
    owns_group: bool = False  # joined by `join`, so `leave` ends it

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        n = len(batch) // self.world
        return batch[self.rank * n:(self.rank + 1) * n]

    def spread(self, local: torch.Tensor) -> torch.Tensor:
        """A global batch with `local` in this rank's rows and zeros elsewhere (gradients flow to `local`)."""
        before = local.new_zeros((self.rank * len(local), *local.shape[1:]))
        after = local.new_zeros(((self.world - self.rank - 1) * len(local), *local.shape[1:]))
        return torch.cat([before, local, after])


class Replicated(DistributedDataParallel):
    """DDP that still reads like the module it wraps: its attributes, and its state_dict without 'module.'."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)


def join(cfg) -> BatchShard | None:
    """Join torchrun's process group (NCCL on CUDA, else gloo); None when running as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return None
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size ({cfg.batch_size}) must divide evenly over {world} processes")
    if cfg.mode_seeking and cfg.batch_size // world % 2:
        raise ValueError(f"train.batch_size ({cfg.batch_size}) must give each of {world} processes an even "
                         "number of samples: train.mode_seeking pairs samples 2i and 2i+1")
    cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's GPU
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if cuda else "gloo")
    return BatchShard(dist.get_rank(), dist.get_world_size(), owns_group)


def global_sum(local: torch.Tensor, shard: BatchShard | None) -> torch.Tensor:
    """The sum of `local` over all ranks; its gradient flows to this rank's `local` only (the others'
    parts are constants here, and their gradients are their ranks' own)."""
    if shard is None:
        return local
    total = local.detach().clone()
    dist.all_reduce(total)
    return total + (local - local.detach())


def leave(shard: BatchShard | None) -> None:
    """End the process group `join` started, once every rank has finished its steps."""
    if shard is not None and shard.owns_group:
        dist.barrier()
        dist.destroy_process_group()


def replicate(state, shard: BatchShard | None) -> None:
    """Wrap G and D in DDP so that backward averages gradients over ranks; a no-op without a shard.

    Every rank starts from the same seed, so weights and the noise generator agree without a broadcast.
    Buffers (spectral norm's power-iteration vectors) are computed identically on every rank from
    identical weights; broadcasting them each forward would only cost time.
    """
    if shard is None:
        return
    device = next(state.G.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    state.G = Replicated(state.G, device_ids=ids, broadcast_buffers=False)
    state.D = Replicated(state.D, device_ids=ids, broadcast_buffers=False)
    state.shard = shard


def is_main(shard: BatchShard | None) -> bool:
    """Only rank 0 writes checkpoints, logs and the exported model."""
    return shard is None or shard.rank == 0
