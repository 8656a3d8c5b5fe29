"""Tables of the registered variants: counted on the meta device (``asvit list``), or built and run once
(``asvit summary``, the main job until the pipeline exists)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import timm
import torch
from tqdm import tqdm

from .cost import count_macs, param_count
from .asvit import registered_cards
from .registry import VariantCard, code_cell
from .validation import is_count

__all__ = ['VariantRow', 'list_variants', 'summarize_variants', 'format_table']


@dataclass(frozen=True)
class VariantRow:
    name: str
    genotype: str
    params: int
    gmacs: float  # at the table's image size
    weights: str  # 'no', or 'yes (tag)'
    hub_id: str
    forward_seconds: Optional[float] = None


def _row(card: VariantCard, model: torch.nn.Module, image_size: int, seconds: Optional[float] = None) -> VariantRow:
    tags = [t for t in card.tags() if any(card.pretrained_cfg(t).get(k) for k in ('file', 'hf_hub_id', 'url'))]
    hub_ids = sorted({card.pretrained_cfg(t).get('hf_hub_id') or '' for t in card.tags()} - {''})
    return VariantRow(card.name, str(card.genotype), param_count(model),
                      count_macs(model, (model.in_chans, image_size, image_size)) / 1e9,
                      f"yes ({', '.join(t or 'default' for t in tags)})" if tags else 'no',
                      ', '.join(hub_ids) or '-', seconds)


def _check_image_size(image_size: int) -> None:
    if not is_count(image_size):
        raise ValueError(f'image_size must be a positive integer (pixels), got {image_size!r}')


def list_variants(image_size: int = 224) -> List[VariantRow]:
    """Every registered variant with its counts, built on the meta device (no memory, no weights)."""
    _check_image_size(image_size)
    rows = []
    for card in registered_cards():
        with torch.device('meta'):
            model = timm.create_model(card.name)
        rows.append(_row(card, model, image_size))
    return rows


@torch.no_grad()
def summarize_variants(image_size: int = 224) -> List[VariantRow]:
    """Build each registered variant for real, check one forward pass at ``image_size``, count it."""
    _check_image_size(image_size)
    rows = []
    for card in tqdm(registered_cards(), desc='variants', unit='model'):
        model = timm.create_model(card.name).eval()
        x = torch.randn(1, model.in_chans, image_size, image_size)  # a variant's default may be grayscale
        start = time.perf_counter()
        logits = model(x)
        seconds = time.perf_counter() - start
        outputs = model.num_classes or model.num_features  # no classifier: the pooled features
        if logits.shape != (1, outputs):
            raise RuntimeError(f'{card.name}: forward pass gave logits of shape {tuple(logits.shape)}, expected '
                               f'(1, {outputs})')
        if not torch.isfinite(logits).all():
            raise RuntimeError(f'{card.name}: forward pass gave non-finite logits')
        rows.append(_row(card, model, image_size, seconds))
    return rows


def _seconds(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.2f}'


def format_table(rows: Sequence[VariantRow], image_size: int = 224) -> str:
    """A markdown table of the rows (a forward column where any row was timed; '-' in the others)."""
    timed = any(r.forward_seconds is not None for r in rows)
    header = ['variant', 'genotype', 'params (M)', f'GMACs @{image_size}', 'weights', 'hub id']
    header += ['forward (s)'] if timed else []
    body = [[r.name, code_cell(r.genotype), f'{r.params / 1e6:.2f}', f'{r.gmacs:.2f}', r.weights, r.hub_id]
            + ([_seconds(r.forward_seconds)] if timed else []) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]

    def line(cells: Sequence[str]) -> str:
        return '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'

    return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|', *map(line, body)])
