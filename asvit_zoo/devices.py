"""The devices asvit-zoo runs on: checked names, and usable devices."""
from __future__ import annotations

from typing import Union

import torch

__all__ = ['parse_device', 'resolve_device']


def parse_device(name: Union[str, torch.device]) -> torch.device:
    """``name`` as a torch device of a type we run on (cpu, cuda, cuda:N), present here or not; else a
    ``ValueError`` saying why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f'device {name!r} is not a torch device; use cpu, cuda or cuda:N') from None
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f'device {name!r}: asvit-zoo runs on cpu or cuda, not {device.type}')
    return device


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``name`` as a usable torch device (cpu, cuda, cuda:N), or a ``ValueError`` saying why not."""
    device = parse_device(name)
    if device.type == 'cpu':
        return device
    if not torch.cuda.is_available():
        raise ValueError(f'device {name!r}: no CUDA GPU is available here (torch.cuda.is_available() is False); '
                         f"use the device 'cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f'device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible')
    return device
