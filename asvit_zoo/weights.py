"""Resolve a weights source to a state dict: a file, a ``local-dir:``/``hf-hub:`` name or a registered variant.

Sources, tried in this order:

* an existing file: ``.safetensors`` (safetensors) or a torch pickle (``.pth``/``.pt``/``.bin``, read with
  ``weights_only=True``); a ``state_dict``/``model`` wrapper and a ``module.`` prefix are removed;
* ``local-dir:PATH``: ``PATH/model.safetensors`` (timm's layout of a saved Hub repo);
* ``hf-hub:ORG/NAME``: ``model.safetensors`` of that Hub repo (downloaded, or from the local cache offline);
  both checked against the sha256 their ``config.json`` records, as ``timm.create_model`` checks them;
* a registered timm name, optionally with a tag (``asvit_large.in1k``), whose pretrained cfg has a
  ``file`` (checked against the sha256 its registry card records) or an ``hf_hub_id``.

Hub files are fetched by :func:`asvit_zoo.hub.hub_file`: from the cache under ``HF_HUB_OFFLINE=1``, with one
clear error when a file is neither cached nor downloadable. A file that cannot be read (truncated, corrupt) or
does not match its recorded sha256 is a :class:`asvit_zoo.hub.WeightsError` that names it.

The state dict is returned as stored; :func:`asvit_zoo.checkpoint_filter_fn` converts the authors' layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping

import torch

from .asvit import check_pretrained_tag, registered_card, unwrap_state_dict
from .hub import (HF_HUB_PREFIX, LOCAL_DIR_PREFIX, hub_weights, load_safetensors, load_torch_checkpoint,
                  local_dir_weights, verify_sha256)

__all__ = ['load_weights']


def _load_file(path: Path) -> Dict[str, torch.Tensor]:
    state = load_safetensors(path) if path.suffix == '.safetensors' else load_torch_checkpoint(path)
    if not isinstance(state, Mapping):
        raise ValueError(f'{path}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}')
    return {k: v for k, v in unwrap_state_dict(state).items() if isinstance(v, torch.Tensor)}


def _load_registered(name: str) -> Dict[str, torch.Tensor]:
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    check_pretrained_tag(name)
    cfg = get_pretrained_cfg(name)
    if cfg is None or not timm.is_model(split_model_name_tag(name)[0]):
        raise FileNotFoundError(
            f'weights source {name!r} is neither an existing file, {LOCAL_DIR_PREFIX}PATH, {HF_HUB_PREFIX}ORG/NAME '
            f'nor a registered model name (e.g. asvit_large, asvit_large.TAG)')
    if cfg.file:
        arch, tag = split_model_name_tag(name)
        tag = tag or cfg.tag or ''
        card = registered_card(arch)
        expected = card.weights_sha256(tag) if card is not None and tag in card.tags() else None
        if expected:
            verify_sha256(cfg.file, expected)
        return _load_file(Path(cfg.file))
    if cfg.hf_hub_id:
        return _load_file(hub_weights(cfg.hf_hub_id))
    raise FileNotFoundError(f'{name}: its pretrained cfg has neither a file nor an hf_hub_id, so there are no '
                            f'weights to load; pass a file path, {LOCAL_DIR_PREFIX}PATH or {HF_HUB_PREFIX}ORG/NAME')


def load_weights(source: str | Path) -> Dict[str, torch.Tensor]:
    """The state dict named by ``source`` (see the module docstring for the accepted forms), on the CPU."""
    text = str(source)
    if Path(text).is_file():
        return _load_file(Path(text))
    if text.startswith(LOCAL_DIR_PREFIX):
        return _load_file(local_dir_weights(text[len(LOCAL_DIR_PREFIX):]))
    if text.startswith(HF_HUB_PREFIX):
        return _load_file(hub_weights(text[len(HF_HUB_PREFIX):]))
    return _load_registered(text)
