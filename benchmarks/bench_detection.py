"""Detection with an As-ViT backbone, measured on the CPU.

``train``: generate the Fashion-MNIST scenes (tools/make_det_data.py), train the CPU-sized Mask R-CNN
(``mask-rcnn_asvit-tiny_fpn_fmnist``: asvit_tiny from the shipped Fashion-MNIST classification weights;
``--config mask-rcnn_asvit-seed_fpn_fmnist`` trains asvit_seed from scratch) with tools/det_train.py, evaluate the
last checkpoint on the val split with tools/det_test.py (COCO bbox and segm mAP) and draw the
predictions on one val image with tools/det_infer.py. The tools run as subprocesses, as a user runs
them; wall times are measured around them. Training uses ``--threads`` torch threads (on a shared
2-core machine one thread is much faster than two: no oversubscription).

``speed``: forward time of the backbones alone at ``--image-size`` (800x1333): As-ViT variants against
mmdet's Swin-T backbone (built from mmdet's own Swin-T Mask R-CNN config), side by side: every round
times each once, in an order rotated from round to round, after a warm-up round (eval mode,
torch.inference_mode, random weights and input). The median is reported.

    python benchmarks/bench_detection.py train --work-dir runs/bench_detection
    python benchmarks/bench_detection.py speed --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from mmengine.hub import get_config
from mmengine.registry import init_default_scope

from mmdet.registry import MODELS

from asvit_zoo.detection import config_path, load_config
from asvit_zoo.detection.fmnist_coco import annotation_file, data_root_options
from asvit_zoo.fileio import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
TRAIN_CONFIG = 'mask-rcnn_asvit-tiny_fpn_fmnist'  # pretrained backbone (asvit_tiny.fmnist)
SWIN_T_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
TARGET_BBOX_MAP = 0.50


def _options(options: Dict[str, Any]) -> List[str]:
    return [f'{key}={value}' for key, value in options.items()]


def _run(args: Sequence[str], threads: int) -> float:
    """Run a tool (``tools/NAME.py ARGS``) to completion; its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, str(TOOLS / args[0]), *args[1:]]
    print('$', ' '.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=REPO)
    return time.perf_counter() - start


def bench_train(work_dir: Path, num_train: int, num_val: int, max_iters: Optional[int], threads: int,
                config: str = TRAIN_CONFIG) -> Dict[str, Any]:
    data = work_dir / 'data'
    if not (annotation_file(data, 'train').is_file() and annotation_file(data, 'val').is_file()):
        _run(['make_det_data.py', '--out', str(data), '--train', str(num_train), '--val', str(num_val)], threads)
    found = {split: len(read_json(annotation_file(data, split))['images']) for split in ('train', 'val')}
    if (found['train'], found['val']) != (num_train, num_val):
        raise ValueError(f"{data} holds {found['train']} train and {found['val']} val images, not the {num_train} and "
                         f'{num_val} asked for: delete it to generate them, or ask for its counts')
    options = data_root_options(data)
    if max_iters is not None:  # the same schedule (warm-up for the first 1/10, then cosine) over max_iters
        warmup = max(1, max_iters // 10)
        options.update({'train_cfg.max_iters': max_iters, 'train_cfg.val_interval': max_iters,
                        'param_scheduler.0.end': warmup, 'param_scheduler.1.begin': warmup,
                        'param_scheduler.1.end': max_iters})
    iters = max_iters if max_iters is not None else load_config(config).train_cfg.max_iters
    train_dir = work_dir / 'train'
    train_s = _run(['det_train.py', config, '--work-dir', str(train_dir), '--cfg-options', *_options(options)],
                   threads)
    checkpoint = train_dir / f'iter_{iters}.pth'
    metrics_file = work_dir / 'metrics.json'
    test_s = _run(['det_test.py', config, str(checkpoint), '--work-dir', str(work_dir / 'test'),
                   '--metrics-out', str(metrics_file), '--cfg-options', *_options(options)], threads)
    prediction = work_dir / 'prediction.png'
    _run(['det_infer.py', config, str(checkpoint), str(data / 'val' / '000001.png'), '--out', str(prediction)],
         threads)
    metrics = json.loads(metrics_file.read_text())
    return {
        'config': config, 'iterations': iters,
        'batch_size': load_config(config).train_dataloader.batch_size,
        'train_images': num_train, 'val_images': num_val, 'threads': threads,
        'train_wall_s': round(train_s, 1), 'test_wall_s': round(test_s, 1),
        'bbox_mAP': metrics['coco/bbox_mAP'], 'bbox_mAP_50': metrics['coco/bbox_mAP_50'],
        'segm_mAP': metrics['coco/segm_mAP'], 'segm_mAP_50': metrics['coco/segm_mAP_50'],
        'target_bbox_mAP': TARGET_BBOX_MAP, 'reached': metrics['coco/bbox_mAP'] >= TARGET_BBOX_MAP,
        'checkpoint': str(checkpoint), 'prediction_png': str(prediction),
    }


def bench_speed(archs: Sequence[str], image_size: Sequence[int], rounds: int) -> Dict[str, Any]:
    init_default_scope('mmdet')
    swin_cfg = get_config(SWIN_T_CONFIG).model.backbone
    swin_cfg.init_cfg = None
    backbones = {arch: MODELS.build(dict(type='AsViT', arch=arch)) for arch in archs}
    backbones['Swin-T (mmdet)'] = MODELS.build(swin_cfg)
    x = torch.randn(1, 3, *image_size)
    times: Dict[str, List[float]] = {name: [] for name in backbones}
    names = list(backbones)
    with torch.inference_mode():
        for model in backbones.values():
            model.eval()  # mmdet's SwinTransformer.train() returns None: no chaining
            model(x)  # warm-up
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                backbones[name](x)
                times[name].append(time.perf_counter() - start)
    reference = statistics.median(times['Swin-T (mmdet)'])
    return {
        'image_size': list(image_size), 'rounds': rounds, 'threads': torch.get_num_threads(),
        'backbones': {name: {'params_M': round(sum(p.numel() for p in backbones[name].parameters()) / 1e6, 2),
                             'median_s': round(statistics.median(t), 3), 'min_s': round(min(t), 3),
                             'max_s': round(max(t), 3),
                             'vs_swin_t': round(statistics.median(t) / reference, 2)}
                      for name, t in times.items()},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('part', choices=('train', 'speed'), help='train: train, test and draw a detector; speed: '
                        'backbone forward times against Swin-T')
    parser.add_argument('--work-dir', type=Path, default=Path('runs/bench_detection'),
                        help='folder of PART.json (train: also the scenes and the run; default: runs/bench_detection)')
    parser.add_argument('--train-images', type=int, default=4000,
                        help='train: generated training scenes (default: 4000)')
    parser.add_argument('--val-images', type=int, default=200, help='train: generated val scenes (default: 200)')
    parser.add_argument('--max-iters', type=int, help='override the config\'s iterations (short trials)')
    parser.add_argument('--config', default=TRAIN_CONFIG,
                        help=f'detection config to train (default: {TRAIN_CONFIG}; from scratch: '
                             f'mask-rcnn_asvit-seed_fpn_fmnist)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads of the train/test/infer tools')
    parser.add_argument('--archs', nargs='+', default=['asvit_small', 'asvit_base', 'asvit_large'],
                        help='speed: As-ViT variants timed (default: asvit_small asvit_base asvit_large)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='speed: input height and width (default: 800 1333)')
    parser.add_argument('--rounds', type=int, default=5, help='speed: timed rounds after a warm-up round (default: 5)')
    args = parser.parse_args(argv)
    lowest = {'--train-images': 1, '--val-images': 1, '--threads': 1, '--rounds': 1, '--image-size': 1,
              '--max-iters': 2}  # --max-iters: its warm-up takes at least one iteration, the cosine the rest
    given = {'--train-images': args.train_images, '--val-images': args.val_images, '--threads': args.threads,
             '--rounds': args.rounds, '--image-size': min(args.image_size), '--max-iters': args.max_iters}
    for option, value in given.items():
        if value is not None and value < lowest[option]:
            parser.error(f'{option} must be at least {lowest[option]}, got {value}')
    work_dir = args.work_dir.resolve()
    try:
        if args.part == 'train':
            config_path(args.config)
            result = bench_train(work_dir, args.train_images, args.val_images, args.max_iters, args.threads,
                                 args.config)
        else:
            result = bench_speed(args.archs, args.image_size, args.rounds)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    result['command'] = ' '.join(['python', 'benchmarks/bench_detection.py', *(argv or sys.argv[1:])])
    write_json(work_dir / f'{args.part}.json', result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
