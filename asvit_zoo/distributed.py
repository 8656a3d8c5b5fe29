"""Process groups under torchrun.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is a single-process no-op.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch
import torch.distributed as dist

__all__ = ['DistEnv', 'dist_env', 'init_distributed', 'process_group']


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
    dev = torch.device(device)
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
