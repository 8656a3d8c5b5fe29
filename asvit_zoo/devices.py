"""The devices the measures, search and scaling run on."""
from __future__ import annotations

from typing import Union

import torch

__all__ = ['resolve_device']


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``name`` as a usable torch device (cpu, cuda, cuda:N), or a ``ValueError`` saying why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f'device {name!r} is not a torch device; use cpu, cuda or cuda:N') from None
    if device.type == 'cpu':
        return device
    if device.type != 'cuda':
        raise ValueError(f'device {name!r}: measures run on cpu or cuda, not {device.type}')
    if not torch.cuda.is_available():
        raise ValueError(f'device {name!r}: no CUDA GPU is available here (torch.cuda.is_available() is False); '
                         f'use --device cpu')
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f'device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible')
    return device
