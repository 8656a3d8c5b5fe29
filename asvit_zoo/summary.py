"""A table of the registered variants: built, run once, counted."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Sequence

import timm
import torch
from tqdm import tqdm

from .cost import count_macs, param_count
from .registry import load_registry

__all__ = ['VariantSummary', 'summarize_variants', 'format_table']


@dataclass(frozen=True)
class VariantSummary:
    name: str
    genotype: str
    params: int
    gmacs: float
    forward_seconds: float


@torch.no_grad()
def summarize_variants(image_size: int = 224) -> List[VariantSummary]:
    """Build each registered variant, check one forward pass at ``image_size``, count params and GMACs."""
    rows = []
    for card in tqdm(load_registry(), desc='variants', unit='model'):
        model = timm.create_model(card.name).eval()
        x = torch.randn(1, 3, image_size, image_size)
        start = time.perf_counter()
        logits = model(x)
        seconds = time.perf_counter() - start
        if logits.shape != (1, model.num_classes) or not torch.isfinite(logits).all():
            raise RuntimeError(f'{card.name}: forward pass gave {tuple(logits.shape)} with non-finite values')
        rows.append(VariantSummary(card.name, str(card.genotype), param_count(model),
                                   count_macs(model, (3, image_size, image_size)) / 1e9, seconds))
    return rows


def format_table(rows: Sequence[VariantSummary]) -> str:
    header = ('variant', 'genotype', 'params (M)', 'GMACs', 'forward (s)')
    body = [(r.name, r.genotype, f'{r.params / 1e6:.2f}', f'{r.gmacs:.2f}', f'{r.forward_seconds:.2f}') for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return '\n'.join([line(header), '-+-'.join('-' * w for w in widths), *map(line, body)])
