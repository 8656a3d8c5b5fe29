"""Training As-ViT with progressive re-tokenization, on CPU, one GPU or many (torchrun), from timm's blocks.

The loop is timm's: ``create_optimizer_v2`` (with layer decay), ``create_scheduler_v2`` stepped per update,
``Mixup``/CutMix with label smoothing, ``ModelEmaV3``, AMP (bf16 or fp16 with ``NativeScaler`` on CUDA),
``accuracy`` for top-1/top-5. Data:

- ``fashion-mnist`` (default): Debian's package (:func:`asvit_zoo.datasets.load_fashion_mnist`), grayscale;
- ``synthetic``: class-dependent patterns drawn from the seed (tests, smoke runs);
- any other value: an ImageFolder root with ``train/`` and ``val/`` (ImageNet layout), read through timm's
  ``create_dataset``/``create_transform``/``create_loader`` (RandAugment, random erasing, ...).

The two in-memory sources use a plain DataLoader over uint8 tensors with a ``DistributedSampler`` (timm's
loader expects PIL images); random crop, flip and normalisation run batched on the device.

Progressive re-tokenization: training step ``i`` of ``N`` runs at the setting of the schedule's phase at
progress ``i / N`` (:mod:`asvit_zoo.retokenization`). Evaluation uses the full token grid (``eval_*``); an
epoch that ends on coarse tokens is also scored on that grid (``eval_phase_*``), where a network in its coarse
phase is judged fairly (on Fashion-MNIST at 28 px it is near chance on the full grid). The training MACs of
the run are counted: each step adds (images in the step) x (MACs per image at its setting).
The epoch loops are timed in wall time (``train_time``) and in this process's CPU time (``train_cpu_time``, all
threads), which a machine shared with other jobs disturbs less.

The run folder gets ``config.json`` and ``schedule.png`` (:func:`~asvit_zoo.retokenization.plot_schedule`);
every epoch writes ``metrics.jsonl`` (one JSON object per epoch) and ``last.pth.tar`` atomically (a temporary
file renamed over the old one) with the model, optimizer, scheduler, EMA, loss scaler and the RNG states of
every process, so that ``resume=True`` continues exactly where the run stopped: same losses, same weights.
Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised from the environment (NCCL on GPUs, gloo
on CPU) and the model is wrapped in DistributedDataParallel; process 0 writes the files. ``compile`` runs the
training steps through ``torch.compile`` (one graph per tokenizer setting); evaluation stays eager.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from tqdm import tqdm

from timm.data import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_dataset, create_loader,
                       create_transform)
from timm.data.transforms import str_to_interp_mode
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, accuracy

from .asvit import AsViT, register_model_source
from .cost import param_count
from .datasets import DEFAULT_ROOT, load_fashion_mnist
from .devices import parse_device
from .distributed import DistEnv, init_distributed, process_group
from .fileio import check_folder, read_json_lines, save_torch, write_text
from .genotype import Genotype
from .hub import load_torch_checkpoint
from .modes import kept_modes
from .retokenization import (FULL_TOKENS, SCHEDULES, format_tokenizer, parse_schedule, parse_tokenizer, plot_schedule,
                             schedule_cost)
from .validation import (COUNT, NON_NEGATIVE, POSITIVE, SEED_RANGE, Range, changed_settings, check_compile_backend,
                         check_fields, is_count, offset_seed, setting)

__all__ = ['TrainConfig', 'TrainResult', 'Trainer', 'load_config', 'train']

FASHION_MNIST = 'fashion-mnist'
SYNTHETIC = 'synthetic'
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.5,), (0.25,)  # the synthetic source's normalisation (one channel)
CHECKPOINT = 'last.pth.tar'
METRICS = 'metrics.jsonl'
RUN_CONFIG = 'config.json'  # the settings of a run, in its folder
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
UNSUPPORTED_SCHEDULERS = ('plateau', 'none')  # plateau steps per epoch on a metric; none has no step_update
_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')  # str_to_interp_mode's
RESUME_KEYS = ('epoch', 'config', 'model', 'optimizer', 'scheduler', 'rng')  # of a checkpoint train() wrote
PathLike = Union[str, Path]
GENERIC_MODEL = 'asvit'  # the registered model that takes any genotype


_PROBABILITY, _FRACTION = Range(0, 1), Range(0, 1, high_open=True)


def check_data_root(data: str, data_root: Optional[PathLike]) -> None:
    """Raise ``ValueError`` when ``data_root`` is given for data that does not read it."""
    if data_root is not None and data != FASHION_MNIST:
        raise ValueError(f'data_root is the folder of the {FASHION_MNIST} files; data {data!r} does not read '
                         f'it (an ImageFolder is given by data itself)')


@dataclass
class TrainConfig:
    """Everything that defines a training run (recipes in ``recipes/*.json`` set these fields)."""

    # model
    model: str = setting('asvit', "a registered variant name (with a tag for its weights, e.g. 'asvit_tiny.fmnist'), "
                                  "'hf-hub:ORG/NAME', 'local-dir:PATH', or 'asvit' with --genotype")
    genotype: Optional[str] = setting(None, "scaled genotype 'K,S,E,L|K,S,E,L|K,S,E,L|K,S,E,L|H,C' (model 'asvit')")
    pretrained: bool = setting(False, "start from the model's pretrained weights (fine-tuning); a new classifier "
                                      'where the class count differs')
    drop_path: float = setting(0., 'stochastic depth rate', _FRACTION)
    # data
    data: str = setting(FASHION_MNIST, f"'{FASHION_MNIST}', '{SYNTHETIC}', or an ImageFolder root with train/ and "
                                       'val/ (ImageNet layout)')
    data_root: Optional[str] = setting(None, f"Fashion-MNIST folder, unset: Debian's {DEFAULT_ROOT}")
    img_size: int = setting(28, 'input height and width', COUNT)
    train_subset: Optional[int] = setting(None, 'train on the first N training images', COUNT)
    eval_subset: Optional[int] = setting(None, 'score the first N evaluation images', COUNT)
    synthetic_classes: int = setting(10, f'{SYNTHETIC} data: number of classes', COUNT)
    synthetic_train: int = setting(512, f'{SYNTHETIC} data: training images', COUNT)
    synthetic_eval: int = setting(128, f'{SYNTHETIC} data: evaluation images', COUNT)
    crop_padding: int = setting(2, 'in-memory data only: random crop of the image zero-padded by this many pixels',
                                NON_NEGATIVE)
    scale_range: float = setting(1., 'in-memory data only: zoom each image by a log-uniform factor in [1/R, R] '
                                     '(1: off)', Range(1))
    hflip: float = setting(0.5, 'probability of a horizontal flip', _PROBABILITY)
    auto_augment: Optional[str] = setting(None, "ImageFolder only: timm policy, e.g. 'rand-m9-mstd0.5-inc1'")
    re_prob: float = setting(0., 'ImageFolder only: random erasing probability', _PROBABILITY)
    color_jitter: float = setting(0.4, 'ImageFolder only: colour jitter strength (timm ignores it with '
                                       'auto_augment)', NON_NEGATIVE)
    crop_pct: float = setting(0.875, 'ImageFolder only: centre-crop fraction for evaluation',
                              Range(0, 1, low_open=True))
    interpolation: str = setting('bicubic', f'ImageFolder only: resize interpolation ({", ".join(_INTERPOLATIONS)})')
    workers: int = setting(4, 'ImageFolder only: data loader processes', NON_NEGATIVE)
    # optimisation
    epochs: int = setting(10, 'training epochs', COUNT)
    batch_size: int = setting(128, 'images per step and process', COUNT)
    eval_batch_size: Optional[int] = setting(None, 'images per evaluation batch and process, unset: 2 x '
                                                   'batch_size', COUNT)
    opt: str = setting('adamw', "timm optimizer name (create_optimizer_v2), e.g. 'adamw', 'sgd', 'lamb'")
    lr: float = setting(1e-3, 'peak learning rate', NON_NEGATIVE)
    weight_decay: float = setting(0.05, 'weight decay', NON_NEGATIVE)
    momentum: float = setting(0.9, 'momentum (SGD-like optimizers)', _PROBABILITY)
    layer_decay: Optional[float] = setting(None, 'layer-wise learning-rate decay (timm), unset: off', POSITIVE)
    clip_grad: Optional[float] = setting(None, 'clip the gradient norm to this value, unset: off', POSITIVE)
    sched: str = setting('cosine', "timm scheduler stepped every update, e.g. 'cosine', 'step', 'poly'")
    warmup_epochs: int = setting(1, 'linear warm-up epochs', NON_NEGATIVE)
    warmup_lr: float = setting(1e-5, 'learning rate at the start of warm-up', NON_NEGATIVE)
    min_lr: float = setting(1e-5, 'learning rate at the end of the schedule', NON_NEGATIVE)
    smoothing: float = setting(0.1, 'label smoothing', _FRACTION)
    mixup: float = setting(0., 'Mixup alpha (0: off)', NON_NEGATIVE)
    cutmix: float = setting(0., 'CutMix alpha (0: off)', NON_NEGATIVE)
    mixup_prob: float = setting(1., 'probability of mixing a batch', _PROBABILITY)
    mixup_switch_prob: float = setting(0.5, 'probability of CutMix instead of Mixup when both are on', _PROBABILITY)
    model_ema: bool = setting(False, 'keep and score an exponential moving average of the weights')
    model_ema_decay: float = setting(0.9998, 'EMA decay per update', _PROBABILITY)
    amp: str = setting('none', "'none', 'bf16' or 'fp16' (fp16: CUDA only)")
    compile: Optional[str] = setting(None, "torch.compile backend for the training steps, e.g. 'inductor' (each "
                                           'tokenizer setting compiles once), unset: eager')
    # progressive re-tokenization
    retokenization: str = setting('full', f"a schedule ({', '.join(SCHEDULES)}) or "
                                          "'fraction:stride:dilation,...'")
    seed: int = setting(0, 'random seed', SEED_RANGE)
    device: str = setting('auto', "'auto' (cuda:LOCAL_RANK when CUDA is available, else cpu), 'cpu', 'cuda' "
                                  "(cuda:LOCAL_RANK) or 'cuda:N'")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.device != 'auto':
            try:
                parse_device(self.device)
            except ValueError as e:
                raise ValueError(f"{e} (or 'auto', the default)") from None
        check_data_root(self.data, self.data_root)
        if self.genotype is not None and Genotype.parse(self.genotype).is_seed:
            raise ValueError(f'genotype {self.genotype!r} is a seed genotype; training needs the scaled form '
                             f"'K,S,E,L|K,S,E,L|K,S,E,L|K,S,E,L|H,C' (each stage's depth L and the width C)")
        if self.amp not in ('none', *AMP_DTYPES):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.sched in UNSUPPORTED_SCHEDULERS:
            raise ValueError(f'sched {self.sched!r} is not supported: the trainer steps the schedule on every update '
                             f"(use one of timm's schedulers that do, e.g. cosine, tanh, step, multistep, poly)")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"mixup/cutmix need an even batch_size (timm's Mixup mixes pairs), got "
                             f'{self.batch_size}')
        try:
            str_to_interp_mode(self.interpolation)
        except KeyError:
            raise ValueError(f'interpolation must be one of timm\'s modes {sorted(_INTERPOLATIONS)}, got '
                             f'{self.interpolation!r}') from None
        if self.auto_augment:
            try:
                create_transform(32, is_training=True, auto_augment=self.auto_augment)
            except (AssertionError, KeyError, ValueError) as e:
                raise ValueError(f"auto_augment {self.auto_augment!r} is not a timm policy (e.g. "
                                 f"'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2', 'original'): {e}") from None
        parse_schedule(self.retokenization)
        if self.compile is not None:
            check_compile_backend(self.compile)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _recipe_yaml_loader() -> type:
    """PyYAML's safe loader, reading ``1e-3`` as a float, as YAML 1.2 and JSON do (YAML 1.1 wants ``1.0e-3``)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.add_implicit_resolver(
        'tag:yaml.org,2002:float', re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
        list('-+0123456789'))
    return RecipeLoader


def load_config(path: Optional[PathLike] = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON (or YAML) recipe, then ``overrides``; unknown keys are an error."""
    values: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'recipe file not found: {path}')
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError as e:
            raise ValueError(f'{path}: a recipe is UTF-8 text ({e})') from None
        if path.suffix in ('.yaml', '.yml'):
            import yaml
            try:
                values = yaml.load(text, Loader=_recipe_yaml_loader()) or {}
            except yaml.YAMLError as e:
                raise ValueError(f'{path}: not a valid YAML recipe ({" ".join(str(e).split())})') from None
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}: not a valid JSON recipe ({e})') from None
        if not isinstance(values, dict):
            raise ValueError(f'{path}: a recipe is a mapping of TrainConfig fields, got {type(values).__name__}')
        values = {k: v for k, v in values.items() if not k.startswith('_')}  # '_comment' etc.
    model = values.get('model', TrainConfig.model)  # the recipe's, or the default
    if 'model' in overrides and 'genotype' not in overrides and overrides['model'] != model:
        values.pop('genotype', None)  # another model replaces the recipe's architecture, genotype included
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f' in {path}' if path else ''
        raise ValueError(f'unknown training setting(s) {unknown}{where}; known: {sorted(known)}')
    return TrainConfig(**values)


# --------------------------------------------------------------------------- distributed
def _all_reduce_sum(values: Sequence[float], env: DistEnv, device: torch.device) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    """Loaders and the batch preparation of one data source."""

    train_loader: DataLoader
    eval_loader: DataLoader
    num_classes: int
    input_size: Tuple[int, int, int]
    prepare: Callable[[torch.Tensor, bool], torch.Tensor]  # (batch as loaded, training) -> normalised input


def synthetic_images(n: int, num_classes: int, img_size: int, seed: int,
                     in_chans: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images (n, in_chans, img_size, img_size): a smooth random pattern per class plus noise,
    drawn from ``seed``; labels cycle through the classes."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=(img_size, img_size), mode='bilinear', align_corners=False)
    labels = torch.arange(n) % num_classes
    images = patterns[labels] + 0.25 * torch.randn(n, in_chans, img_size, img_size, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _subset(images: torch.Tensor, labels: torch.Tensor, n: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    return (images, labels) if n is None else (images[:n], labels[:n])


def _fashion_mnist(split: str, cfg: TrainConfig, n: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_fashion_mnist(split, cfg.data_root or DEFAULT_ROOT)
    images, labels = _subset(images.unsqueeze(1), labels, n)
    if cfg.img_size != images.shape[-1]:
        size = (cfg.img_size, cfg.img_size)
        images = F.interpolate(images.float(), size=size, mode='bilinear', antialias=True, align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images, labels


def augment_batch(x: torch.Tensor, padding: int, hflip: float, scale_range: float = 1.) -> torch.Tensor:
    """Per-image random zoom (a factor log-uniform in [1/scale_range, scale_range], zero fill, about the
    centre), random crop of the zero-padded batch (B, C, H, W) and horizontal flip, drawn from torch's RNG."""
    B, _, H, W = x.shape
    if scale_range > 1:
        zoom = torch.exp((2 * torch.rand(B, device=x.device) - 1) * math.log(scale_range))
        theta = torch.zeros(B, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    if padding > 0:
        x = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (B, 1, 1), device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (B, 1, 1), device=x.device)
        rows = (dy + torch.arange(H, device=x.device).view(1, H, 1)).expand(B, H, W)
        cols = (dx + torch.arange(W, device=x.device).view(1, 1, W)).expand(B, H, W)
        batch = torch.arange(B, device=x.device).view(B, 1, 1).expand(B, H, W)
        x = x[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts channels last
    if hflip > 0:
        flip = (torch.rand(B, device=x.device) < hflip).view(B, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    return x


def _tensor_data(cfg: TrainConfig, env: DistEnv, device: torch.device) -> DataBundle:
    if cfg.data == FASHION_MNIST:
        train = _fashion_mnist('train', cfg, cfg.train_subset)
        evaluation = _fashion_mnist('test', cfg, cfg.eval_subset)
        num_classes, mean, std = 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    else:
        images, labels = synthetic_images(cfg.synthetic_train + cfg.synthetic_eval, cfg.synthetic_classes,
                                          cfg.img_size, cfg.seed)
        n = cfg.synthetic_train
        train = _subset(images[:n], labels[:n], cfg.train_subset)
        evaluation = _subset(images[n:], labels[n:], cfg.eval_subset)
        num_classes, mean, std = cfg.synthetic_classes, SYNTHETIC_MEAN, SYNTHETIC_STD
    if len(train[0]) < cfg.batch_size * env.world_size:
        raise ValueError(f'{len(train[0])} training images are fewer than one batch of {cfg.batch_size} x '
                         f'{env.world_size} processes')
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def prepare(x: torch.Tensor, training: bool) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float().div_(255)
        if training:
            x = augment_batch(x, cfg.crop_padding, cfg.hflip, cfg.scale_range)
        return (x - mean_t) / std_t

    train_set, eval_set = TensorDataset(*train), TensorDataset(*evaluation)
    train_sampler = DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=cfg.seed,
                                       drop_last=True)
    eval_indices = list(range(env.rank, len(eval_set), env.world_size))  # every image once over all processes
    return DataBundle(
        train_loader=DataLoader(train_set, cfg.batch_size, sampler=train_sampler, drop_last=True),
        eval_loader=DataLoader(Subset(eval_set, eval_indices), cfg.eval_batch_size or 2 * cfg.batch_size),
        num_classes=num_classes, input_size=(1, cfg.img_size, cfg.img_size), prepare=prepare)


def _keep_samples(dataset: Any, keep: slice) -> None:
    """Keep ``samples[keep]`` of a timm ImageFolder dataset (its reader's list of (path, target))."""
    dataset.reader.samples = dataset.reader.samples[keep]


def _image_folder_data(cfg: TrainConfig, env: DistEnv, device: torch.device) -> DataBundle:
    root = Path(cfg.data)
    for split in ('train', 'val'):
        if not (root / split).is_dir():
            raise FileNotFoundError(f'data {cfg.data!r} is neither {FASHION_MNIST!r}, {SYNTHETIC!r} nor an ImageFolder '
                                    f'root: {root / split} is missing (ImageNet layout: root/train/<class>/<image>, '
                                    f'root/val/<class>/<image>)')
    train_set = create_dataset('', root=str(root), split='train', is_training=True)
    classes = dict(train_set.reader.class_to_idx)
    unknown = sorted(p.name for p in (root / 'val').iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise ValueError(f'{root / "val"} has classes that {root / "train"} lacks: {unknown[:8]}')
    eval_set = create_dataset('', root=str(root), split='val', class_map=classes)  # the training split's labels
    _keep_samples(train_set, slice(cfg.train_subset))
    # The first eval_subset images, each scored once over all processes (timm's distributed eval sampler pads).
    _keep_samples(eval_set, slice(cfg.eval_subset))
    _keep_samples(eval_set, slice(env.rank, None, env.world_size))
    if len(train_set) < cfg.batch_size * env.world_size:
        raise ValueError(f'{len(train_set)} training images are fewer than one batch of {cfg.batch_size} x '
                         f'{env.world_size} processes')
    input_size = (3, cfg.img_size, cfg.img_size)
    prefetch = device.type == 'cuda'
    # Workers are started anew every epoch (not persistent), so that their random seeds come from the main
    # process's RNG, which the checkpoint restores: a resumed run augments exactly as an uninterrupted one.
    common = dict(input_size=input_size, interpolation=cfg.interpolation, mean=IMAGENET_DEFAULT_MEAN,
                  std=IMAGENET_DEFAULT_STD, num_workers=cfg.workers, use_prefetcher=prefetch, device=device,
                  pin_memory=prefetch, persistent_workers=False)
    train_loader = create_loader(
        train_set, batch_size=cfg.batch_size, is_training=True, re_prob=cfg.re_prob, hflip=cfg.hflip,
        color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment, distributed=env.distributed, **common)
    eval_loader = create_loader(eval_set, batch_size=cfg.eval_batch_size or 2 * cfg.batch_size, is_training=False,
                                crop_pct=cfg.crop_pct, distributed=False, **common)
    return DataBundle(train_loader=train_loader, eval_loader=eval_loader, num_classes=len(classes),
                      input_size=input_size, prepare=lambda x, training: x.to(device, non_blocking=True))


def build_data(cfg: TrainConfig, env: DistEnv, device: torch.device) -> DataBundle:
    if cfg.data in (FASHION_MNIST, SYNTHETIC):
        return _tensor_data(cfg, env, device)
    return _image_folder_data(cfg, env, device)


# --------------------------------------------------------------------------- model and checkpoints
def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> AsViT:
    if cfg.model == GENERIC_MODEL and cfg.genotype is None:
        raise ValueError(f"model {GENERIC_MODEL!r} needs a genotype (--genotype 'K,S,E,L|...|H,C'); or name a "
                         f'registered variant with --model (see `asvit list`)')
    if cfg.model != GENERIC_MODEL and cfg.genotype is not None:
        raise ValueError(f'model {cfg.model!r} has its own genotype; genotype {cfg.genotype!r} applies to model '
                         f'{GENERIC_MODEL!r} only: give one of them')
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=cfg.drop_path)
    if cfg.genotype is not None:
        kwargs['genotype'] = cfg.genotype
    register_model_source(cfg.model)
    model = timm.create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)
    if not isinstance(model, AsViT):
        raise ValueError(f'{cfg.model!r} is not an As-ViT model; progressive re-tokenization needs one')
    return model


def _rng_state() -> Dict[str, Any]:
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _gather_rng_states(env: DistEnv) -> List[Dict[str, Any]]:
    """The RNG states of every process (in rank order), for an exact resume under torchrun too."""
    state = _rng_state()
    if not env.distributed:
        return [state]
    states: List[Any] = [None] * env.world_size
    dist.all_gather_object(states, state)
    return states


def _write_metrics(path: Path, metrics: List[Dict[str, Any]]) -> None:
    write_text(path, ''.join(json.dumps(m) + '\n' for m in metrics))


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl (one JSON object per line)."""
    return read_json_lines(path)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, env: DistEnv, device: torch.device,
             autocast: Callable[[], ContextManager[Any]]) -> Dict[str, float]:
    """Loss, top-1 and top-5 (%) and the number of images scored, over the whole evaluation set (summed over
    processes), at the model's current tokenizer setting. The model's modules keep their train/eval modes."""
    top_k = (1, min(5, data.num_classes))
    loss_sum = correct1 = correct5 = count = 0.
    with kept_modes(model):
        model.eval()
        for x, y in data.eval_loader:
            x, y = data.prepare(x, False), y.to(device)
            with autocast():
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction='sum').item()
            acc1, acc5 = accuracy(logits, y, topk=top_k)  # float32 percentages: back to whole counts
            correct1 += round(acc1.item() * len(y) / 100)
            correct5 += round(acc5.item() * len(y) / 100)
            count += len(y)
    loss_sum, correct1, correct5, count = _all_reduce_sum([loss_sum, correct1, correct5, count], env, device)
    return {'loss': loss_sum / count, 'top1': 100 * correct1 / count, 'top5': 100 * correct5 / count,
            'images': int(count)}


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """Outcome of :func:`train` (also on disk: metrics.jsonl, last.pth.tar, config.json)."""

    output: Path
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    model: Optional[AsViT] = None
    is_main: bool = True  # process 0 (under torchrun, every process returns a result)

    @property
    def final(self) -> Dict[str, Any]:
        return self.metrics[-1]


def _loss_fn(cfg: TrainConfig, mixup: Optional[Mixup]) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()  # the smoothing is in Mixup's soft targets
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def _fused(opt: str) -> Dict[str, Any]:
    """``fused=True`` where the optimizer class has a fused kernel (torch's Adam, AdamW and SGD): one kernel per
    step instead of a loop over the parameters (AdamW on the tiny recipe's 91 tensors: 10.5 ms -> 2.7 ms per step
    on the 2-core CPU). Its rounding differs from the loop's in the last bits. Names timm does not know are left to
    ``create_optimizer_v2``, whose error names them."""
    try:
        cls = get_optimizer_class(opt.lower().split('_')[-1])  # as create_optimizer_v2 reads 'lookahead_adamw'
    except ValueError:
        return {}
    return {'fused': True} if 'fused' in inspect.signature(cls).parameters else {}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run: the parts built from ``cfg`` (data, model, optimizer, scheduler, EMA, AMP, Mixup,
    re-tokenization schedule and its MAC account) and the state that a checkpoint carries."""

    def __init__(self, cfg: TrainConfig, output: PathLike, progress: bool = True):
        self.cfg = cfg
        self.env, self.device = init_distributed(cfg.device)
        self.output = check_folder(output, 'training run folder')
        self.progress = progress and self.env.is_main
        _seed_everything(offset_seed(cfg.seed, self.env.rank))

        self.data = build_data(cfg, self.env, self.device)
        self.model = build_model(cfg, self.data.num_classes, self.data.input_size[0]).to(self.device)
        self.schedule = parse_schedule(cfg.retokenization)
        self.cost = schedule_cost(self.model, self.schedule, self.data.input_size)
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum, layer_decay=cfg.layer_decay, **_fused(cfg.opt))
        self.steps_per_epoch = len(self.data.train_loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.schedule.check_steps(self.total_steps)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=self.steps_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        if cfg.amp == 'fp16' and self.device.type != 'cuda':
            raise ValueError('amp=fp16 needs a CUDA device; use bf16 or none on CPU')
        self.amp_dtype = AMP_DTYPES.get(cfg.amp)
        self.scaler = NativeScaler(device=self.device.type) if cfg.amp == 'fp16' else None
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                               num_classes=self.data.num_classes)
        self.loss_fn = _loss_fn(cfg, self.mixup)
        self.step_model: nn.Module = self.model  # what the training steps call: wrapped in DDP, compiled where set
        if self.env.distributed:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.step_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if cfg.compile is not None:  # around DDP, as in timm's train.py; evaluation and checkpoints use self.model
            self.step_model = torch.compile(self.step_model, backend=cfg.compile)
        # carried by the checkpoint
        self.start_epoch, self.train_macs, self.wall, self.cpu = 0, 0, 0., 0.
        self.metrics: List[Dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.output / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.output / METRICS

    def autocast(self) -> ContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def resume(self) -> None:
        """Load last.pth.tar: weights, optimizer, scheduler, EMA, scaler, counters and this process's RNG states."""
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(f'nothing to resume: {self.checkpoint_path} does not exist')
        state = load_torch_checkpoint(self.checkpoint_path)
        if not isinstance(state, dict) or not set(RESUME_KEYS) <= state.keys():
            found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
            raise ValueError(f'{self.checkpoint_path}: not a checkpoint written by asvit train (it needs '
                             f'{list(RESUME_KEYS)}; found {found}); resume needs the run\'s own last.pth.tar')
        # a setting it lacks counts as its default; the schedule counts by its phases, not by its name (a shipped
        # schedule such as 'short' may mean other phases in another version)
        changed = changed_settings(state['config'], self.cfg, keep=('retokenization',))
        saved_name = state['config'].get('retokenization', TrainConfig.retokenization)
        saved_phases = state.get('schedule') or str(parse_schedule(saved_name))
        if saved_phases != str(self.schedule):
            changed.append(f'retokenization: saved {saved_name!r} ({saved_phases}), given {self.cfg.retokenization!r} '
                           f'({self.schedule})')
        if changed:
            raise ValueError(f'{self.checkpoint_path} was written with other settings ({"; ".join(changed)}); '
                             f'resume with the same config')
        if len(state['rng']) != self.env.world_size:
            raise ValueError(f'{self.checkpoint_path} was written by {len(state["rng"])} processes; '
                             f'resume with as many')
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.ema is not None:
            self.ema.module.load_state_dict(state['ema'])
        if self.scaler is not None:
            self.scaler.load_state_dict(state['scaler'])
        self.start_epoch, self.train_macs = state['epoch'] + 1, state['train_macs']
        self.wall, self.cpu = state['wall_time'], state['cpu_time']
        self.scheduler.step_update(self.start_epoch * self.steps_per_epoch)
        if self.metrics_path.is_file():
            self.metrics = [m for m in read_metrics(self.metrics_path) if m['epoch'] < self.start_epoch]
        _set_rng_state(state['rng'][self.env.rank])

    def save(self, epoch: int) -> None:
        """Write metrics.jsonl and last.pth.tar (process 0); every process contributes its RNG states."""
        rng = _gather_rng_states(self.env)
        if not self.env.is_main:
            return
        checkpoint = {
            'epoch': epoch, 'config': self.cfg.to_dict(), 'genotype': str(self.model.genotype),
            'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'ema': self.ema.module.state_dict() if self.ema is not None else None,
            'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            'train_macs': self.train_macs, 'wall_time': self.wall, 'cpu_time': self.cpu, 'rng': rng,
            'schedule': str(self.schedule),
        }
        # metrics first: a kill between the two writes leaves a record that resume drops (it keeps the epochs
        # before the checkpoint's), never a checkpoint whose epoch has no record
        _write_metrics(self.metrics_path, self.metrics)
        save_torch(self.checkpoint_path, checkpoint)

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch; each step runs at its phase's tokenizer setting. Returns the loss and the settings used (each
        change of setting, in order)."""
        sampler = getattr(self.data.train_loader, 'sampler', None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self.step_model.train()
        embed = self.model.patch_embed
        loss_sum, seen, settings_used = 0., 0, []
        bar = tqdm(self.data.train_loader, total=self.steps_per_epoch, desc=f'epoch {epoch + 1}/{self.cfg.epochs}',
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            step = epoch * self.steps_per_epoch + i
            phase = self.schedule.phase_at(step, self.total_steps)
            if (phase.stride, phase.dilation) != (embed.stride, embed.dilation):
                self.model.set_tokenizer(phase.stride, phase.dilation)
            setting = format_tokenizer(phase.stride, phase.dilation)
            if not settings_used or settings_used[-1] != setting:  # the last is the setting the epoch ends on
                settings_used.append(setting)
            x, y = self.data.prepare(x, True), y.to(self.device)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            with self.autocast():
                loss = self.loss_fn(self.step_model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler(loss, self.optimizer, clip_grad=self.cfg.clip_grad, parameters=self.model.parameters())
            else:
                loss.backward()
                if self.cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
                self.optimizer.step()
            self.scheduler.step_update(step + 1)
            if self.ema is not None:  # step: updates done, as timm's train.py counts them (the first one copies)
                self.ema.update(self.model, step=step + 1)
            loss_value = loss.item()
            loss_sum += loss_value * len(x)
            seen += len(x)
            self.train_macs += self.cost.macs_of(phase.stride, phase.dilation) * len(x) * self.env.world_size
            bar.set_postfix(loss=f'{loss_value:.4f}', tokens=setting)
        bar.close()
        self.model.set_tokenizer(*FULL_TOKENS)
        loss_sum, seen = _all_reduce_sum([loss_sum, seen], self.env, self.device)
        return {'train_loss': loss_sum / seen, 'lr': self.optimizer.param_groups[0]['lr'], 'tokenizer': settings_used}

    def run(self, stop_after: Optional[int] = None) -> List[Dict[str, Any]]:
        """Train from ``start_epoch`` to the end (or until ``stop_after`` epochs are done); evaluate, log and
        checkpoint after every epoch."""
        if self.env.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            config_text = json.dumps(self.cfg.to_dict(), indent=2) + '\n'
            write_text(self.output / RUN_CONFIG, config_text)
            _write_metrics(self.metrics_path, self.metrics)
            plot_schedule(self.cost, self.output / 'schedule.png')
            if self.progress:
                tqdm.write(f'{param_count(self.model) / 1e6:.2f}M params; re-tokenization {self.schedule}\n'
                           f'{self.cost.table()}')
        end_epoch = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, stop_after)
        for epoch in range(self.start_epoch, end_epoch):
            t0, c0 = time.perf_counter(), time.process_time()
            record: Dict[str, Any] = {'epoch': epoch, **self.train_epoch(epoch)}
            epoch_time = time.perf_counter() - t0
            self.wall += epoch_time
            self.cpu += time.process_time() - c0
            images = (epoch + 1) * self.steps_per_epoch * self.cfg.batch_size * self.env.world_size
            record.update(train_macs=self.train_macs, train_macs_full=self.cost.full_macs * images)
            record.update({f'eval_{k}': v for k, v in self.evaluate(self.model).items()})
            coarse = parse_tokenizer(record['tokenizer'][-1])
            if coarse != FULL_TOKENS:  # the epoch ended on coarse tokens: score that grid too
                record['eval_phase_tokenizer'] = record['tokenizer'][-1]
                record.update({f'eval_phase_{k}': v for k, v in self.evaluate(self.model, coarse).items()})
            if self.ema is not None:
                record.update({f'ema_{k}': v for k, v in self.evaluate(self.ema.module).items()})
            record.update(epoch_time=epoch_time, train_time=self.wall, train_cpu_time=self.cpu)
            self.metrics.append(record)
            self.save(epoch)
            if self.progress:
                phase = (f' (at {record["eval_phase_tokenizer"]}: {record["eval_phase_top1"]:.2f})'
                         if 'eval_phase_top1' in record else '')
                tqdm.write(f'epoch {epoch + 1}/{self.cfg.epochs}  loss {record["train_loss"]:.4f}  '
                           f'top1 {record["eval_top1"]:.2f}{phase}  top5 {record["eval_top5"]:.2f}  '
                           f'tokens {",".join(record["tokenizer"])}  {epoch_time:.1f}s')
        return self.metrics

    def evaluate(self, model: nn.Module, tokenizer: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
        """Scores of ``model`` at full tokens, or at the tokenizer setting (stride, dilation)."""
        if tokenizer is None:
            return evaluate(model, self.data, self.env, self.device, self.autocast)
        # An extra evaluation leaves the training's random stream alone (each DataLoader pass draws a seed).
        model.set_tokenizer(*tokenizer)
        try:
            with torch.random.fork_rng(devices=[]):
                return evaluate(model, self.data, self.env, self.device, self.autocast)
        finally:
            model.set_tokenizer(*FULL_TOKENS)


def train(cfg: TrainConfig, output: PathLike, resume: bool = False, progress: bool = True,
          stop_after: Optional[int] = None) -> TrainResult:
    """Train the model of ``cfg``, writing metrics.jsonl and last.pth.tar to ``output`` every epoch.

    ``resume=True`` continues from ``output``/last.pth.tar, which must have been written with the same
    ``cfg`` and number of processes; the result is the one of an uninterrupted run. ``stop_after=N`` stops
    once N epochs are done (a time-sliced job: continue it with ``resume=True``). A folder that holds a run's
    checkpoint is not trained into afresh: pass ``resume=True`` or another folder.
    """
    if stop_after is not None and not is_count(stop_after):
        raise ValueError(f'stop_after must be a number of epochs >= 1, got {stop_after!r}')
    if not resume and (check_folder(output, 'training run folder') / CHECKPOINT).is_file():
        raise ValueError(f'{output} already holds a training run ({CHECKPOINT}); pass --resume to continue it or '
                         f'choose another --output')
    with process_group(cfg.device):
        trainer = Trainer(cfg, output, progress=progress)
        if resume:
            trainer.resume()
        metrics = trainer.run(stop_after)
    return TrainResult(output=trainer.output, metrics=metrics, model=trainer.model, is_main=trainer.env.is_main)
