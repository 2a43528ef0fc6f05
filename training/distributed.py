"""The processes of a training run: one, or N under torchrun with DistributedDataParallel.

Every rank draws the same global batch and the same shared negatives from the same seeded
generators and keeps its 1/N slice of the users, so the shards are disjoint and together are
exactly the single-process batch. Rank 0 alone evaluates, checkpoints and writes; what it decides
(stop early, out of time) reaches the others through :meth:`Ranks.agree`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world`` training processes."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def requested_world() -> int:
        """How many processes torchrun started (WORLD_SIZE), before joining any group."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    @classmethod
    def join(cls, device: str) -> Ranks:
        """Joins the process group torchrun describes (gloo on CPU, nccl on GPU); one rank without it."""
        import torch.distributed as dist

        world = cls.requested_world()
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def lead(self) -> bool:
        """Rank 0: the one that evaluates, checkpoints, logs and writes the run folder."""
        return self.rank == 0

    def device(self, configured: str) -> torch.device:
        """One GPU per rank under torchrun; otherwise the configured device."""
        if self.world == 1 or not configured.startswith("cuda"):
            return torch.device(configured)
        return torch.device(f"cuda:{self.rank}")

    def shard(self, batch_size: int) -> slice:
        """This rank's slice of the global batch."""
        return slice(self.rank * batch_size // self.world, (self.rank + 1) * batch_size // self.world)

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel around the module when there is more than one rank."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (others pass anything), so none waits forever in a collective."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)])
        dist.broadcast(value, src=0)
        return bool(value.item())

    def finish(self) -> None:
        """Waits for every rank, then leaves the process group."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
