"""CPU forward throughput of As-ViT Large and seed, with SDPA and with plain attention, against Swin-T.

All configurations are measured side by side: every round times one forward pass of each, in an
order rotated from round to round, after ``--warmup`` untimed rounds. Throughput is the batch size
over the median time of a forward pass (torch.inference_mode, eval mode, random weights and input).
Prints a markdown table with parameters, GMACs (``asvit_zoo.cost.count_macs``) and ratios.

    python benchmarks/bench_model.py --batch 8 --image-size 224 --iters 5 --warmup 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import timm
import torch
import torch.nn as nn

import asvit_zoo  # noqa: F401  (registers the As-ViT models with timm)
from asvit_zoo.asvit import AsViT
from asvit_zoo.cost import count_macs, param_count

ASVIT_MODELS = ('asvit_large', 'asvit_large_paper', 'asvit_seed')
REFERENCE_MODEL = 'swin_tiny_patch4_window7_224'
SDPA, PLAIN = 'SDPA', 'plain'


@dataclass
class Case:
    """One measured configuration: a model and, for As-ViT, the attention path it is switched to."""

    model_name: str
    model: nn.Module
    fused: Optional[bool]  # None: leave the model's own attention setting (not an As-ViT)
    times: List[float] = field(default_factory=list)
    macs: int = 0

    def prepare(self) -> None:
        if self.fused is not None and isinstance(self.model, AsViT):
            self.model.set_fused_attn(self.fused)

    @property
    def attention(self) -> str:
        if self.fused is not None:
            return SDPA if self.fused else PLAIN
        uses_sdpa = any(getattr(m, 'fused_attn', False) for m in self.model.modules())
        return f'{SDPA if uses_sdpa else PLAIN} (timm default)'

    def images_per_s(self, batch: int) -> float:
        return batch / statistics.median(self.times)

    def range_images_per_s(self, batch: int) -> str:
        return f'{batch / max(self.times):.2f}-{batch / min(self.times):.2f}'


def build_cases(image_size: int) -> List[Case]:
    cases = []
    for name in ASVIT_MODELS:
        model = timm.create_model(name).eval()
        cases += [Case(name, model, fused=True), Case(name, model, fused=False)]
    cases.append(Case(REFERENCE_MODEL, timm.create_model(REFERENCE_MODEL, img_size=image_size).eval(), fused=None))
    for case in cases:
        case.prepare()
        case.macs = count_macs(case.model, (3, image_size, image_size))
    return cases


def measure(cases: Sequence[Case], x: torch.Tensor, iters: int, warmup: int) -> None:
    """Time one forward pass of every case per round; the first ``warmup`` rounds are not recorded."""
    with torch.inference_mode():
        for round_index in range(warmup + iters):
            shift = round_index % len(cases)
            for case in [*cases[shift:], *cases[:shift]]:
                case.prepare()
                start = time.perf_counter()
                case.model(x)
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    case.times.append(elapsed)
            label = 'warm-up' if round_index < warmup else 'timed'
            print(f'round {round_index + 1}/{warmup + iters} ({label}) done', file=sys.stderr, flush=True)


def markdown_table(cases: Sequence[Case], batch: int) -> str:
    reference = next(c for c in cases if c.model_name == REFERENCE_MODEL).images_per_s(batch)
    plain = {c.model_name: c.images_per_s(batch) for c in cases if c.fused is False}
    rows = [
        '| model | attention | params (M) | GMACs | img/s (median) | img/s (min-max) | vs swin_tiny | SDPA / plain |',
        '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for case in cases:
        speed = case.images_per_s(batch)
        sdpa_vs_plain = f'{speed / plain[case.model_name]:.2f}x' if case.fused else '-'
        rows.append(f'| {case.model_name} | {case.attention} | {param_count(case.model) / 1e6:.2f} | '
                    f'{case.macs / 1e9:.2f} | {speed:.2f} | {case.range_images_per_s(batch)} | '
                    f'{speed / reference:.2f}x | {sdpa_vs_plain} |')
    return '\n'.join(rows)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=8, help='images per forward pass (default 8)')
    parser.add_argument('--image-size', type=int, default=224, help='square input side (default 224)')
    parser.add_argument('--iters', type=int, default=5, help='timed rounds (default 5)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds before them (default 1)')
    parser.add_argument('--seed', type=int, default=0, help='torch seed for weights and input (default 0)')
    args = parser.parse_args(argv)
    if args.batch < 1 or args.image_size < 1 or args.iters < 1 or args.warmup < 0:
        parser.error('--batch, --image-size and --iters must be >= 1, --warmup >= 0')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    cases = build_cases(args.image_size)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    measure(cases, x, args.iters, args.warmup)
    print(f'CPU forward throughput: batch {args.batch}, {args.image_size}x{args.image_size}, '
          f'{args.iters} timed rounds after {args.warmup} warm-up, torch {torch.__version__} '
          f'({torch.get_num_threads()} threads), timm {timm.__version__}\n')
    print(markdown_table(cases, args.batch))


if __name__ == '__main__':
    main()
