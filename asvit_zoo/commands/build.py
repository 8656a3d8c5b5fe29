"""``asvit build``: the main job, search -> scale -> train -> export -> evaluate -> report (see
:mod:`asvit_zoo.build`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..build import PRESETS, STAGES, build, load_preset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'build', help='regenerate a zoo: seed search, scaling, training, export, evaluation and a report',
        description='Run the whole As-ViT pipeline of a preset into --out. Completed stages with the same inputs '
                    'are skipped and interrupted ones continue from their checkpoints, so a killed build picks up '
                    'where it stopped. Writes report.md and its PNGs into --out.')
    parser.add_argument('--preset', default='fmnist-cpu',
                        help=f'a shipped preset ({", ".join(PRESETS)}; default fmnist-cpu) or a preset JSON file')
    parser.add_argument('--out', help="build folder (default: builds/PRESET, PRESET being the preset's name)")
    parser.add_argument('--data', help='run every stage on this data: fashion-mnist or an ImageFolder root')
    parser.add_argument('--until', choices=STAGES, help='stop after this stage')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    if args.data is not None:
        preset = preset.with_data(args.data)
    out = args.out if args.out is not None else Path('builds') / preset.name
    outputs = build(preset, out, until=args.until, progress=not args.no_progress)
    for row in outputs['rows']:
        print(f"{row['name']}.{row['tag']}  {row['genotype']}  {row['params'] / 1e6:.2f}M  top-1 {row['top1']:.2f}%")
    if 'report' in outputs:
        print(f"report: {outputs['report']}")
    return 0
