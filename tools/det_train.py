r"""Train a detector with mmengine's Runner, as mmdet's tools/train.py does:

    python tools/det_train.py mask-rcnn_asvit-seed_fpn_fmnist --data-root data/fmnist_coco --work-dir work_dirs/seed
    python tools/det_train.py CONFIG --work-dir DIR --resume          # from DIR's last checkpoint

CONFIG is a shipped config name (asvit_zoo/detection/configs) or a config file. --data-root points the
Fashion-MNIST configs at a dataset written by tools/make_det_data.py --out DIR (their default:
data/fmnist_coco). The LR schedule counts iterations of its own: a shorter run sets it with train_cfg.max_iters
(warm-up to iteration 10, then cosine to 100, validated at the end):

    python tools/det_train.py mask-rcnn_asvit-seed_fpn_fmnist --data-root data/fmnist_coco --cfg-options \
        train_cfg.max_iters=100 train_cfg.val_interval=100 param_scheduler.0.end=10 param_scheduler.1.begin=10 \
        param_scheduler.1.end=100
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from mmengine.config import DictAction
from mmengine.runner import Runner

from asvit_zoo.detection import allow_mmengine_checkpoints, check_checkpoint, check_dataset_files, load_config
from asvit_zoo.detection.fmnist_coco import check_data_root, data_root_options
from asvit_zoo.hub import WeightsError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Train a detector (mmengine Runner).')
    parser.add_argument('config', help='shipped config name or config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: work_dirs/<config>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='resume from CHECKPOINT, or from the work dir\'s last checkpoint when none is given')
    parser.add_argument('--data-root', type=Path, help='dataset written by tools/make_det_data.py --out DIR, for the '
                        'Fashion-MNIST configs (default: their data/fmnist_coco)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys, key=value')
    args = parser.parse_args(argv)
    options = dict(args.cfg_options or {})
    if args.data_root is not None:
        try:
            check_data_root(args.data_root)
        except FileNotFoundError as e:
            parser.error(f'--data-root: {e}')
        options = {**data_root_options(args.data_root), **options}
    allow_mmengine_checkpoints()
    try:
        cfg = load_config(args.config, args.work_dir, options)
        check_dataset_files(cfg, ['train_dataloader', 'val_dataloader'])
        if args.resume not in (None, 'auto'):
            if not Path(args.resume).is_file():
                raise FileNotFoundError(f'--resume: checkpoint {args.resume} not found')
            check_checkpoint(cfg, args.resume)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        parser.error(str(e))
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    Runner.from_cfg(cfg).train()
    return 0


if __name__ == '__main__':
    sys.exit(main())
