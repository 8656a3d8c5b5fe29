"""Training modes of a module tree, kept across a block of work that changes them."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Yield ``model``; after the block, every submodule is back in the train/eval mode it had before
    (``model.train(mode)`` alone would not restore a tree whose modules were in mixed modes)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
