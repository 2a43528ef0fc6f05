"""The processes of a training run: one, or N under torchrun with DistributedDataParallel.

Every rank draws the same global batch and the same shared negatives from the same seeded
generators and keeps its 1/N slice of the users, so the shards are disjoint and together are
exactly the single-process batch. Rank 0 alone evaluates, checkpoints and writes; what it decides
(stop early, out of time) reaches the others through :meth:`Ranks.agree`.

The same code runs on one machine (``remi train --nproc N``) and across machines (``torchrun
--nnodes M --rdzv-backend c10d ...``, docs/operations.md "Past one machine"): torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) is all a rank reads. Global rank 0 (on whichever
node the rendezvous ranks first) writes the run folder; a rank's GPU is its LOCAL_RANK on its node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from remi.errors import RemiError


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world`` training processes, and its rank on its own node (``local``)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @staticmethod
    def requested_world() -> int:
        """How many processes torchrun started (WORLD_SIZE), before joining any group."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    @classmethod
    def join(cls, device: str) -> Ranks:
        """Joins the process group torchrun describes (:meth:`backend`); one rank without it."""
        import torch.distributed as dist

        world = cls.requested_world()
        if world <= 1:
            return cls()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = cls.backend(device, torch.cuda.is_available())
            if "nccl" in backend:
                torch.cuda.set_device(local)  # before any nccl call, or every rank's first call lands on GPU 0
            dist.init_process_group(backend=backend)
        return cls(dist.get_rank(), dist.get_world_size(), local)

    @staticmethod
    def backend(device: str, cuda_available: bool) -> str:
        """gloo on CPU; on GPUs nccl for CUDA tensors (DDP's gradients) and gloo for CPU ones.

        The rank agreements (:meth:`agree`, :meth:`check_same`) send small CPU tensors and
        objects, which nccl cannot carry; a process group with one backend per device type takes
        each to the backend that can.
        """
        return "cpu:gloo,cuda:nccl" if device.startswith("cuda") and cuda_available else "gloo"

    @property
    def lead(self) -> bool:
        """Rank 0: the one that evaluates, checkpoints, logs and writes the run folder."""
        return self.rank == 0

    def device(self, configured: str) -> torch.device:
        """One GPU per rank under torchrun, numbered on its node (LOCAL_RANK); otherwise the configured device.

        The global rank would be wrong past one node: rank 5 of 2 nodes x 4 GPUs is cuda:1 on node 1.
        """
        if self.world == 1 or not configured.startswith("cuda"):
            return torch.device(configured)
        return torch.device(f"cuda:{self.local}")

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

    def check_same(self, what: str, value: str) -> None:
        """Raises RemiError on every rank unless all ranks hold the same ``value`` (e.g. a data fingerprint).

        Every rank must train on the same prepared data: the shards are slices of one seeded global
        batch, so a node whose copy of the data differs (a stale export on a per-node disk) would
        silently train on other users and items. All ranks see the gathered values and raise
        together, so none is left waiting in a collective.
        """
        if self.world == 1:
            return
        import torch.distributed as dist

        values: list[str | None] = [None] * self.world
        dist.all_gather_object(values, value)
        differ = [rank for rank, other in enumerate(values) if other != values[0]]
        if differ:
            raise RemiError(
                f"ranks disagree on {what}: rank 0 has {values[0]}, rank(s) {differ} have "
                f"{sorted({str(values[rank]) for rank in differ})}; every node must read the same data"
            )

    def finish(self) -> None:
        """Waits for every rank, then leaves the process group."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
