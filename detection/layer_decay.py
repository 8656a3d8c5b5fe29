"""Layer-wise learning-rate decay for timm backbones inside an mmengine model.

``optim_wrapper = dict(constructor='TimmLayerDecayOptimWrapperConstructor',
paramwise_cfg=dict(layer_decay_rate=0.9), optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))``

Every submodule with a ``group_matcher`` (a timm model, e.g. the As-ViT backbone's ``model``) is grouped
by timm's :func:`~timm.optim.param_groups_layer_decay`: layer ``i`` of ``n`` gets
``lr * layer_decay_rate ** (n - 1 - i)``, and 1-D parameters (norms, biases) no weight decay. All other
parameters (neck, heads) are handled as by mmengine's default constructor (``custom_keys``,
``norm_decay_mult``, ...).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from timm.optim import param_groups_layer_decay

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['TimmLayerDecayOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TimmLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, plus timm's layer decay for the submodules with a ``group_matcher``.

    ``paramwise_cfg['layer_decay_rate']`` (required, in (0, 1]) is the decay per layer.
    """

    def __init__(self, optim_wrapper_cfg: Dict[str, Any], paramwise_cfg: Optional[Dict[str, Any]] = None) -> None:
        # layer_decay_rate stays in paramwise_cfg: it keeps it non-empty, so the default __call__ runs add_params.
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        rate = self.paramwise_cfg.get('layer_decay_rate')
        if rate is None or not 0 < float(rate) <= 1:
            raise ValueError(f'{type(self).__name__} needs paramwise_cfg=dict(layer_decay_rate=R) with R in (0, 1], '
                             f'got paramwise_cfg={self.paramwise_cfg}')
        self.layer_decay_rate = float(rate)

    def _timm_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        groups: List[Dict[str, Any]] = []
        grouped: List[str] = []
        for name, module in model.named_modules():
            if not callable(getattr(module, 'group_matcher', None)) or any(
                    not outer or name.startswith(f'{outer}.') for outer in grouped):
                continue
            grouped.append(name)
            for group in param_groups_layer_decay(
                    module, weight_decay=self.base_wd or 0., layer_decay=self.layer_decay_rate,
                    no_weight_decay_list=getattr(module, 'no_weight_decay', set)()):
                lr_scale = group.pop('lr_scale')
                groups.append(dict(group, lr=self.base_lr * lr_scale))
        return groups

    def add_params(self, params: List[Dict[str, Any]], module: nn.Module, prefix: str = '', **kwargs: Any) -> None:
        """Timm's layer-decay groups first, then one default group per remaining parameter."""
        timm_groups = self._timm_groups(module)
        taken = {id(p) for group in timm_groups for p in group['params']}
        rest: List[Dict[str, Any]] = []
        super().add_params(rest, module, prefix, **kwargs)
        params.extend(timm_groups)
        params.extend(group for group in rest if id(group['params'][0]) not in taken)
