"""``asvit search``: REINFORCE seed search with training-free rewards (see :mod:`asvit_zoo.search`)."""
from __future__ import annotations

import argparse

from ..distributed import dist_env
from ..search import SearchConfig, search
from .options import device_help, parse_count, parse_positive


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'search', help='REINFORCE search of a seed topology rewarded by NTK condition and length distortion',
        description='Search the As-ViT seed topology with REINFORCE (spec section 4). Writes steps.jsonl, '
                    'state.pt (after every step), summary.json and curves.png to --out. Under torchrun '
                    '(torchrun --nproc_per_node N -m asvit_zoo.cli search ...) the processes share the --repeat '
                    'copies of each measurement.')
    parser.add_argument('--out', required=True, help='run folder')
    parser.add_argument('--steps', type=int, default=500, help='REINFORCE steps (default: 500)')
    parser.add_argument('--repeat', type=int, default=5,
                        help='independently initialised copies measured per network (default: 5)')
    parser.add_argument('--batch-size', type=int, default=16, help='images in the NTK batch (default: 16)')
    parser.add_argument('--image-size', type=int, default=224, help='search resolution (default: 224)')
    parser.add_argument('--measures', default='ntk,exp',
                        help='rewarded measures, comma-separated: ntk, exp or ntk,exp (default: ntk,exp)')
    parser.add_argument('--data', default='fashion-mnist',
                        help="NTK images: 'fashion-mnist' (Debian's dataset-fashion-mnist), 'noise' (Gaussian) "
                             "or the path of an ImageFolder tree (default: fashion-mnist)")
    parser.add_argument('--device', default='cpu', help=device_help())
    parser.add_argument('--seed', type=int, default=0, help='seed of every random draw of the run (default: 0)')
    parser.add_argument('--max-params',
                        help='soft parameter budget of the networks the search measures (width 32, depths 1,1,1,1; '
                             '1.2M to 2.4M parameters, not those of a scaled model), e.g. 1.8M')
    parser.add_argument('--max-gmacs',
                        help='soft GMACs budget of the networks the search measures, at --image-size (about 0.15 to '
                             '0.55 at 224), e.g. 0.3')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --out from its state.pt (a folder without one starts the run: a '
                             'job script can always pass --resume)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = SearchConfig(
        steps=args.steps, repeat=args.repeat, batch_size=args.batch_size, image_size=args.image_size,
        measures=tuple(m.strip() for m in args.measures.split(',')), data=args.data, device=args.device,
        seed=args.seed,
        max_params=None if args.max_params is None else parse_count(args.max_params, '--max-params'),
        max_gmacs=None if args.max_gmacs is None else parse_positive(args.max_gmacs, '--max-gmacs'))
    result = search(config, args.out, resume=args.resume, progress=not args.no_progress)
    if not dist_env().is_main:  # under torchrun: one line, from process 0
        return 0
    summary = result.summary
    print(f'{result.genotype}  params {summary["params"] / 1e6:.2f}M  GMACs {summary["gmacs"]:.3f}  '
          f'({summary["steps"]} steps, {summary["wall_seconds"]:.1f} s) -> {args.out}')
    return 0
