"""``asvit eval``: top-1/top-5 of pretrained weights on a test set (see :mod:`asvit_zoo.evaluation`)."""
from __future__ import annotations

import argparse
import json

from ..evaluation import evaluate_pretrained
from ..retokenization import FULL_TOKENS, format_tokenizer
from ..train import FASHION_MNIST
from .options import device_help


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'eval', help='top-1/top-5 accuracy of pretrained weights on Fashion-MNIST or an ImageFolder val/ split',
        description='Evaluate pretrained As-ViT weights. MODEL: a registered variant with its tag '
                    '(asvit_tiny.fmnist), hf-hub:ORG/NAME, local-dir:PATH, a trainer last.pth.tar or an exported '
                    'model.safetensors beside its config.json.')
    parser.add_argument('model', help='variant tag, hf-hub:ORG/NAME, local-dir:PATH or a checkpoint file')
    parser.add_argument('--data', default=FASHION_MNIST,
                        help="fashion-mnist (default; the test split), synthetic (the trainer's default draw) or an "
                             'ImageFolder root with train/ and val/')
    parser.add_argument('--data-root', help='Fashion-MNIST folder (default: the Debian package\'s)')
    parser.add_argument('--batch-size', type=int, default=256, help='images per forward pass (default: 256)')
    parser.add_argument('--subset', type=int, help='the first N test images only')
    parser.add_argument('--device', default='cpu', help=device_help())
    parser.add_argument('--ema', action='store_true', help="a trainer checkpoint's EMA weights")
    parser.add_argument('--tokenizer', default=format_tokenizer(*FULL_TOKENS), metavar='STRIDE[:DILATION]',
                        help='stage-1 tokenizer setting to score at: full tokens (%(default)s) by default; e.g. 8:2, '
                             'the coarse grid of a re-tokenization phase')
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate_pretrained(args.model, data=args.data, data_root=args.data_root, batch_size=args.batch_size,
                                 subset=args.subset, device=args.device, ema=args.ema, tokenizer=args.tokenizer)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} on {result['data']} ({result['images']} images, tokenizer "
              f"{result['tokenizer']}): top-1 {result['top1']:.2f}%  "
              f"top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  ({result['seconds']:.1f}s)")
    return 0
