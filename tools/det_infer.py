"""Draw a detector's predictions on an image (mmdet's DetLocalVisualizer) and save them as a PNG:

    python tools/det_infer.py mask-rcnn_asvit-seed_fpn_fmnist work_dirs/seed/iter_1000.pth IMAGE --out pred.png

A checkpoint that does not fit the config (tensor names or shapes) is refused.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2
import mmcv
from mmengine.config import DictAction
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS

from asvit_zoo.commands.options import device_help
from asvit_zoo.detection import allow_mmengine_checkpoints, check_checkpoint, load_config
from asvit_zoo.devices import resolve_device
from asvit_zoo.fileio import atomic_write
from asvit_zoo.hub import WeightsError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Draw a detector\'s predictions on an image.')
    parser.add_argument('config', help='shipped config name or config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('image', help='input image')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw predictions scoring at least this (default: 0.3)')
    parser.add_argument('--device', default='cpu', help=device_help())
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys, key=value')
    args = parser.parse_args(argv)
    allow_mmengine_checkpoints()
    try:
        device = resolve_device(args.device)
        if not Path(args.image).is_file():
            raise FileNotFoundError(f'image {args.image} not found')
        cfg = load_config(args.config, cfg_options=args.cfg_options)
        check_checkpoint(cfg, args.checkpoint)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        parser.error(str(e))
    model = init_detector(cfg, args.checkpoint, device=str(device))
    result = inference_detector(model, args.image)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('prediction', mmcv.imread(args.image, channel_order='rgb'), data_sample=result,
                              draw_gt=False, show=False, pred_score_thr=args.score_thr)
    ok, png = cv2.imencode('.png', cv2.cvtColor(visualizer.get_image(), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f'PNG encoding failed for {args.out}')
    atomic_write(args.out, lambda f: f.write(png.tobytes()))
    print(f'predictions drawn to {args.out}: {len(result.pred_instances)} instances, '
          f'{int((result.pred_instances.scores >= args.score_thr).sum())} at score >= {args.score_thr}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
