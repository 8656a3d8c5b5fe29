"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

A process killed mid-write leaves the previous file (or none), never a half-written one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Union

import torch

__all__ = ['atomic_write', 'write_text', 'write_json', 'save_torch']

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[IO[Any]], None], mode: str = 'wb') -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every written file private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode='w')


def write_json(path: PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def save_torch(path: PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))

