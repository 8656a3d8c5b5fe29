"""``asvit train``: train an As-ViT with progressive re-tokenization (see :mod:`asvit_zoo.train`).

Every field of :class:`~asvit_zoo.train.TrainConfig` is an option (``--batch-size 64``, ``--model-ema``,
``--retokenization 0.5:8:2,0.5:4:1``); options override the values of ``--config`` (a recipe file).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict

from ..train import RUN_CONFIG, TrainConfig, load_config, train
from ..validation import field_type


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'train', help='train an As-ViT (Fashion-MNIST, ImageFolder or synthetic data) with progressive re-tokenization',
        description='Train an As-ViT with timm blocks (AdamW, cosine schedule, Mixup/CutMix, EMA, AMP), with '
                    'progressive re-tokenization. Writes config.json and schedule.png to --output, then '
                    'metrics.jsonl and last.pth.tar every epoch. Under torchrun it trains with '
                    'DistributedDataParallel.',
        argument_default=argparse.SUPPRESS)
    parser.add_argument('--config', help='recipe (JSON or YAML file of training settings), '
                                         'e.g. recipes/fmnist_tiny.json')
    parser.add_argument('--output', required=True, help='run folder')
    parser.add_argument('--resume', action='store_true',
                        help="continue the run in --output from its last.pth.tar, with its config.json's settings "
                             'unless --config is given')
    parser.add_argument('--stop-after', type=int, metavar='N',
                        help='stop once N epochs are done (continue later with --resume)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar or per-epoch line')
    settings = parser.add_argument_group('training settings (override the recipe; defaults in brackets)')
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        option = '--' + f.name.replace('_', '-')
        kind, _ = field_type(hints[f.name])
        allowed = f' ({f.metadata["range"]})' if f.metadata['range'] is not None else ''
        help_text = f'{f.metadata["help"]}{allowed} [{f.default}]'
        if kind is bool:
            settings.add_argument(option, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            settings.add_argument(option, dest=f.name, type=kind, metavar=kind.__name__.upper(), help=help_text)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides: Dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields}
    recipe = getattr(args, 'config', None)
    saved = Path(args.output) / RUN_CONFIG
    if recipe is None and getattr(args, 'resume', False) and saved.is_file():
        recipe = saved  # the run's own settings (options given still override them)
    cfg = load_config(recipe, **overrides)
    progress = not getattr(args, 'no_progress', False)
    result = train(cfg, args.output, resume=getattr(args, 'resume', False), progress=progress,
                   stop_after=getattr(args, 'stop_after', None))
    if result.metrics and result.is_main:
        final = result.final
        print(f'epoch {final["epoch"] + 1}: eval top-1 {final["eval_top1"]:.2f}%  top-5 {final["eval_top5"]:.2f}%  '
              f'train {final["train_time"]:.1f}s  training {final["train_macs"] / 1e9:.4g} GMACs '
              f'({final["train_macs"] / final["train_macs_full"]:.1%} of full tokens) -> {args.output}')
    return 0
