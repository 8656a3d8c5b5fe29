"""As-ViT as an mmdetection backbone: a thin adapter over the timm model of :mod:`asvit_zoo`.

The adapter creates the library model, prunes what detection does not use (stages after the last
output, the final norm, the classifier head) and returns the stages' NCHW maps at strides 4/8/16/32.
The library model pads internally, so padded, non-square mmdet batches of any size pass unchanged.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import BaseModule
from timm.models import adapt_input_conv

from mmdet.registry import MODELS

from asvit_zoo import checkpoint_filter_fn
from asvit_zoo.asvit import unwrap_state_dict
from asvit_zoo.genotype import NUM_STAGES, Genotype
from asvit_zoo.hub import allowed_globals, state_dict_mismatch
from asvit_zoo.weights import load_weights

__all__ = ['AsViT', 'create_asvit', 'mmengine_checkpoint_globals']

# of init_cfg, as mmengine's PretrainedInit; map_location is accepted and has no effect: the weights are read on
# the CPU and copied to wherever the backbone is
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location')


def mmengine_checkpoint_globals() -> List[Any]:
    """What ``torch.load(weights_only=True)`` must allow to read an mmengine training checkpoint: besides
    tensors, its message hub holds ``HistoryBuffer`` objects of numpy arrays and scalars."""
    core = np._core if hasattr(np, '_core') else np.core
    numpy_dtypes = [type(np.dtype(code)) for code in np.typecodes['All'] if code != 'O']
    return [HistoryBuffer, np.ndarray, np.dtype, *numpy_dtypes, core.multiarray.scalar, core.multiarray._reconstruct,
            getattr]


def create_asvit(arch: str, **kwargs: Any) -> nn.Module:
    """The library model of ``arch``: a registered variant name, or a scaled genotype string K,S,E,L|...|H,C."""
    if '|' in arch:
        return timm.create_model('asvit', genotype=arch, **kwargs)
    if not timm.is_model(arch) or not arch.startswith('asvit_'):
        raise ValueError(f'AsViT arch must be a registered As-ViT variant ({", ".join(timm.list_models("asvit_*"))}) '
                         f'or a genotype string K,S,E,L|K,S,E,L|K,S,E,L|K,S,E,L|H,C, got {arch!r}')
    return timm.create_model(arch, **kwargs)


def _check_arguments(arch: Any, out_indices: Any, frozen_stages: Any, drop_path_rate: Any, with_cp: Any,
                     norm_eval: Any) -> None:
    """Types and ranges of the constructor's arguments (whether ``arch`` names a variant: :func:`create_asvit`;
    the range of ``drop_path_rate`` and ``window_img_size``: the model)."""
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(arch, str):
        raise ValueError(f'AsViT arch must be a string (a registered As-ViT variant or a genotype string), '
                         f'got {arch!r}')
    if '|' in arch and Genotype.parse(arch).is_seed:
        raise ValueError(f'AsViT arch must be a registered As-ViT variant or a scaled genotype string '
                         f'K,S,E,L|K,S,E,L|K,S,E,L|K,S,E,L|H,C, got the seed form {arch!r}: scale it first '
                         f'(asvit scale) or give its depths and widths')
    if '|' not in arch and '.' in arch:
        raise ValueError(f'AsViT arch must name a variant without a pretrained tag, got {arch!r}; the weights come '
                         f"from init_cfg: arch='{arch.split('.')[0]}', "
                         f"init_cfg=dict(type='Pretrained', checkpoint='{arch}')")
    if not isinstance(out_indices, (list, tuple)) or not out_indices or not all(map(is_int, out_indices)):
        raise ValueError(f'AsViT out_indices must be a non-empty tuple or list of stage indices (ints in '
                         f'[0, {NUM_STAGES})), got {out_indices!r}')
    if list(out_indices) != sorted(set(out_indices)) or not all(0 <= i < NUM_STAGES for i in out_indices):
        raise ValueError(f'AsViT out_indices must be increasing stage indices in [0, {NUM_STAGES}) (the maps come '
                         f'in stage order), got {out_indices}')
    if not is_int(frozen_stages) or not -1 <= frozen_stages <= NUM_STAGES:
        raise ValueError(f'AsViT frozen_stages must be an int in [-1, {NUM_STAGES}], got {frozen_stages!r}')
    if drop_path_rate is None:  # timm.create_model would drop it, and the model would take its own default
        raise ValueError('AsViT drop_path_rate must be a number in [0, 1), got None')
    for name, value in (('with_cp', with_cp), ('norm_eval', norm_eval)):
        if not isinstance(value, bool):
            raise ValueError(f'AsViT {name} must be True or False, got {value!r}')


def _check_init_cfg(init_cfg: Any) -> None:
    if init_cfg is None:
        return
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained' or 'checkpoint' not in init_cfg:
        raise ValueError(f"AsViT init_cfg must be None or dict(type='Pretrained', checkpoint=SOURCE), got {init_cfg!r}")
    unknown = sorted(set(init_cfg) - set(PRETRAINED_KEYS))
    if unknown:
        raise ValueError(f'AsViT init_cfg has unknown keys {unknown}; allowed: {list(PRETRAINED_KEYS)}')
    if not isinstance(init_cfg['checkpoint'], (str, os.PathLike)) or not str(init_cfg['checkpoint']):
        raise ValueError(f'AsViT init_cfg.checkpoint must be a weights source (a file, local-dir:PATH, '
                         f"hf-hub:ORG/NAME or a variant's tag), got {init_cfg['checkpoint']!r}")
    if not isinstance(init_cfg.get('prefix', ''), str):
        raise ValueError(f"AsViT init_cfg.prefix must be a string (e.g. 'backbone'), got {init_cfg['prefix']!r}")


def _under_prefix(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The tensors whose keys start with ``prefix``, keyed without it."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@MODELS.register_module()
class AsViT(BaseModule):
    """As-ViT backbone.

    Args:
        arch: A registered variant (``asvit_large``, without a tag: weights come from ``init_cfg``) or a scaled
            genotype string.
        out_indices: Stages whose outputs are returned (0-3: strides 4, 8, 16, 32).
        frozen_stages: -1 freezes nothing, 0 the stage-1 tokenizer, ``i >= 1`` also stages ``0..i-1``.
        drop_path_rate: Stochastic depth rate, linearly increasing over the blocks.
        with_cp: Gradient checkpointing of the blocks.
        norm_eval: Keep the normalization layers in eval mode while training (accepted as mmdet configs set
            it; the backbone has only LayerNorms, which have no running statistics, so it changes nothing).
        window_img_size: Image size at which the genotype's S x S attention split fixes each stage's window
            side (default 224, the paper's ImageNet pretraining size; weights pretrained at another size keep
            their windows with that size): detection inputs get more windows of that side, as in Swin. None
            keeps S x S windows at any input size (attention cost quadratic in the image area).
        init_cfg: ``dict(type='Pretrained', checkpoint=SOURCE[, prefix=PREFIX])``, SOURCE being a checkpoint
            file (safetensors or torch), ``local-dir:PATH``, ``hf-hub:ORG/NAME`` or a registered variant
            (with tag) that has weights; weights in the authors' layout are converted. With ``prefix``, only
            the tensors whose keys start with it are taken, without it (``prefix='backbone'`` or ``'backbone.'``
            for a checkpoint of a whole detector); ``map_location`` is accepted, as by mmengine's ``Pretrained``.
    """

    def __init__(self,
                 arch: str = 'asvit_large',
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 drop_path_rate: float = 0.1,
                 with_cp: bool = False,
                 norm_eval: bool = False,
                 window_img_size: Optional[int] = 224,
                 init_cfg: Optional[Dict[str, Any]] = None) -> None:
        _check_arguments(arch, out_indices, frozen_stages, drop_path_rate, with_cp, norm_eval)
        _check_init_cfg(init_cfg)
        super().__init__(init_cfg=init_cfg)
        self.arch = arch
        self.model = create_asvit(arch, num_classes=0, drop_path_rate=drop_path_rate,
                                  window_img_size=window_img_size)
        self.out_indices = tuple(self.model.prune_intermediate_layers(list(out_indices), prune_norm=True,
                                                                      prune_head=True))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.model.set_grad_checkpointing(with_cp)
        self._freeze_stages()

    @property
    def channels(self) -> Tuple[int, ...]:
        """Channels of the returned maps."""
        return tuple(self.model.feature_info[i]['num_chs'] for i in self.out_indices)

    def _freeze_stages(self) -> None:
        frozen = [self.model.patch_embed] if self.frozen_stages >= 0 else []
        frozen += list(self.model.stages[:max(self.frozen_stages, 0)])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'AsViT':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                    module.eval()
        return self

    def init_weights(self) -> None:
        """Load the ``Pretrained`` weights (missing and unexpected keys are logged; weights of another arch are
        refused); without init_cfg the model keeps the As-ViT initialisation it was built with."""
        if self.init_cfg is None:
            return
        source, prefix = self.init_cfg['checkpoint'], self.init_cfg.get('prefix')
        with allowed_globals(mmengine_checkpoint_globals()):  # whole-detector checkpoints
            state_dict = unwrap_state_dict(load_weights(source))
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'  # as mmengine's PretrainedInit reads it
            state_dict = _under_prefix(state_dict, prefix)
            if not state_dict:
                raise ValueError(f'AsViT init_cfg: no key of {source} starts with prefix {prefix!r}')
        if all(k.startswith('model.') for k in state_dict):  # this adapter's own state dict
            state_dict = _under_prefix(state_dict, 'model.')
        state_dict = checkpoint_filter_fn(state_dict, self.model)
        adapted = self._adapt_input_conv(state_dict)
        self._check_shapes(state_dict, source)
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if len(unexpected) == len(state_dict):
            raise ValueError(f'AsViT init_cfg: no tensor of {source} fits the backbone (its first keys: '
                             f'{sorted(state_dict)[:4]}); for a checkpoint of a whole detector give prefix, e.g. '
                             f"dict(type='Pretrained', checkpoint=..., prefix='backbone.')")
        print_log(f'AsViT: loaded {len(state_dict) - len(unexpected)} tensors from {source}{adapted}; '
                  f'missing keys: {missing or "none"}; unexpected keys: {unexpected or "none"}', logger='current',
                  level=logging.WARNING if missing else logging.INFO)
        self._is_init = True

    def _check_shapes(self, state_dict: Dict[str, torch.Tensor], source: str) -> None:
        problems = state_dict_mismatch(state_dict, self.model.state_dict(), 'checkpoint', 'backbone', keys=False)
        if problems:
            raise ValueError(f'AsViT init_cfg: the weights of {source} do not fit arch {self.arch!r}: {problems}; '
                             f'give the arch the weights were trained with')

    def _adapt_input_conv(self, state_dict: Dict[str, torch.Tensor]) -> str:
        """Fit the stage-1 tokenizer of weights trained on other input channels (grayscale Fashion-MNIST weights
        in an RGB detector) with timm's ``adapt_input_conv``; returns a note for the log."""
        key = 'patch_embed.proj.weight'
        weight, in_chans = state_dict.get(key), self.model.patch_embed.proj.in_channels
        if weight is None or weight.dim() != 4 or weight.shape[1] == in_chans:
            return ''
        state_dict[key] = adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])
        return f' ({key} adapted from {weight.shape[1]} to {in_chans} input channels)'

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True))

