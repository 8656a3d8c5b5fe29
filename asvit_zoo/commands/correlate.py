"""``asvit correlate``: Kendall tau between trained accuracy and the training-free measures (see
:mod:`asvit_zoo.correlation`)."""
from __future__ import annotations

import argparse

from ..correlation import CorrelationConfig, correlate
from .options import device_help


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    d = CorrelationConfig()
    parser = subparsers.add_parser(
        'correlate', help='rank correlation of training-free measures with trained accuracy over sampled topologies',
        description='Sample N topologies from the search space, measure each at initialisation and train it '
                    'briefly on Fashion-MNIST, then report Kendall tau between test accuracy and each measure '
                    '(with parameters and GMACs as baselines). Writes records.json (after every topology; an '
                    'interrupted study continues), correlation.json, correlation.md and one scatter PNG per score.')
    parser.add_argument('--out', required=True, help='study folder (an interrupted study in it continues)')
    parser.add_argument('-n', '--num-topologies', type=int, default=d.n,
                        help=f'topologies, at least 3 (default: {d.n})')
    parser.add_argument('--embed-dim', type=int, default=d.embed_dim, help=f'stage-1 width (default: {d.embed_dim})')
    parser.add_argument('--measure-image-size', type=int, default=d.measure_image_size,
                        help=f'resolution of the training-free measures (default: {d.measure_image_size})')
    parser.add_argument('--repeat', type=int, default=d.repeat,
                        help=f'initialisations averaged per measure (default: {d.repeat})')
    parser.add_argument('--epochs', type=int, default=d.epochs, help=f'training epochs (default: {d.epochs})')
    parser.add_argument('--batch-size', type=int, default=d.batch_size,
                        help=f'training images per step (default: {d.batch_size})')
    parser.add_argument('--lr', type=float, default=d.lr, help=f'AdamW learning rate (default: {d.lr:g})')
    parser.add_argument('--train-subset', type=int, default=d.train_subset,
                        help=f'first N training images, at least --batch-size (default: {d.train_subset})')
    parser.add_argument('--eval-subset', type=int, default=d.eval_subset,
                        help=f'first N test images (default: {d.eval_subset})')
    parser.add_argument('--seed', type=int, default=d.seed,
                        help=f'seed of the sampled topologies, their inits and training (default: {d.seed})')
    parser.add_argument('--device', default=d.device, help=device_help(d.device))
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = CorrelationConfig(n=args.num_topologies, embed_dim=args.embed_dim,
                               measure_image_size=args.measure_image_size, repeat=args.repeat, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, train_subset=args.train_subset,
                               eval_subset=args.eval_subset, seed=args.seed, device=args.device)
    summary = correlate(config, args.out, progress=not args.no_progress)
    print(summary['table'], end='')
    return 0
