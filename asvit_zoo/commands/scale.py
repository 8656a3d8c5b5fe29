"""``asvit scale``: grow a seed topology to parameter budgets and emit registry cards."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..distributed import dist_env
from ..scaling import (ScalingConfig, check_variant_names, plot_trajectory, run_scaling, select_variants,
                       write_variant_cards)
from ..fileio import check_folder, write_json
from .options import device_help, parse_count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'scale', help='greedy depth/width scaling of a seed to parameter budgets (spec section 5)',
        description='Grow a seed topology one block at a time, ranking candidates by training-free measures. '
                    'Writes trajectory.json (after every step), trajectory.png and variants.json to --out, and '
                    'with --registry and --names one registry card per budget. Under torchrun '
                    '(torchrun --nproc_per_node N -m asvit_zoo.cli scale ...) the processes share the candidates '
                    'of each step.')
    parser.add_argument('--seed', required=True,
                        help="seed genotype K,S,E|...|H, e.g. '8,2,3|4,1,2|4,1,4|4,1,6|32' (the random seed is "
                             "--random-seed)")
    parser.add_argument('--budgets', default='29.0M,52.6M,88.1M',
                        help='comma-separated parameter budgets of the real-size variants, each at least the seed\'s '
                             'first network (width 32, depths 1,1,1,1; 1.2M to 2.4M parameters) (default: '
                             '29.0M,52.6M,88.1M)')
    parser.add_argument('--names', default=None, help='comma-separated variant names, one per budget')
    parser.add_argument('--upper-limit', default='110M', help='largest real-size network considered (default: 110M)')
    parser.add_argument('--image-size', type=int, default=224, help='measuring resolution (default and paper: 224)')
    parser.add_argument('--repeat', type=int, default=1, help='initialisations averaged per candidate (default: 1)')
    parser.add_argument('--batch-size', type=int, default=16, help='NTK batch size (default: 16)')
    parser.add_argument('--data', default='fashion-mnist',
                        help="NTK batch: 'fashion-mnist' (default), 'noise' or an ImageFolder")
    parser.add_argument('--random-seed', type=int, default=0, help='seed of initialisations and data (default: 0)')
    parser.add_argument('--device', default='cpu', help=device_help())
    parser.add_argument('--out', required=True, help='run folder')
    parser.add_argument('--registry', default=None, help='registry folder to write the variant cards into')
    parser.add_argument('--resume', action='store_true',
                        help='continue the trajectory in --out (a folder without one starts it: a job script can '
                             'always pass --resume)')
    parser.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The canonical command line that regenerates this run's cards."""
    parts = ['asvit', 'scale', '--seed', args.seed, '--budgets', args.budgets]
    if args.names:
        parts += ['--names', args.names]
    parts += ['--upper-limit', args.upper_limit, '--image-size', str(args.image_size), '--repeat', str(args.repeat),
              '--batch-size', str(args.batch_size), '--data', args.data, '--random-seed', str(args.random_seed),
              '--device', args.device, '--out', args.out]
    if args.registry:
        parts += ['--registry', args.registry]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    budgets = tuple(float(parse_count(b, '--budgets')) for b in args.budgets.split(','))
    names = args.names.split(',') if args.names is not None else None
    if args.registry is not None and not names:
        raise ValueError('--registry needs --names (one variant name per budget)')
    if names:
        check_variant_names(names, budgets)  # before the run, not after it
    if args.registry is not None:
        check_folder(args.registry, 'registry')
    config = ScalingConfig(seed_genotype=args.seed, budgets=budgets,
                           upper_limit=float(parse_count(args.upper_limit, '--upper-limit')),
                           image_size=args.image_size, repeat=args.repeat, batch_size=args.batch_size,
                           data=args.data, seed=args.random_seed, device=args.device)
    out = Path(args.out)
    steps = run_scaling(config, out, resume=args.resume)
    if not dist_env().is_main:  # under torchrun: process 0 writes the outputs
        return 0
    plot_trajectory(steps, budgets, out / 'trajectory.png')
    variants = select_variants(args.seed, steps, budgets)
    write_json(out / 'variants.json', variants)
    for v in variants:
        print(f"{v['budget'] / 1e6:6.1f}M  step {v['step']:3d}  {v['params'] / 1e6:7.2f}M  {v['genotype']}")
    if args.registry:
        for path in write_variant_cards(Path(args.registry), names, config, steps, _command(args)):
            print(f'wrote {path}')
    return 0
