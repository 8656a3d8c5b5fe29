"""``asvit summary``: build every registered variant, run a forward pass, print a table."""
from __future__ import annotations

import argparse

from ..summary import format_table, summarize_variants


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'summary', help='build every registered variant, run a forward pass, print name/genotype/params/GMACs')
    parser.add_argument('--image-size', type=int, default=224, help='input resolution (default: 224)')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = summarize_variants(image_size=args.image_size)
    print(format_table(rows))
    return 0
