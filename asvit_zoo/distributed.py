"""Process groups under torchrun, shared by the trainer, the measures, the seed search and the scaling.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is a single-process no-op.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, List, Tuple

import torch
import torch.distributed as dist

from .devices import resolve_device

__all__ = ['DistEnv', 'dist_env', 'init_distributed', 'process_group', 'group_size', 'group_rank', 'my_share',
           'gather_objects', 'barrier']


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run: rank, number of processes, rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """This process's place as torchrun's environment variables give it (rank 0 of 1 without torchrun)."""
    return DistEnv(int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1')),
                   int(os.environ.get('LOCAL_RANK', '0')))


def init_distributed(device: str) -> Tuple[DistEnv, torch.device]:
    """Process group from torchrun's environment (NCCL on CUDA, gloo on CPU) and this process's device
    (``'auto'``: CUDA when available; a plain ``'cuda'`` is ``cuda:LOCAL_RANK``, made the current device)."""
    env = dist_env()
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = resolve_device(device)  # a clear error for a device this machine lacks
    if dev.type == 'cuda':
        if dev.index is None:  # plain 'cuda': this process's GPU, cuda:LOCAL_RANK under torchrun
            dev = torch.device('cuda', env.local_rank)
        torch.cuda.set_device(dev)
    if env.distributed and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if dev.type == 'cuda' else 'gloo')
    return env, dev


@contextmanager
def process_group(device: str) -> Iterator[Tuple[DistEnv, torch.device]]:
    """:func:`init_distributed` for the duration of a job: a process group it creates is destroyed on exit."""
    created = not dist.is_initialized()
    try:
        yield init_distributed(device)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def group_size() -> int:
    """Processes in the default process group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_rank() -> int:
    """This process's rank in the default process group; 0 when there is none."""
    return dist.get_rank() if group_size() > 1 else 0


def my_share(n: int) -> range:
    """The indices of ``n`` shared items that this process takes: ``rank, rank + size, ...`` in the default process
    group; all of them when there is none."""
    return range(group_rank(), n, group_size())


def gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` without a process group.
    A collective: every process of the group must call it."""
    if group_size() == 1:
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every process of the default process group; nothing to wait for without one."""
    if group_size() > 1:
        dist.barrier()
