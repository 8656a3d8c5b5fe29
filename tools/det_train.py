"""Train a detector with mmengine's Runner, as mmdet's tools/train.py does:

    python tools/det_train.py mask-rcnn_asvit-seed_fpn_fmnist --work-dir work_dirs/seed
    python tools/det_train.py CONFIG --work-dir DIR --resume          # from DIR's last checkpoint
    python tools/det_train.py CONFIG --cfg-options train_cfg.max_iters=100

CONFIG is a shipped config name (asvit_zoo/detection/configs) or a config file.
"""
import argparse
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction
from mmengine.runner import Runner

from asvit_zoo.detection import allow_mmengine_checkpoints, load_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Train a detector (mmengine Runner).')
    parser.add_argument('config', help='shipped config name or config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: work_dirs/<config>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='resume from CHECKPOINT, or from the work dir\'s last checkpoint when none is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys, key=value')
    args = parser.parse_args(argv)
    allow_mmengine_checkpoints()
    cfg = load_config(args.config, args.work_dir, args.cfg_options)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    Runner.from_cfg(cfg).train()
    return 0


if __name__ == '__main__':
    sys.exit(main())
