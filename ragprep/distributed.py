"""Processes started by `torchrun`: who this process is, and the few collective steps ragsnv needs.

Without torchrun (no WORLD_SIZE in the environment) everything is one process and nothing here talks to
anyone. Under torchrun, `init()` joins the process group (NCCL on CUDA, gloo on the CPU) once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, value: object) -> list:
        """Every rank's `value`, in rank order (any picklable object)."""
        if not self.distributed:
            return [value]
        out: list = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the sum over ranks."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor


def init(device: str = "auto") -> World:
    """This process's place in a torchrun job (joining its process group), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, local_rank)


def finish() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
