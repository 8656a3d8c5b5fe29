"""``asvit export`` and ``asvit push``: weights as Hub model repos (see :mod:`asvit_zoo.hub`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..hub import export_weights, push_folder
from ..asvit import registered_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        'export',
        help='write a checkpoint as a registry folder VARIANT.TAG (model.safetensors, config.json, README.md)')
    export.add_argument('checkpoint', type=Path, help='trainer last.pth.tar, a state dict or a .safetensors file (an '
                                                      'exported one keeps what the config.json beside it records)')
    export.add_argument('--variant', required=True, help='registered variant (or the name of a new one)')
    export.add_argument('--tag', required=True, help='pretrained tag, e.g. fmnist (model name VARIANT.TAG)')
    export.add_argument('--hf-hub-id', help='Hub repo ORG/NAME the weights will be pushed to')
    export.add_argument('--genotype', help='genotype of a variant that is not in the registry')
    export.add_argument('--ema', action='store_true', help="export the checkpoint's EMA weights")
    export.add_argument('--registry', help='registry folder (default: the shipped registry)')
    export.add_argument('--description', help="the model card's opening paragraph (default: a generated one)")
    export.set_defaults(func=run_export)
    push = subparsers.add_parser('push', help='upload a registry folder VARIANT.TAG to a Hub model repo')
    push.add_argument('name', help='registry folder name, e.g. asvit_tiny.fmnist')
    push.add_argument('--repo', required=True, help='Hub repo ORG/NAME (created if missing)')
    push.add_argument('--private', action='store_true', help='create the repo private')
    push.add_argument('--registry', type=Path, help='registry folder (default: the registered variants: the shipped '
                                                    'registry and ASVIT_ZOO_REGISTRY)')
    push.set_defaults(func=run_push)


def run_export(args: argparse.Namespace) -> int:
    card = export_weights(args.checkpoint, args.variant, args.tag, root=args.registry, hf_hub_id=args.hf_hub_id,
                          ema=args.ema, genotype=args.genotype, description=args.description)
    weights = card.config['weights']
    print(f"{card.name}.{card.tag} -> {card.path} ({weights['bytes']} bytes, sha256 {weights['sha256']})")
    return 0


def run_push(args: argparse.Namespace) -> int:
    folder = args.registry / args.name if args.registry else registered_folder(args.name)
    print(push_folder(folder, args.repo, private=args.private))
    return 0
