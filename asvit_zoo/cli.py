"""``asvit``: the command-line entry point. Each subcommand is a thin wrapper over library code."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

import timm
import torch

from . import __version__
from .commands import build, correlate, evaluate, hub, measure, scale, search, summary, train

__all__ = ['main', 'build_parser']

# Each entry adds one subcommand (see asvit_zoo/commands/): it receives the subparsers object.
SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [
    summary.add_parser,
    measure.add_parser,
    search.add_parser,
    scale.add_parser,
    train.add_parser,
    evaluate.add_parser,
    build.add_parser,
    correlate.add_parser,
    hub.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='asvit', description='As-ViT model zoo: models, measures, pipeline.')
    parser.add_argument('--version', action='version', help='print the versions of asvit-zoo, timm and torch',
                        version=f'asvit-zoo {__version__} (timm {timm.__version__}, torch {torch.__version__})')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as e:
        print(f'asvit {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
