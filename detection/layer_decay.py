"""Layer-wise learning-rate decay for timm backbones inside an mmengine model.

``optim_wrapper = dict(constructor='TimmLayerDecayOptimWrapperConstructor',
paramwise_cfg=dict(layer_decay_rate=0.9), optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))``

Every submodule with a ``group_matcher`` (a timm model, e.g. the As-ViT backbone's ``model``) is grouped
by timm's :func:`~timm.optim.param_groups_layer_decay`: layer ``i`` of ``n`` gets
``lr * layer_decay_rate ** (n - 1 - i)``, and 1-D parameters (norms, biases) and the model's ``no_weight_decay``
ones no weight decay. mmengine's paramwise options apply on top, with its matching rules: a parameter whose
name contains a ``custom_keys`` key (the longest, then alphabetically first, that matches) has its lr and
weight decay multiplied by the key's ``lr_mult`` and ``decay_mult`` and gets its other settings; otherwise
``bias_lr_mult`` multiplies the lr of biases (not of norms) and ``dwconv_decay_mult`` the weight decay of
depth-wise convolutions. ``bias_decay_mult``, ``norm_decay_mult`` and ``flat_decay_mult`` concern 1-D
parameters, which timm leaves without weight decay. All other parameters (neck, heads) are handled by
mmengine's default constructor.
"""
from __future__ import annotations

from numbers import Real
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from timm.optim import param_groups_layer_decay

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['TimmLayerDecayOptimWrapperConstructor']

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _has_group_matcher(module: nn.Module) -> bool:
    return callable(getattr(module, 'group_matcher', None))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TimmLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, plus timm's layer decay for the submodules with a ``group_matcher``.

    ``paramwise_cfg['layer_decay_rate']`` (required, in (0, 1]) is the decay per layer; below 1, the model
    must have a submodule with a ``group_matcher``.
    """

    def __init__(self, optim_wrapper_cfg: Dict[str, Any], paramwise_cfg: Optional[Dict[str, Any]] = None) -> None:
        # layer_decay_rate stays in paramwise_cfg: it keeps it non-empty, so the default __call__ runs add_params.
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        rate = self.paramwise_cfg.get('layer_decay_rate')
        if isinstance(rate, bool) or not isinstance(rate, Real) or not 0 < rate <= 1:
            raise ValueError(f'{type(self).__name__}: paramwise_cfg.layer_decay_rate must be a number in (0, 1], '
                             f'got {rate!r} (paramwise_cfg={self.paramwise_cfg})')
        self.layer_decay_rate = float(rate)
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        self.custom_keys = {key: custom_keys[key] for key in sorted(sorted(custom_keys), key=len, reverse=True)}

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if self.layer_decay_rate < 1 and not any(map(_has_group_matcher, model.modules())):
            raise ValueError(f'{type(self).__name__}: paramwise_cfg.layer_decay_rate={self.layer_decay_rate} needs a '
                             f'submodule with a group_matcher (a timm model), and {type(model).__name__} has none; '
                             f'set layer_decay_rate=1.0 or use the default constructor')
        return super().__call__(model)

    def add_params(self, params: List[Dict[str, Any]], module: nn.Module, prefix: str = '', **kwargs: Any) -> None:
        """Timm's layer decay for a module with a ``group_matcher`` (all its parameters); otherwise mmengine's
        groups for the module's own parameters, recursing into its children through this method."""
        if _has_group_matcher(module):
            params.extend(self._layer_decay_groups(module, prefix))
        else:
            super().add_params(params, module, prefix, **kwargs)

    def _layer_decay_groups(self, module: nn.Module, prefix: str) -> List[Dict[str, Any]]:
        """One group per trainable parameter: timm's layer-decay lr and weight decay times the paramwise options."""
        timm_groups = param_groups_layer_decay(module, weight_decay=self.base_wd or 0.,
                                               layer_decay=self.layer_decay_rate,
                                               no_weight_decay_list=getattr(module, 'no_weight_decay', set)())
        layer_decay = {id(p): (group['lr_scale'], group['weight_decay']) for group in timm_groups
                       for p in group['params']}
        owner = {id(p): m for m in module.modules() for p in m.parameters(recurse=False)}
        groups: List[Dict[str, Any]] = []
        for name, param in module.named_parameters():
            if id(param) not in layer_decay:  # frozen
                continue
            full_name = f'{prefix}.{name}'
            lr_scale, weight_decay = layer_decay[id(param)]
            lr_mult, decay_mult, settings = self._paramwise(full_name, owner[id(param)], param)
            groups.append(dict(params=[param], lr=self.base_lr * lr_scale * lr_mult,
                               weight_decay=weight_decay * decay_mult, **settings))
            if (lr_mult, decay_mult, settings) != (1., 1., {}):  # logged as mmengine logs its paramwise options
                for key, value in groups[-1].items():
                    if key != 'params':
                        print_log(f'paramwise_options -- {full_name}:{key}={value}', logger='current')
        return groups

    def _paramwise(self, full_name: str, owner: nn.Module, param: nn.Parameter) -> Tuple[float, float, Dict[str, Any]]:
        """(lr_mult, decay_mult, other settings) of a parameter under mmengine's paramwise rules."""
        for key, options in self.custom_keys.items():
            if key in full_name:
                settings = {k: v for k, v in options.items() if k not in ('lr_mult', 'decay_mult')}
                return float(options.get('lr_mult', 1.)), float(options.get('decay_mult', 1.)), settings
        is_bias = full_name.endswith('.bias')
        bias_lr_mult = self.paramwise_cfg.get('bias_lr_mult')
        lr_mult = bias_lr_mult if is_bias and bias_lr_mult is not None and not isinstance(owner, NORM_LAYERS) else 1.
        dwconv_decay_mult = self.paramwise_cfg.get('dwconv_decay_mult')
        is_dwconv = isinstance(owner, nn.Conv2d) and owner.in_channels == owner.groups
        decay_mult = dwconv_decay_mult if is_dwconv and dwconv_decay_mult is not None else 1.
        return float(lr_mult), float(decay_mult), {}
