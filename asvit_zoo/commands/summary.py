"""``asvit list``, ``asvit show`` and ``asvit summary``: the registered variants."""
from __future__ import annotations

import argparse

from ..asvit import registered_folder
from ..registry import CARD_FILE
from ..summary import format_table, list_variants, summarize_variants


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser('list', help='table of the registered variants: genotype, params, GMACs, weights')
    listing.add_argument('--image-size', type=int, default=224, help='resolution of the GMACs column (default: 224)')
    listing.set_defaults(func=run_list)
    show = subparsers.add_parser('show', help="print a variant's model card")
    show.add_argument('name', help='registered variant, e.g. asvit_small or asvit_tiny.fmnist')
    show.set_defaults(func=run_show)
    summary = subparsers.add_parser(
        'summary', help='build every registered variant, run a forward pass, print the table with timings')
    summary.add_argument('--image-size', type=int, default=224, help='input resolution (default: 224)')
    summary.set_defaults(func=run_summary)


def run_list(args: argparse.Namespace) -> int:
    print(format_table(list_variants(args.image_size), args.image_size))
    return 0


def run_show(args: argparse.Namespace) -> int:
    print((registered_folder(args.name) / CARD_FILE).read_text(encoding='utf-8'), end='')
    return 0


def run_summary(args: argparse.Namespace) -> int:
    print(format_table(summarize_variants(args.image_size), args.image_size))
    return 0
