r"""Evaluate a detector checkpoint with mmengine's Runner, as mmdet's tools/test.py does:

    python tools/det_test.py mask-rcnn_asvit-seed_fpn_fmnist work_dirs/seed/iter_1000.pth --data-root data/fmnist_coco \
        --metrics-out m.json

The metrics (COCO bbox and segm mAP for the shipped configs) are printed and, with --metrics-out, written
as JSON. A checkpoint that does not fit the config (tensor names or shapes) is refused. --data-root points the
Fashion-MNIST configs at a dataset written by tools/make_det_data.py --out DIR (their default: data/fmnist_coco).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from mmengine.config import DictAction
from mmengine.runner import Runner

from asvit_zoo.detection import allow_mmengine_checkpoints, check_checkpoint, check_dataset_files, load_config
from asvit_zoo.detection.fmnist_coco import check_data_root, data_root_options
from asvit_zoo.fileio import write_json
from asvit_zoo.hub import WeightsError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Evaluate a detector checkpoint (mmengine Runner).')
    parser.add_argument('config', help='shipped config name or config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the logs (default: work_dirs/<config>)')
    parser.add_argument('--metrics-out', help='write the metrics to this JSON file')
    parser.add_argument('--data-root', type=Path, help='dataset written by tools/make_det_data.py --out DIR, for the '
                        'Fashion-MNIST configs (default: their data/fmnist_coco); its val split is evaluated')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys, key=value')
    args = parser.parse_args(argv)
    options = dict(args.cfg_options or {})
    if args.data_root is not None:
        try:
            check_data_root(args.data_root, ['val'])
        except FileNotFoundError as e:
            parser.error(f'--data-root: {e}')
        options = {**data_root_options(args.data_root), **options}
    allow_mmengine_checkpoints()
    try:
        cfg = load_config(args.config, args.work_dir, options)
        check_dataset_files(cfg, ['test_dataloader'])
        check_checkpoint(cfg, args.checkpoint)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        parser.error(str(e))
    cfg.load_from = args.checkpoint
    metrics = {key: float(value) if isinstance(value, (int, float)) else value
               for key, value in Runner.from_cfg(cfg).test().items()}
    print(json.dumps(metrics, indent=2))
    if args.metrics_out:
        write_json(args.metrics_out, metrics)
    return 0


if __name__ == '__main__':
    sys.exit(main())
