"""mmdetection integration of asvit-zoo (installed as ``asvit_zoo.detection``).

Importing it registers the ``AsViT`` backbone in mmdet's MODELS and the
``TimmLayerDecayOptimWrapperConstructor`` in mmdet's OPTIM_WRAPPER_CONSTRUCTORS; configs load it with
``custom_imports = dict(imports=['asvit_zoo.detection'], allow_failed_imports=False)``.
The shipped configs are in ``configs/`` (see :func:`config_path`).
"""
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdet.registry import MODELS

from asvit_zoo.hub import allowed_globals, state_dict_mismatch
from asvit_zoo.weights import load_weights

from .backbone import AsViT, create_asvit, mmengine_checkpoint_globals
from .layer_decay import TimmLayerDecayOptimWrapperConstructor

__all__ = ['AsViT', 'TimmLayerDecayOptimWrapperConstructor', 'allow_mmengine_checkpoints', 'check_checkpoint',
           'check_dataset_files', 'config_path', 'create_asvit', 'list_configs', 'load_config']

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'


def list_configs() -> List[str]:
    """Names of the shipped configs (file names without ``.py``), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.py'))


def config_path(name: str) -> Path:
    """Path of a shipped config, by name (``mask-rcnn_asvit-large_fpn_1x_coco``) or by path."""
    path = Path(name)
    if path.is_file():
        return path
    path = CONFIG_DIR / f'{name.removesuffix(".py")}.py'
    if not path.is_file():
        raise FileNotFoundError(f'config {name!r} is neither a file nor a shipped config; shipped: {list_configs()}')
    return path


def load_config(config: Union[str, Path], work_dir: Optional[Union[str, Path]] = None,
                cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """A config by name or path, with ``cfg_options`` merged and ``work_dir`` set (default:
    ``work_dirs/<config name>``, as mmdet's tools do)."""
    path = config_path(str(config))
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = str(work_dir) if work_dir is not None else cfg.get('work_dir') or str(Path('work_dirs') / path.stem)
    return cfg


def _leaf_datasets(dataset: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The datasets a dataset config reads, through mmengine's wrappers (``dataset=`` of RepeatDataset or
    ClassBalancedDataset, ``datasets=`` of ConcatDataset)."""
    if 'dataset' in dataset:
        yield from _leaf_datasets(dataset['dataset'])
    elif 'datasets' in dataset:
        for inner in dataset['datasets']:
            yield from _leaf_datasets(inner)
    else:
        yield dataset


def check_dataset_files(cfg: Config, loaders: Sequence[str]) -> None:
    """Raise FileNotFoundError naming the first annotation file that the datasets of ``loaders`` (such as
    ``'train_dataloader'``) read and that does not exist: checked before a Runner is built, which would otherwise
    fail deep inside the dataset's loading."""
    for loader in loaders:
        for dataset in _leaf_datasets(cfg[loader]['dataset']) if cfg.get(loader) else ():
            ann_file, data_root = dataset.get('ann_file'), dataset.get('data_root') or ''
            path = Path(data_root) / ann_file if ann_file else None
            if path is not None and not path.is_file():
                raise FileNotFoundError(
                    f'{loader}: annotation file {path} not found (data_root {data_root!r}, ann_file {ann_file!r}); '
                    f'for the Fashion-MNIST configs write a dataset with tools/make_det_data.py --out DIR and give '
                    f'--data-root DIR; for the others point {loader}.dataset.data_root at the data (--cfg-options)')


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load`` with ``weights_only=True`` (the default since torch 2.6, which mmengine 0.10's
    ``load_checkpoint`` and resume rely on) read mmengine's training checkpoints: besides tensors, their
    message hub holds ``HistoryBuffer`` objects of numpy arrays and scalars. The tools call this; the
    backbone's ``init_cfg`` reads such checkpoints without it."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


def check_checkpoint(cfg: Config, checkpoint: Union[str, Path]) -> None:
    """Raise ValueError unless ``checkpoint`` holds exactly the tensors of ``cfg.model``, by key and shape
    (mmengine and mmdet load checkpoints non-strictly, with warnings only). The model is built on the meta
    device, so the check allocates nothing."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    with torch.device('meta'):
        expected = MODELS.build(cfg.model).state_dict()
    with allowed_globals(mmengine_checkpoint_globals()):
        found = load_weights(checkpoint)
    problems = state_dict_mismatch(found, expected, 'checkpoint', 'config')
    if problems:
        raise ValueError(f'checkpoint {checkpoint} does not fit the config {cfg.filename}: {problems}; '
                         f'give the config the checkpoint was trained with')
