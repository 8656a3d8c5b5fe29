"""CPU throughput of As-ViT models with each attention path, against Swin-T: inference, or training steps.

The As-ViT paths: the default (SDPA, but plain matmul-softmax attention in windows of at most
``CPU_PLAIN_ATTN_MAX_TOKENS`` tokens), SDPA in every window, and plain attention in every window; with
``--compile BACKEND`` also the default path through torch.compile (a copy of the model, compiled in the warm-up).

All configurations are measured side by side: every round times one pass of each, in an order rotated
from round to round, after ``--warmup`` untimed rounds. A pass is a forward pass (torch.inference_mode,
eval mode) or, with ``--train``, a forward and backward pass of the cross-entropy loss in train mode.
Throughput is the batch size over the median time of a pass (random weights, inputs and labels).
Prints a markdown table with parameters, GMACs (``asvit_zoo.cost.count_macs``) and ratios.

    python benchmarks/bench_model.py --batch 8 --image-size 224 --iters 5 --warmup 1
    python benchmarks/bench_model.py --train --batch 128 --image-size 28 --in-chans 1 --num-classes 10 \
        --reference none --model asvit_tiny --model '4,8,3,1|4,2,3,1|4,2,3,1|4,1,6,2|64,28'
    python benchmarks/bench_model.py --batch 32 --image-size 64 --reference none --model asvit_seed --compile inductor
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg

import asvit_zoo  # noqa: F401  (registers the As-ViT models with timm)
from asvit_zoo.asvit import CPU_PLAIN_ATTN_MAX_TOKENS, AsViT
from asvit_zoo.cost import count_macs, param_count
from asvit_zoo.registry import code_cell
from asvit_zoo.validation import check_compile_backend

ASVIT_MODELS = ('asvit_large', 'asvit_large_paper', 'asvit_seed')
REFERENCE_MODEL = 'swin_tiny_patch4_window7_224'
DEFAULT, SDPA, PLAIN = f'default (plain in windows <= {CPU_PLAIN_ATTN_MAX_TOKENS} tokens)', 'SDPA', 'plain'
SETTINGS = {DEFAULT: dict(), SDPA: dict(cpu_plain_max_tokens=0), PLAIN: dict(enable=False)}  # set_fused_attn's


@dataclass
class Case:
    """One measured configuration: a model and, for As-ViT, the attention path it is switched to."""

    model_name: str
    model: nn.Module
    path: Optional[str]  # DEFAULT, SDPA or PLAIN; None: leave the model's own attention setting (not an As-ViT)
    backend: Optional[str] = None  # a torch.compile backend: the passes run through the compiled model
    times: List[float] = field(default_factory=list)
    macs: int = 0

    def __post_init__(self) -> None:
        self.run: nn.Module = self.model if self.backend is None else torch.compile(self.model, backend=self.backend)

    def prepare(self) -> None:
        if self.path is not None and isinstance(self.model, AsViT):
            self.model.set_fused_attn(**SETTINGS[self.path])

    @property
    def attention(self) -> str:
        if self.path is not None:
            return self.path
        uses_sdpa = any(getattr(m, 'fused_attn', False) for m in self.model.modules())
        return f'{SDPA if uses_sdpa else PLAIN} (timm default)'

    @property
    def label(self) -> str:
        return self.attention if self.backend is None else f'{self.attention}, torch.compile ({self.backend})'

    def images_per_s(self, batch: int) -> float:
        return batch / statistics.median(self.times)

    def range_images_per_s(self, batch: int) -> str:
        return f'{batch / max(self.times):.2f}-{batch / min(self.times):.2f}'


def create(name: str, in_chans: int, num_classes: int) -> nn.Module:
    """A registered model by name, or an As-ViT by its genotype (a name with '|')."""
    if '|' in name:
        return timm.create_model('asvit', genotype=name, in_chans=in_chans, num_classes=num_classes)
    return timm.create_model(name, in_chans=in_chans, num_classes=num_classes)


def build_cases(models: Sequence[str], reference: Optional[str], image_size: int, in_chans: int,
                num_classes: int, backend: Optional[str] = None) -> List[Case]:
    cases = []
    for name in models:
        model = create(name, in_chans, num_classes)
        if not isinstance(model, AsViT):
            raise SystemExit(f'--model {name}: not an As-ViT model (compare others with --reference)')
        cases += [Case(name, model, path) for path in SETTINGS]
        if backend is not None:  # its own copy: the other cases switch the attention path of theirs every pass
            cases.append(Case(name, copy.deepcopy(model), DEFAULT, backend))
    if reference is not None:  # a model with a fixed input size (ViT, Swin) is built for the benchmark's size
        cfg = get_pretrained_cfg(reference)
        size = dict(img_size=image_size) if cfg is not None and cfg.fixed_input_size else {}
        model = timm.create_model(reference, in_chans=in_chans, num_classes=num_classes, **size)
        cases.append(Case(reference, model, path=None))
    for case in cases:
        case.prepare()
        case.macs = count_macs(case.model, (in_chans, image_size, image_size))
    return cases


def one_pass(model: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
    """A forward pass, or with ``labels`` a forward and backward pass of the cross-entropy loss."""
    if labels is None:
        model(x)
        return
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), labels).backward()


def measure(cases: Sequence[Case], x: torch.Tensor, labels: Optional[torch.Tensor], iters: int,
            warmup: int) -> None:
    """Time one pass of every case per round; the first ``warmup`` rounds are not recorded."""
    train = labels is not None
    with torch.inference_mode(not train):
        for round_index in range(warmup + iters):
            shift = round_index % len(cases)
            for case in [*cases[shift:], *cases[:shift]]:
                case.prepare()
                case.run.train(train)
                start = time.perf_counter()
                one_pass(case.run, x, labels)
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    case.times.append(elapsed)
            label = 'warm-up' if round_index < warmup else 'timed'
            print(f'round {round_index + 1}/{warmup + iters} ({label}) done', file=sys.stderr, flush=True)


def markdown_table(cases: Sequence[Case], batch: int, reference_name: Optional[str]) -> str:
    reference = next((c.images_per_s(batch) for c in cases if c.model_name == reference_name), None)
    plain = {c.model_name: c.images_per_s(batch) for c in cases if c.path == PLAIN}
    versus = f' vs {reference_name} |' if reference else ''
    rows = [f'| model | attention | params (M) | GMACs | img/s (median) | img/s (min-max) |{versus} vs plain |',
            '| --- | --- | ---: | ---: | ---: | ---: |' + (' ---: |' if reference else '') + ' ---: |']
    for case in cases:
        speed = case.images_per_s(batch)
        vs_reference = f' {speed / reference:.2f}x |' if reference else ''
        vs_plain = f'{speed / plain[case.model_name]:.2f}x' if case.path in (DEFAULT, SDPA) else '-'
        name = code_cell(case.model_name) if '|' in case.model_name else case.model_name  # a genotype
        rows.append(f'| {name} | {case.label} | {param_count(case.model) / 1e6:.2f} | {case.macs / 1e9:.3g} | '
                    f'{speed:.2f} | {case.range_images_per_s(batch)} |{vs_reference} {vs_plain} |')
    return '\n'.join(rows)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', action='append', dest='models', metavar='NAME',
                        help=f'an As-ViT variant or genotype, repeatable (default: {", ".join(ASVIT_MODELS)})')
    parser.add_argument('--reference', default=REFERENCE_MODEL,
                        help=f'a timm model to compare with, or "none" (default {REFERENCE_MODEL})')
    parser.add_argument('--train', action='store_true', help='time forward and backward passes in train mode')
    parser.add_argument('--batch', type=int, default=8, help='images per pass (default 8)')
    parser.add_argument('--image-size', type=int, default=224, help='square input side (default 224)')
    parser.add_argument('--in-chans', type=int, default=3, help='input channels (default 3)')
    parser.add_argument('--num-classes', type=int, default=1000, help='classifier outputs (default 1000)')
    parser.add_argument('--iters', type=int, default=5, help='timed rounds (default 5)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds before them (default 1)')
    parser.add_argument('--seed', type=int, default=0, help='torch seed for weights and input (default 0)')
    parser.add_argument('--compile', metavar='BACKEND', dest='backend',
                        help="also time each As-ViT's default path through torch.compile with this backend, e.g. "
                             "'inductor' (compiled in the warm-up, which must be at least 1 round)")
    args = parser.parse_args(argv)
    if min(args.batch, args.image_size, args.in_chans, args.num_classes, args.iters) < 1 or args.warmup < 0:
        parser.error('--batch, --image-size, --in-chans, --num-classes and --iters must be >= 1, --warmup >= 0')
    if args.backend is not None:
        try:
            check_compile_backend(args.backend, '--compile')
        except ValueError as e:
            parser.error(str(e))
        if args.warmup < 1:
            parser.error('--compile needs --warmup >= 1: the first pass compiles')
    args.models = args.models or list(ASVIT_MODELS)
    args.reference = None if args.reference.lower() == 'none' else args.reference
    for option, name in [('--model', m) for m in args.models if '|' not in m] + [('--reference', args.reference)]:
        if name is not None and not timm.is_model(name):
            parser.error(f'{option}: unknown timm model {name!r} (an As-ViT variant, a genotype string for --model, '
                         f'or any timm model for --reference)')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    cases = build_cases(args.models, args.reference, args.image_size, args.in_chans, args.num_classes, args.backend)
    x = torch.randn(args.batch, args.in_chans, args.image_size, args.image_size)
    labels = torch.randint(0, args.num_classes, (args.batch,)) if args.train else None
    measure(cases, x, labels, args.iters, args.warmup)
    what = 'training (forward and backward)' if args.train else 'forward'
    print(f'CPU {what} throughput: batch {args.batch}, {args.in_chans}x{args.image_size}x{args.image_size}, '
          f'{args.iters} timed rounds after {args.warmup} warm-up, torch {torch.__version__} '
          f'({torch.get_num_threads()} threads), timm {timm.__version__}\n')
    print(markdown_table(cases, args.batch, args.reference))


if __name__ == '__main__':
    main()
