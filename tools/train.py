"""``python tools/train.py ARGS`` is ``asvit train ARGS``; torchrun-friendly:

    python -m torch.distributed.run --nproc_per_node 2 tools/train.py --config recipes/fmnist_tiny.json --output runs/x
"""
import sys

from asvit_zoo.cli import main

if __name__ == '__main__':
    sys.exit(main(['train', *sys.argv[1:]]))
