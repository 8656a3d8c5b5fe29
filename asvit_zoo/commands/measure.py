"""``asvit measure``: training-free measures of one genotype (see :mod:`asvit_zoo.measures`)."""
from __future__ import annotations

import argparse
import json

from ..devices import resolve_device
from ..distributed import process_group
from ..measures import MEASURES, load_measure_inputs, measure_genotype
from .options import device_help

DEFAULT_IMAGE_SIZE = 224


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'measure', help='length distortion, curvature and NTK condition number of one genotype at initialisation',
        description='Measure a genotype at initialisation (means over --repeat fresh copies) or the given '
                    '--weights: expected length distortion (exp), curvature, combined, NTK condition number (ntk). '
                    'Under torchrun (torchrun --nproc_per_node N -m asvit_zoo.cli measure ...) the processes share '
                    'the --repeat copies and process 0 prints the result.')
    parser.add_argument('genotype', help="seed string 'K,S,E|...|H' (with --embed-dim) or scaled 'K,S,E,L|...|H,C'")
    parser.add_argument('--embed-dim', type=int, default=None, help='stage-1 width C of a seed genotype')
    parser.add_argument('--image-size', type=int, default=None,
                        help=f'input resolution (default: that of --inputs, else {DEFAULT_IMAGE_SIZE})')
    parser.add_argument('--repeat', type=int, default=1, help='freshly initialised copies to average (default: 1)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the inits, the curve and the noise batch')
    parser.add_argument('--weights', default=None, help='weights file to measure (authors\' or our layout)')
    parser.add_argument('--inputs', default=None,
                        help='safetensors file with curve_basis, curve_theta and ntk_inputs (as the golden io files)')
    parser.add_argument('--device', default='cpu', help=device_help())
    parser.add_argument('--which', default=','.join(MEASURES),
                        help=f'comma-separated measures to take (default: {",".join(MEASURES)})')
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    curve = inputs = None
    image_size = args.image_size
    if args.inputs is not None:
        curve, inputs = load_measure_inputs(args.inputs)
        if image_size is not None and image_size != inputs.shape[-1]:
            raise ValueError(f'--image-size {image_size} conflicts with --inputs {args.inputs}, whose ntk_inputs are '
                             f'{inputs.shape[-1]}x{inputs.shape[-2]}; leave --image-size out or match it')
        image_size = inputs.shape[-1]
    device = resolve_device(args.device)  # a clear error before any process group starts
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
    with process_group(str(device)) as (env, dev):
        result = measure_genotype(
            args.genotype, embed_dim=args.embed_dim, image_size=image_size, repeat=args.repeat,
            inputs=inputs, seed=args.seed, device=dev, weights=args.weights, curve=curve,
            which=[w.strip() for w in args.which.split(',') if w.strip()], distributed=True)
    if not env.is_main:  # under torchrun: one result, from process 0
        return 0
    record = result.to_dict()
    if args.json:
        print(json.dumps(record, allow_nan=False))
    else:
        for key, value in record.items():
            print(f'{key}: {value}')
    return 0
