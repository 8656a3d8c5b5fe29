"""A COCO-format instance-segmentation dataset made from Fashion-MNIST (Debian's package), deterministically.

Each image is a canvas of random size (``canvas`` range, non-square) with a noisy background of a
random dark colour; 1 to ``max_items`` Fashion-MNIST items, drawn from the ``train`` split for the
``train`` set and from the ``test`` split for the ``val`` set, are scaled to a random side and pasted,
tinted with a random bright colour, at random positions where their boxes do not touch. The mask of
an item is its silhouette (scaled intensity >= ``MASK_THRESHOLD``), its box the mask's tight box, its
category one of the 10 Fashion-MNIST classes (ids 1-10). Masks are stored as compressed RLE.

Layout written under ``out_dir``::

    train/000001.png ...   val/000001.png ...
    annotations/instances_train.json   annotations/instances_val.json

The same arguments give the same files (seeded per split with ``numpy.random.default_rng``).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from asvit_zoo.datasets import DEFAULT_ROOT, FASHION_MNIST_CLASSES, load_fashion_mnist
from asvit_zoo.fileio import atomic_write, write_json

__all__ = ['SPLITS', 'SceneConfig', 'annotation_file', 'check_data_root', 'data_root_options', 'make_split',
           'make_dataset', 'main', 'scene_errors']

SPLITS = {'train': 'train', 'val': 'test'}  # dataset split -> Fashion-MNIST split its items come from
MASK_THRESHOLD = 0.25
PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class SceneConfig:
    """How the images are composed (sizes in pixels, ranges inclusive)."""

    canvas: Tuple[int, int] = (112, 160)
    item_side: Tuple[int, int] = (28, 84)
    max_items: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        errors = scene_errors(**asdict(self))
        if errors:
            raise ValueError('SceneConfig.{} {}'.format(*errors[0]))


def scene_errors(canvas: Tuple[int, int], item_side: Tuple[int, int], max_items: int,
                 seed: int) -> List[Tuple[str, str]]:
    """(field, what is wrong) for each invalid :class:`SceneConfig` field, in field order."""
    errors = [(name, f'must be a range (low, high) with 1 <= low <= high, got {tuple(value)}')
              for name, value in (('canvas', canvas), ('item_side', item_side)) if not 1 <= value[0] <= value[1]]
    if item_side[1] > canvas[0]:
        errors.append(('item_side', f'must fit the smallest canvas side {canvas[0]}, got {tuple(item_side)}'))
    if max_items < 1:
        errors.append(('max_items', f'must be >= 1, got {max_items}'))
    if seed < 0:
        errors.append(('seed', f'must be >= 0, got {seed}'))
    return errors


def annotation_file(out_dir: Path, split: str) -> Path:
    return Path(out_dir) / 'annotations' / f'instances_{split}.json'


def _overlaps(box: Sequence[int], boxes: Sequence[Sequence[int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 <= bx1 and bx0 <= x1 and y0 <= by1 and by0 <= y1 for bx0, by0, bx1, by1 in boxes)


def _compose(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray,
             config: SceneConfig) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One RGB uint8 image and its (label, full-canvas boolean mask) instances."""
    height, width = (int(v) for v in rng.integers(config.canvas[0], config.canvas[1] + 1, size=2))
    background = rng.integers(0, 90, size=3)
    image = background + rng.normal(0, 8, size=(height, width, 3))
    instances: List[Tuple[int, np.ndarray]] = []
    boxes: List[Tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, config.max_items + 1))):
        index = int(rng.integers(len(items)))
        side = int(rng.integers(config.item_side[0], config.item_side[1] + 1))
        alpha = cv2.resize(items[index], (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float64) / 255
        silhouette = alpha >= MASK_THRESHOLD
        rows, cols = np.nonzero(silhouette)
        if rows.size == 0:
            continue
        colour = rng.integers(120, 256, size=3)
        for _ in range(PLACEMENT_TRIES):
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            box = (left + int(cols.min()), top + int(rows.min()), left + int(cols.max()), top + int(rows.max()))
            if not _overlaps(box, boxes):
                break
        else:
            continue
        boxes.append(box)
        region = image[top:top + side, left:left + side]
        region[...] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        mask = np.zeros((height, width), dtype=bool)
        mask[top:top + side, left:left + side] = silhouette
        instances.append((int(labels[index]), mask))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def _annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray) -> Dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return dict(id=ann_id, image_id=image_id, category_id=label + 1, bbox=[x, y, w, h],
                area=float(mask_utils.area(rle)), iscrowd=0,
                segmentation=dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii')))


def _check_split(split: str, num_images: int) -> None:
    if split not in SPLITS:
        raise ValueError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
    if num_images < 1:
        raise ValueError(f'num_images of {split} must be >= 1, got {num_images}')


def _items(split: str, fmnist_root: Path) -> Tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST images and labels the items of ``split`` come from."""
    images, labels = load_fashion_mnist(SPLITS[split], fmnist_root)
    return images.numpy(), labels.numpy()


def make_split(out_dir: Path, split: str, num_images: int, config: SceneConfig = SceneConfig(),
               fmnist_root: Path = DEFAULT_ROOT) -> Path:
    """Write ``num_images`` images of ``split`` ('train' or 'val') and their COCO annotation file; return its path."""
    _check_split(split, num_images)
    return _write_split(out_dir, split, num_images, config, *_items(split, fmnist_root))


def _write_split(out_dir: Path, split: str, num_images: int, config: SceneConfig, items: np.ndarray,
                 labels: np.ndarray) -> Path:
    rng = np.random.default_rng([config.seed, sorted(SPLITS).index(split)])
    out_dir = Path(out_dir)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for image_id in range(1, num_images + 1):
        image, instances = _compose(rng, items, labels, config)
        file_name = f'{image_id:06d}.png'
        ok, png = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f'PNG encoding failed for {split}/{file_name}')
        atomic_write(out_dir / split / file_name, lambda f: f.write(png.tobytes()))
        images.append(dict(id=image_id, file_name=file_name, height=image.shape[0], width=image.shape[1]))
        for label, mask in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask))
    categories = [dict(id=i + 1, name=name, supercategory='fashion') for i, name in enumerate(FASHION_MNIST_CLASSES)]
    info = dict(description=f'Fashion-MNIST scenes ({split}, items from the {SPLITS[split]} split)', **asdict(config))
    return write_json(annotation_file(out_dir, split),
                      dict(info=info, images=images, annotations=annotations, categories=categories))


def data_root_options(data_root: Path) -> Dict[str, str]:
    """``cfg_options`` that point a config built on ``_base_/fmnist_coco_instance.py`` at ``data_root``."""
    root = f'{Path(data_root).resolve()}/'
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    options = {f'{loader}.dataset.data_root': root for loader in loaders}
    options.update({f'{evaluator}.ann_file': str(annotation_file(Path(root), 'val'))
                    for evaluator in ('val_evaluator', 'test_evaluator')})
    return options


def check_data_root(data_root: Path, splits: Sequence[str] = tuple(SPLITS)) -> None:
    """FileNotFoundError naming the first annotation file of ``splits`` missing under ``data_root``."""
    for split in splits:
        path = annotation_file(Path(data_root), split)
        if not path.is_file():
            raise FileNotFoundError(f'{path} not found: {data_root} is not a dataset written by '
                                    f'tools/make_det_data.py --out {data_root}')


def make_dataset(out_dir: Path, num_train: int, num_val: int, config: SceneConfig = SceneConfig(),
                 fmnist_root: Path = DEFAULT_ROOT) -> Dict[str, Path]:
    """Both splits, checked and their Fashion-MNIST items read before anything is written; returns the annotation
    file of each."""
    counts = {'train': num_train, 'val': num_val}
    for split, num_images in counts.items():
        _check_split(split, num_images)
    sources = {split: _items(split, fmnist_root) for split in counts}
    return {split: _write_split(out_dir, split, n, config, *sources[split]) for split, n in counts.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('data/fmnist_coco'),
                        help='output folder (default: %(default)s)')
    parser.add_argument('--train', type=int, default=4000, help='number of train images (default: %(default)s)')
    parser.add_argument('--val', type=int, default=200, help='number of val images (default: %(default)s)')
    parser.add_argument('--canvas', type=int, nargs=2, default=SceneConfig.canvas, metavar=('MIN', 'MAX'),
                        help='range of the canvas sides, inclusive (default: %(default)s)')
    parser.add_argument('--item-side', type=int, nargs=2, default=SceneConfig.item_side, metavar=('MIN', 'MAX'),
                        help='range of the item sides (scaled Fashion-MNIST images), inclusive, at most the '
                             'smallest canvas side (default: %(default)s)')
    parser.add_argument('--max-items', type=int, default=SceneConfig.max_items,
                        help='at most this many items per image, at least 1 (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=SceneConfig.seed, help='seed of the scenes (default: %(default)s)')
    parser.add_argument('--fmnist-root', type=Path, default=DEFAULT_ROOT,
                        help='folder of the Fashion-MNIST IDX files (default: %(default)s)')
    args = parser.parse_args(argv)
    counts = {'train': args.train, 'val': args.val}
    for split, num_images in counts.items():
        if num_images < 1:
            parser.error(f'--{split} must be >= 1 (a number of images), got {num_images}')
    scene = dict(canvas=tuple(args.canvas), item_side=tuple(args.item_side), max_items=args.max_items, seed=args.seed)
    errors = scene_errors(**scene)
    if errors:
        field, message = errors[0]
        parser.error(f'--{field.replace("_", "-")} {message}')
    if args.out.exists() and not args.out.is_dir():
        parser.error(f'--out {args.out} must be a folder, found a file')
    try:
        sources = {split: _items(split, args.fmnist_root) for split in counts}
    except (FileNotFoundError, ValueError) as e:
        parser.error(f'--fmnist-root {args.fmnist_root}: {e}')
    for split, num_images in counts.items():
        path = _write_split(args.out, split, num_images, SceneConfig(**scene), *sources[split])
        print(f'{split}: {path}')
    return 0
