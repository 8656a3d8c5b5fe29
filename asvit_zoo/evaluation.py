"""Evaluate pretrained As-ViT weights on a labelled test set (``asvit eval``).

A model is named the ways users meet the zoo: a registered variant with its tag (``asvit_tiny.fmnist``), an
``hf-hub:ORG/NAME`` repo, a ``local-dir:PATH`` folder (all three through ``timm.create_model(...,
pretrained=True)``, with the registry's integrity checks), or a checkpoint file: a trainer ``last.pth.tar`` or
an exported ``model.safetensors`` beside its ``config.json``. The test images are prepared exactly as the
trainer prepares its evaluation images (:func:`asvit_zoo.train.build_data`), at the model's input size.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import timm
import torch
from timm.models import split_model_name_tag
from torch import nn

from .asvit import AsViT, register_model_source, registered_card
from .devices import parse_device, resolve_device
from .distributed import DistEnv
from .hub import CONFIG_FILE, HF_HUB_PREFIX, LOCAL_DIR_PREFIX, WEIGHTS_FILE, checkpoint_model
from .retokenization import FULL_TOKENS, format_tokenizer, parse_tokenizer
from .train import FASHION_MNIST, TrainConfig, build_data, check_data_root, evaluate
from .validation import check_count

__all__ = ['load_pretrained', 'check_options', 'evaluate_pretrained']

WEIGHTS_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin', '.tar')  # a name ending so, not a variant's, is a file

PathLike = Union[str, os.PathLike]


def load_pretrained(model: PathLike, ema: bool = False) -> AsViT:
    """The pretrained As-ViT named by ``model`` (see the module docstring), in eval mode on the CPU.

    ``ema=True`` takes the EMA weights of a trainer checkpoint. An ``hf-hub:`` repo that is neither cached nor
    reachable raises :class:`~asvit_zoo.hub.HubUnavailableError` before timm tries the network.
    """
    model = os.fspath(model)
    path = Path(model)
    if path.is_file():
        if path.suffix == '.safetensors':
            if not (path.parent / CONFIG_FILE).is_file():
                raise FileNotFoundError(f'{path}: a safetensors file is evaluated with the config.json of its '
                                        f'folder (an `asvit export` folder), and {path.parent / CONFIG_FILE} '
                                        f'is missing')
            if path.name != WEIGHTS_FILE:
                raise ValueError(f'{path}: a safetensors file is evaluated through its folder, whose weights are '
                                 f'{path.parent / WEIGHTS_FILE}; name that file (or {LOCAL_DIR_PREFIX}'
                                 f'{path.parent}), or export these weights with `asvit export`')
            model = LOCAL_DIR_PREFIX + str(path.parent)
        else:
            return checkpoint_model(path, ema=ema).eval()
    elif path.suffix in WEIGHTS_SUFFIXES and not timm.is_model(split_model_name_tag(model)[0]) and \
            not model.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        raise FileNotFoundError(f'weights file not found: {model}')
    elif ema:
        raise ValueError(f'--ema needs a trainer checkpoint file, got {model!r}')
    register_model_source(model)  # a clear offline/no-cache error before timm's own fetch
    architecture = split_model_name_tag(model)[0]
    if not model.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)) and registered_card(architecture) is None:
        raise ValueError(f'{model!r} is not a registered As-ViT variant (see `asvit list`), so it has no As-ViT '
                         f'weights to load; give a variant, hf-hub:ORG/NAME, local-dir:PATH or a checkpoint file')
    return timm.create_model(model, pretrained=True).eval()


def _check_fits(model: nn.Module, name: str, data: str, num_classes: int, mean: Any, std: Any) -> None:
    cfg = model.pretrained_cfg
    if model.num_classes != num_classes:
        raise ValueError(f'{name} has {model.num_classes} classes and {data} has {num_classes}: evaluate a model '
                         f'trained on {data}')
    if [round(v, 4) for v in cfg['mean']] != [round(v, 4) for v in mean] or \
            [round(v, 4) for v in cfg['std']] != [round(v, 4) for v in std]:
        raise ValueError(f"{name} expects inputs normalised with mean {list(cfg['mean'])} and std "
                         f"{list(cfg['std'])}; {data} is prepared with mean {list(mean)} and std {list(std)}")


@torch.no_grad()
def check_options(batch_size: Any, subset: Any, device: Any, tokenizer: Any = FULL_TOKENS, data: Any = FASHION_MNIST,
                  data_root: Any = None) -> None:
    """Raise ``ValueError`` unless these are valid :func:`evaluate_pretrained` options (the device need not be
    present here, nor the data: it is read when the evaluation runs)."""
    for name, value in (('batch_size', batch_size), ('subset', subset)):
        if value is not None:
            check_count(name, value)
    parse_device(device)
    parse_tokenizer(tokenizer)
    if not isinstance(data, str) or not data:
        raise ValueError(f"data must be 'fashion-mnist', 'synthetic' or an ImageFolder root, got {data!r}")
    if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
        raise ValueError(f'data_root must be a folder path, got {data_root!r}')
    check_data_root(data, data_root)


def evaluate_pretrained(model: str, data: str = FASHION_MNIST, data_root: Optional[PathLike] = None,
                        batch_size: int = 256, subset: Optional[int] = None, device: str = 'cpu',
                        ema: bool = False, tokenizer: Union[str, Sequence[int]] = FULL_TOKENS) -> Dict[str, Any]:
    """Top-1 and top-5 accuracy (%) and mean loss of ``model`` on the test split of ``data``.

    ``data``: ``fashion-mnist`` (its test set, from ``data_root`` or the Debian package) or an ImageFolder root
    (its ``val/`` split). ``subset``: the first N test images only. ``tokenizer``: the stage-1 tokenizer's
    ``stride[:dilation]`` to score at (default: full tokens; e.g. ``8:2``, a coarse re-tokenization grid).
    """
    from .train import FASHION_MNIST_MEAN, FASHION_MNIST_STD

    check_options(batch_size, subset, device, tokenizer, data, data_root)
    stride, dilation = parse_tokenizer(tokenizer)
    start = time.perf_counter()
    net = load_pretrained(model, ema=ema)
    net.set_tokenizer(stride, dilation)
    in_chans, height, width = net.pretrained_cfg['input_size']
    if height != width:
        raise ValueError(f'{model}: evaluation uses square images, the model expects {height}x{width}')
    # The trainer's data builder; it also reads a training split (for ImageFolder data, its class map), of which
    # one image is kept.
    cfg = TrainConfig(data=data, data_root=None if data_root is None else str(data_root), img_size=int(height),
                      batch_size=1, eval_batch_size=batch_size, eval_subset=subset, train_subset=1,
                      crop_pct=net.pretrained_cfg.get('crop_pct', 1.0),
                      interpolation=net.pretrained_cfg.get('interpolation', 'bicubic'), workers=0, device=device)
    dev = resolve_device(device)
    env = DistEnv()
    bundle = build_data(cfg, env, dev)
    if bundle.input_size[0] != in_chans:
        raise ValueError(f'{model} takes {in_chans}-channel images; {data} has {bundle.input_size[0]} channels')
    if data == FASHION_MNIST:
        _check_fits(net, model, data, bundle.num_classes, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    elif net.num_classes != bundle.num_classes:
        raise ValueError(f'{model} has {net.num_classes} classes and {data} has {bundle.num_classes}')
    net.to(dev)
    metrics = evaluate(net, bundle, env, dev, contextlib.nullcontext)
    return {'model': model, 'data': data, 'tokenizer': format_tokenizer(stride, dilation),
            'images': metrics['images'], 'top1': metrics['top1'], 'top5': metrics['top5'],
            'loss': metrics['loss'], 'seconds': time.perf_counter() - start}
