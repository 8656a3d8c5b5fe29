"""mmdetection integration: the AsViT backbone adapter, Pretrained loading, layer decay, the shipped configs,
the Fashion-MNIST COCO generator, a loss/backward step of Mask R-CNN and RetinaNet, and the Runner tools.

Everything runs on small images with a tiny genotype (or asvit_seed); the COCO configs are built, not trained.
"""
from __future__ import annotations

import json
import logging
import re
import runpy
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from safetensors.torch import save_file

import asvit_zoo.detection.backbone as backbone_module
from asvit_zoo import load_registry
from asvit_zoo.datasets import FASHION_MNIST_CLASSES
from asvit_zoo.detection import (AsViT, allow_mmengine_checkpoints, check_checkpoint, config_path, create_asvit,
                                 list_configs, load_config)
from asvit_zoo.detection.fmnist_coco import SceneConfig, annotation_file, data_root_options, make_dataset, make_split
from asvit_zoo.hub import WeightsError
from asvit_zoo.weights import load_weights
from mmdet.registry import DATASETS, MODELS

from conftest import REPO_ROOT, options_without_help, parser_of

TINY = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,16'
FMNIST_CONFIG = 'mask-rcnn_asvit-seed_fpn_fmnist'
RETINANET_CONFIG = 'retinanet_asvit-large_fpn_1x_coco'
SMALL_SCENES = SceneConfig(canvas=(96, 144), item_side=(28, 72), max_items=3, seed=1)
COCO_CONFIGS = [name for name in list_configs() if name.endswith('_coco')]
REGISTERED = {card.name for card in load_registry()}

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


@pytest.fixture(autouse=True)
def _mmdet_scope() -> None:
    init_default_scope('mmdet')


@pytest.fixture(scope='module')
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('fmnist_coco')
    make_dataset(root, num_train=6, num_val=4, config=SMALL_SCENES)
    return root


@lru_cache(maxsize=None)
def _stage_channels(arch: str) -> Tuple[int, ...]:
    return tuple(info['num_chs'] for info in create_asvit(arch, num_classes=0).feature_info)


def _channels(arch: str, out_indices: Tuple[int, ...] = (0, 1, 2, 3)) -> List[int]:
    return [_stage_channels(arch)[i] for i in out_indices]


def _tiny_options(out_indices: Tuple[int, ...] = (0, 1, 2, 3)) -> Dict[str, Any]:
    return {'model.backbone.arch': TINY, 'model.backbone.init_cfg': None,
            'model.backbone.out_indices': out_indices, 'model.neck.in_channels': _channels(TINY, out_indices)}


# --------------------------------------------------------------------------- backbone
@pytest.mark.parametrize('shape', [(2, 3, 128, 96), (1, 3, 100, 157), (1, 3, 32, 32)])
def test_backbone_maps_at_strides_4_to_32_for_any_size(shape: Tuple[int, ...]) -> None:
    backbone = MODELS.build(dict(type='AsViT', arch=TINY))
    outs = backbone(torch.randn(shape))
    assert len(outs) == 4
    for out, channels, stride in zip(outs, backbone.channels, (4, 8, 16, 32)):
        assert out.shape == (shape[0], channels, -(-shape[2] // stride), -(-shape[3] // stride))
    assert list(backbone.channels) == _channels(TINY)


def test_backbone_out_indices_prune_and_registered_variant() -> None:
    backbone = MODELS.build(dict(type='AsViT', arch='asvit_seed', out_indices=(1, 2)))
    assert len(backbone.model.stages) == 3 and isinstance(backbone.model.norm, torch.nn.Identity)
    assert not any(name.startswith('head.') for name, _ in backbone.model.named_parameters())
    outs = backbone(torch.randn(1, 3, 64, 80))
    assert [o.shape[1] for o in outs] == list(timm.create_model('asvit_seed').feature_info[i]['num_chs']
                                               for i in (1, 2))


def test_backbone_frozen_stages_with_cp_and_norm_eval() -> None:
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, frozen_stages=2, with_cp=True, norm_eval=True))
    backbone.train()
    frozen = [backbone.model.patch_embed, backbone.model.stages[0], backbone.model.stages[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in backbone.model.stages[2:] for p in m.parameters())
    assert not any(m.training for m in frozen)
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm))
    assert all(stage.grad_checkpointing for stage in backbone.model.stages)
    x = torch.randn(1, 3, 64, 64)
    sum(o.sum() for o in backbone(x)).backward()
    assert backbone.model.stages[3].blocks[0].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize('frozen_stages, frozen_count', [(-1, 0), (0, 1), (1, 2), (4, 5)])
def test_frozen_stages_counts_the_tokenizer_as_stage_zero(frozen_stages: int, frozen_count: int) -> None:
    """As in mmdet's backbones: -1 freezes nothing, 0 the tokenizer (patch_embed), N also the first N stages."""
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, frozen_stages=frozen_stages))
    backbone.train()
    parts = [backbone.model.patch_embed, *backbone.model.stages]
    assert [any(p.requires_grad for p in m.parameters()) for m in parts] == [False] * frozen_count + [True] * (
        len(parts) - frozen_count)
    assert [m.training for m in parts] == [False] * frozen_count + [True] * (len(parts) - frozen_count)


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='resnet50'), 'registered As-ViT variant'),
    (dict(arch=TINY, out_indices=(4,)), 'out_indices'),
    (dict(arch=TINY, out_indices=(3, 1)), r'out_indices must be increasing stage indices .* got \(3, 1\)'),
    (dict(arch=TINY, out_indices=(1, 1)), r'out_indices must be increasing'),
    (dict(arch=TINY, window_img_size=0), 'window_img_size must be None or an image size >= 1, got 0'),
    (dict(arch=TINY, init_cfg=dict(type='Pretrained')), r"dict\(type='Pretrained', checkpoint=SOURCE\), got"),
    (dict(arch=TINY, init_cfg=[dict(type='Pretrained', checkpoint='x')]), 'init_cfg must be None or dict'),
    (dict(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint='x', strict=True)),
     r"unknown keys \['strict'\]; allowed: \['type', 'checkpoint', 'prefix', 'map_location'\]"),
    (dict(arch='8,2,3|4,1,2|4,1,4|4,1,6|32'), r"scaled genotype string .* got the seed form '8,2,3\|4,1,2"),
    (dict(arch=TINY, frozen_stages=7), 'frozen_stages'),
    (dict(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=None)),
     r"init_cfg.checkpoint must be a weights source \(a file, local-dir:PATH, .*\), got None"),
    (dict(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint='asvit_tiny.fmnist', prefix=3)),
     r"init_cfg.prefix must be a string \(e.g. 'backbone'\), got 3"),
    (dict(arch=TINY, drop_path_rate=None), r'drop_path_rate must be a number in \[0, 1\), got None'),
    (dict(arch=TINY, init_cfg=dict(type='Normal')), 'Pretrained'),
    (dict(arch=TINY, out_indices=3), r'out_indices must be a non-empty tuple or list of stage indices .* got 3'),
    (dict(arch=TINY, out_indices=(1.0, 2.0)), r'out_indices must be a non-empty tuple .* got \(1.0, 2.0\)'),
    (dict(arch=TINY, out_indices='12'), r"out_indices must be a non-empty tuple .* got '12'"),
    (dict(arch=TINY, frozen_stages=2.5), r'frozen_stages must be an int in \[-1, 4\], got 2.5'),
    (dict(arch=TINY, frozen_stages='1'), r"frozen_stages must be an int in \[-1, 4\], got '1'"),
    (dict(arch=TINY, drop_path_rate=1.5), r'drop_path_rate must be a number in \[0, 1\), got 1.5'),
    (dict(arch=TINY, drop_path_rate=-0.1), r'drop_path_rate must be a number in \[0, 1\), got -0.1'),
    (dict(arch=TINY, drop_path_rate='0.1'), r"drop_path_rate must be a number in \[0, 1\), got '0.1'"),
    (dict(arch=TINY, with_cp='yes'), "with_cp must be True or False, got 'yes'"),
    (dict(arch=TINY, norm_eval='no'), "norm_eval must be True or False, got 'no'"),
    (dict(arch='asvit_tiny.fmnist'), r"arch must name a variant without a pretrained tag, got 'asvit_tiny.fmnist'; "
                                     r"the weights come from init_cfg: arch='asvit_tiny', init_cfg=dict\(type="
                                     r"'Pretrained', checkpoint='asvit_tiny.fmnist'\)"),
    (dict(arch=None), 'arch must be a string'),
])
def test_backbone_rejects_bad_arguments(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='AsViT', **kwargs))


# --------------------------------------------------------------------------- Pretrained weights
def _save(source: Dict[str, torch.Tensor], path: Path) -> str:
    if path.suffix == '.safetensors':
        save_file(source, str(path))
    else:  # a training checkpoint: wrapped and with DistributedDataParallel's prefix
        torch.save({'state_dict': {f'module.{k}': v for k, v in source.items()}, 'epoch': 3}, path)
    return str(path)


@pytest.mark.parametrize('file_name', ['weights.safetensors', 'checkpoint.pth', 'local-dir'])
def test_pretrained_init_cfg_loads_our_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               file_name: str) -> None:
    model = timm.create_model('asvit', genotype=TINY, num_classes=10)
    source = {k: v.contiguous() for k, v in model.state_dict().items()}
    if file_name == 'local-dir':
        _save(source, tmp_path / 'model.safetensors')
        checkpoint = f'local-dir:{tmp_path}'
    else:
        checkpoint = _save(source, tmp_path / file_name)
    logged: List[Tuple[str, int]] = []
    monkeypatch.setattr(backbone_module, 'print_log', lambda msg, **kwargs: logged.append((msg, kwargs['level'])))
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=checkpoint,
                                                                        map_location='cpu')))
    backbone.init_weights()
    state = backbone.model.state_dict()
    assert state and all(torch.equal(value, source[key]) for key, value in state.items())
    assert len(logged) == 1 and 'missing keys: none' in logged[0][0] and logged[0][1] == logging.INFO
    unused = sorted(set(source) - set(state))
    assert unused and all(key.startswith(('head.', 'norm.')) for key in unused)
    reported_unexpected = logged[0][0].split('unexpected keys:')[1]
    assert all(f"'{key}'" in reported_unexpected for key in unused)
    # weights that leave part of the backbone at its initialisation: a warning naming the missing keys
    partial = {k: v for k, v in source.items() if not k.startswith('stages.3.')}
    partial_file = _save(partial, tmp_path / 'partial.safetensors')
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=partial_file)))
    backbone.init_weights()
    assert logged[1][1] == logging.WARNING and "missing keys: ['stages.3." in logged[1][0]


def test_pretrained_prefix_takes_the_backbone_of_a_detector_checkpoint(tmp_path: Path) -> None:
    trained = MODELS.build(dict(type='AsViT', arch=TINY))
    detector = {'state_dict': {f'backbone.{k}': v for k, v in trained.state_dict().items()}, 'meta': {}}
    checkpoint = str(tmp_path / 'detector.pth')
    torch.save(detector, checkpoint)
    for prefix in ('backbone.', 'backbone'):  # mmengine adds the dot where it is missing
        backbone = MODELS.build(dict(type='AsViT', arch=TINY,
                                     init_cfg=dict(type='Pretrained', checkpoint=checkpoint, prefix=prefix)))
        backbone.init_weights()  # keys backbone.model.*: the prefix, then the adapter's own model. are removed
        assert all(torch.equal(v, trained.state_dict()[k]) for k, v in backbone.state_dict().items())
    for init_cfg, message in ((dict(prefix='neck.'), "no key of .* starts with prefix 'neck.'"),
                              (dict(), r"no tensor of .* fits the backbone .*backbone.model.*prefix='backbone.'")):
        backbone = MODELS.build(dict(type='AsViT', arch=TINY,
                                     init_cfg=dict(type='Pretrained', checkpoint=checkpoint, **init_cfg)))
        with pytest.raises(ValueError, match=message):
            backbone.init_weights()


@pytest.fixture
def no_safe_globals() -> Iterator[None]:
    """A process in which nothing has called allow_mmengine_checkpoints (or added other safe globals)."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


def _mmengine_checkpoint_of(path: Path, state_dict: Dict[str, torch.Tensor]) -> str:
    """A checkpoint as mmengine's CheckpointHook writes it: with a message hub of HistoryBuffers."""
    hub = MessageHub('asvit-test')
    hub.update_scalar('train/loss', np.float64(1.5))
    torch.save({'meta': {'iter': 2}, 'state_dict': state_dict, 'message_hub': hub.state_dict()}, path)
    return str(path)


def test_pretrained_reads_an_mmengine_checkpoint_without_the_tools(tmp_path: Path, no_safe_globals: None) -> None:
    """init_cfg reads an mmengine checkpoint in a process that only imported the adapter; the globals it allows for
    that load are gone after it, and those allowed before (allow_mmengine_checkpoints) stay allowed."""
    trained = MODELS.build(dict(type='AsViT', arch=TINY))
    checkpoint = _mmengine_checkpoint_of(tmp_path / 'iter_2.pth',
                                         {f'backbone.{k}': v for k, v in trained.state_dict().items()})
    init_cfg = dict(type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
    with pytest.raises(WeightsError, match=r'iter_2.pth: a torch checkpoint holding objects of '
                                           r'mmengine.logging.history_buffer.HistoryBuffer, which weights_only '
                                           r'loading does not allow') as error:
        load_weights(checkpoint)
    assert 'corrupt' not in str(error.value)
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, init_cfg=init_cfg))
    backbone.init_weights()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in backbone.state_dict().items())
    assert torch.serialization.get_safe_globals() == []
    allow_mmengine_checkpoints()
    MODELS.build(dict(type='AsViT', arch=TINY, init_cfg=init_cfg)).init_weights()
    assert torch.load(checkpoint, weights_only=True)['meta']['iter'] == 2


def test_pretrained_weights_of_another_arch_name_source_arch_and_shapes(tmp_path: Path) -> None:
    checkpoint = _save(timm.create_model('asvit_seed').state_dict(), tmp_path / 'seed.pth')
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
    with pytest.raises(ValueError, match=rf"the weights of {checkpoint} do not fit arch '{re.escape(TINY)}': "
                                         r"\d+ tensors of another shape \(first: patch_embed.proj.weight "
                                         r"\(checkpoint \(32, 3, 8, 8\), backbone \(16, 3, 4, 4\)\)\); give the arch"):
        backbone.init_weights()


def test_pretrained_grayscale_weights_fit_an_rgb_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped Fashion-MNIST weights (1 input channel) initialise an RGB backbone: the tokenizer's filters are
    spread over the 3 channels, so a gray RGB image gives the same stage-1 tokens as the grayscale image."""
    logged: List[str] = []
    monkeypatch.setattr(backbone_module, 'print_log', lambda msg, **kwargs: logged.append(msg))
    backbone = MODELS.build(dict(type='AsViT', arch='asvit_tiny',
                                 init_cfg=dict(type='Pretrained', checkpoint='asvit_tiny.fmnist')))
    backbone.init_weights()
    assert 'patch_embed.proj.weight adapted from 1 to 3 input channels' in logged[0]
    assert 'missing keys: none' in logged[0]
    gray = timm.create_model('asvit_tiny.fmnist', pretrained=True).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        expected = gray.patch_embed(x)
        got = backbone.model.patch_embed(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_pretrained_reports_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = timm.create_model('asvit', genotype=TINY).state_dict()
    partial = {k: v for k, v in source.items() if not k.startswith('stages.3.')}
    checkpoint = _save(partial, tmp_path / 'partial.pth')
    logged: List[str] = []
    monkeypatch.setattr(backbone_module, 'print_log', lambda msg, **kwargs: logged.append(msg))
    backbone = MODELS.build(dict(type='AsViT', arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
    backbone.init_weights()
    assert "'stages.3.blocks.0.mlp.fc1.weight'" in logged[0].split('unexpected keys')[0]


def test_load_weights_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    with pytest.raises(WeightsError, match=f"{tmp_path / 'model.safetensors'}: weights file not found"):
        load_weights(f'local-dir:{tmp_path}')
    with pytest.raises(FileNotFoundError, match='neither a file nor an hf_hub_id'):
        load_weights('asvit_seed')
    with pytest.raises(FileNotFoundError, match='neither an existing file'):
        load_weights('no_such_model')
    with pytest.raises(ValueError, match="asvit_tiny has no pretrained tag 'nope'"):
        load_weights('asvit_tiny.nope')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
    with pytest.raises(FileNotFoundError, match='is not in the Hugging Face cache'):
        load_weights('hf-hub:asvit-zoo-tests/not-a-repo')


# --------------------------------------------------------------------------- layer decay
def test_layer_decay_constructor_scales_backbone_lr_by_depth() -> None:
    cfg = load_config('mask-rcnn_asvit-large_fpn_1x_coco', cfg_options=_tiny_options())
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr, rate = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    lr_of = {id(p): group['lr'] for group in wrapper.optimizer.param_groups for p in group['params']}
    assert sum(len(g['params']) for g in wrapper.optimizer.param_groups) == len(list(model.parameters())) == len(lr_of)
    backbone = model.backbone.model
    last_block = backbone.stages[3].blocks[0].mlp.fc1.weight
    assert lr_of[id(last_block)] == pytest.approx(base_lr)
    # timm's grouping (the model's group_matcher): a stage's patch merging shares the layer of its first block
    assert lr_of[id(backbone.stages[3].downsample.reduction.weight)] == pytest.approx(base_lr)
    assert lr_of[id(backbone.stages[2].blocks[0].mlp.fc1.weight)] == pytest.approx(base_lr * rate)
    num_blocks = sum(len(stage.blocks) for stage in backbone.stages)
    assert lr_of[id(backbone.patch_embed.proj.weight)] == pytest.approx(base_lr * rate ** num_blocks)
    assert all(lr_of[id(p)] == pytest.approx(base_lr) for p in model.neck.parameters())
    decay_of = {id(p): group['weight_decay'] for group in wrapper.optimizer.param_groups for p in group['params']}
    assert decay_of[id(last_block)] == cfg.optim_wrapper.optimizer.weight_decay
    assert decay_of[id(backbone.stages[3].blocks[0].norm1.weight)] == 0


def test_layer_decay_applies_paramwise_options_on_top_and_logs_what_it_applies(request: pytest.FixtureRequest) -> None:
    """custom_keys (the longest matching key wins) and bias_lr_mult multiply the layer-decay lr and weight decay of
    the backbone as they do for the neck; every logged paramwise option is the one the optimizer holds."""
    logged: List[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    MMLogger.get_current_instance().addHandler(handler)
    request.addfinalizer(lambda: MMLogger.get_current_instance().removeHandler(handler))
    cfg = load_config('mask-rcnn_asvit-large_fpn_1x_coco', cfg_options=_tiny_options())
    model = MODELS.build(cfg.model)
    paramwise_cfg = dict(layer_decay_rate=0.5, bias_lr_mult=3.0,
                         custom_keys={'stages.3': dict(lr_mult=2.0, decay_mult=0.5),
                                      'stages.3.blocks.0.mlp': dict(lr_mult=0.1, decay_mult=0.0)})
    wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, paramwise_cfg=paramwise_cfg))
    lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    group_of = {id(p): group for group in wrapper.optimizer.param_groups for p in group['params']}
    assert len(group_of) == len(list(model.parameters()))
    stages = model.backbone.model.stages
    expected = [(stages[3].blocks[0].mlp.fc1.weight, lr * .1, 0.),  # the longer of the two matching keys
                (stages[3].downsample.reduction.weight, lr * 2, wd / 2),
                (stages[2].blocks[0].mlp.fc1.weight, lr / 2, wd), (stages[2].blocks[0].mlp.fc1.bias, lr / 2 * 3, 0.),
                (stages[2].blocks[0].norm1.bias, lr / 2, 0.), (model.neck.lateral_convs[0].conv.bias, lr * 3, wd)]
    for param, param_lr, param_wd in expected:
        assert (group_of[id(param)]['lr'], group_of[id(param)]['weight_decay']) == pytest.approx((param_lr, param_wd))
    names = {name: param for name, param in model.named_parameters()}
    options = [re.fullmatch(r'paramwise_options -- (\S+):(\w+)=(.+)', line) for line in logged]
    options = [option.groups() for option in options if option]
    assert any(name.startswith('backbone.model.stages.3') for name, _, _ in options)
    for name, key, value in options:
        assert group_of[id(names[name])][key] == pytest.approx(float(value)), (name, key)


def test_layer_decay_rate_must_be_a_number_and_have_a_timm_model() -> None:
    from asvit_zoo.detection import TimmLayerDecayOptimWrapperConstructor as Constructor

    optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for rate in ('abc', True, 0, 1.5, None):
        with pytest.raises(ValueError, match=rf'paramwise_cfg.layer_decay_rate must be a number in \(0, 1\], '
                                             rf'got {re.escape(repr(rate))}'):
            Constructor(optim_wrapper, dict(layer_decay_rate=rate))
    with pytest.raises(ValueError, match=r'layer_decay_rate=0.5 needs a submodule with a group_matcher \(a timm '
                                         r'model\), and Sequential has none'):
        Constructor(optim_wrapper, dict(layer_decay_rate=0.5))(plain)
    wrapper = Constructor(optim_wrapper, dict(layer_decay_rate=1.0))(plain)
    assert [group['lr'] for group in wrapper.optimizer.param_groups] == [1e-3] * 4


# --------------------------------------------------------------------------- configs
def _skip_unregistered(arch: str) -> None:
    if '|' not in arch and arch not in REGISTERED:
        pytest.skip(f'{arch} is not in the registry (yet): a config for a variant that the scaling run adds')


@pytest.mark.parametrize('name', list_configs())
def test_config_neck_in_channels_match_the_registry(name: str) -> None:
    """The literal neck in_channels of every config are the channels of its backbone's stages."""
    backbone = Config.fromfile(str(config_path(name))).model.backbone
    _skip_unregistered(backbone.arch)
    expected = _channels(backbone.arch, tuple(backbone.out_indices))
    neck = Config.fromfile(str(config_path(name))).model.neck.in_channels
    assert list(neck) == expected, f'{config_path(name)}: neck in_channels {neck}, {backbone.arch} has {expected}'


@pytest.mark.parametrize('name', list_configs())
def test_every_config_builds(name: str) -> None:
    cfg = load_config(name, cfg_options={'model.backbone.init_cfg': None})
    _skip_unregistered(cfg.model.backbone.arch)
    assert cfg.custom_imports.imports == ['asvit_zoo.detection']
    model = MODELS.build(cfg.model)
    assert isinstance(model.backbone, AsViT)
    assert list(model.backbone.channels) == list(cfg.model.neck.in_channels)
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.constructor == 'TimmLayerDecayOptimWrapperConstructor'


def test_coco_configs_cover_three_detectors_and_variants() -> None:
    expected = {f'{detector}_asvit-{variant}_fpn_{schedule}_coco'
                for variant in ('small', 'base', 'large')
                for detector, schedule in (('mask-rcnn', '1x'), ('mask-rcnn', 'ms-crop-3x'), ('retinanet', '1x'))}
    assert set(COCO_CONFIGS) == expected
    three_x = load_config('mask-rcnn_asvit-large_fpn_ms-crop-3x_coco')
    assert three_x.train_cfg.max_epochs == 36 and three_x.train_dataloader.dataset.type == 'CocoDataset'


def test_fmnist_config_classes_are_fashion_mnist() -> None:
    cfg = load_config(FMNIST_CONFIG)
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == FASHION_MNIST_CLASSES
    assert cfg.train_dataloader.dataset.type == 'CocoDataset' and cfg.val_evaluator.type == 'CocoMetric'


# --------------------------------------------------------------------------- the generated dataset
def test_fmnist_coco_is_deterministic_and_valid(tmp_path: Path, fmnist_root: Path) -> None:
    again = make_split(tmp_path, 'val', 4, SMALL_SCENES)
    assert again.read_bytes() == annotation_file(fmnist_root, 'val').read_bytes()
    assert (tmp_path / 'val' / '000003.png').read_bytes() == (fmnist_root / 'val' / '000003.png').read_bytes()
    coco = COCO(str(annotation_file(fmnist_root, 'train')))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(FASHION_MNIST_CLASSES)
    for image in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image['id']))
        assert 1 <= len(anns) <= SMALL_SCENES.max_items
        assert SMALL_SCENES.canvas[0] <= min(image['height'], image['width'])
        assert max(image['height'], image['width']) <= SMALL_SCENES.canvas[1]
        for ann in anns:
            mask = mask_utils.decode(ann['segmentation'])
            rows, cols = np.nonzero(mask)
            assert ann['bbox'] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert ann['area'] == mask.sum() and 1 <= ann['category_id'] <= 10
    assert make_split(tmp_path, 'train', 2, SceneConfig(seed=2)).read_bytes() != annotation_file(
        fmnist_root, 'train').read_bytes()


def test_scene_config_rejects_items_larger_than_the_canvas() -> None:
    with pytest.raises(ValueError, match='item_side'):
        SceneConfig(canvas=(64, 96), item_side=(28, 80))


@pytest.mark.parametrize('args, message', [
    (['--train', '3', '--val', '0'], r'--val must be >= 1 \(a number of images\), got 0'),
    (['--train', '0'], r'--train must be >= 1 \(a number of images\), got 0'),
    (['--canvas', '0', '90'], r'--canvas must be a range \(low, high\) with 1 <= low <= high, got \(0, 90\)'),
    (['--item-side', '28', '200'], r'--item-side must fit the smallest canvas side 112, got \(28, 200\)'),
    (['--max-items', '0'], '--max-items must be >= 1, got 0'),
    (['--seed', '-1'], '--seed must be >= 0, got -1'),
    (['--fmnist-root', 'NOPE'], r'--fmnist-root NOPE: Fashion-MNIST file not found: NOPE/train-images'),
])
def test_make_det_data_checks_every_option_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, args: List[str],
                                                         message: str) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / 'data'
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / 'tools' / 'make_det_data.py'), run_name='not_main')['main'](
            ['--out', str(out), '--train', '2', '--val', '1', *args])
    assert exit_info.value.code == 2
    assert re.search(f'error: {message}', capsys.readouterr().err)
    assert not out.exists()


def test_make_det_data_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'data'
    out.write_text('')
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO_ROOT / 'tools' / 'make_det_data.py'), run_name='not_main')['main'](
            ['--out', str(out), '--train', '1', '--val', '1'])
    assert f'error: --out {out} must be a folder, found a file' in capsys.readouterr().err


def test_make_dataset_checks_both_splits_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='num_images of val must be >= 1, got 0'):
        make_dataset(tmp_path / 'data', num_train=2, num_val=0)
    with pytest.raises(FileNotFoundError, match='Fashion-MNIST file not found'):
        make_dataset(tmp_path / 'data', num_train=2, num_val=1, fmnist_root=tmp_path / 'nope')
    assert not (tmp_path / 'data').exists()


# --------------------------------------------------------------------------- detectors on the generated data
def _detector_and_batch(name: str, fmnist_root: Path, options: Dict[str, Any]) -> Tuple[torch.nn.Module, dict]:
    data_cfg = load_config(FMNIST_CONFIG, cfg_options=data_root_options(fmnist_root))
    model = MODELS.build(load_config(name, cfg_options=options).model)
    dataset = DATASETS.build(data_cfg.train_dataloader.dataset)
    return model, model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), True)


@pytest.mark.parametrize('name, options', [
    (FMNIST_CONFIG, _tiny_options()),
    (RETINANET_CONFIG, {**_tiny_options((1, 2, 3)), 'model.bbox_head.num_classes': 10}),
])
def test_loss_and_backward_on_generated_data(fmnist_root: Path, name: str, options: Dict[str, Any]) -> None:
    torch.manual_seed(0)
    model, data = _detector_and_batch(name, fmnist_root, options)
    model.train()
    loss, log_vars = model.parse_losses(model.loss(data['inputs'], data['data_samples']))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if name == FMNIST_CONFIG:
        assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(log_vars)


def test_runner_trains_two_iterations_evaluates_and_resumes(fmnist_root: Path, tmp_path: Path) -> None:
    """tools/det_train.py (2 iterations, evaluated), --resume to 3, det_test.py and det_infer.py, on a user config
    that inherits the shipped one (a genotype string cannot pass through --cfg-options: its commas split it)."""
    config = tmp_path / 'tiny_fmnist.py'
    config.write_text(f"_base_ = '{config_path(FMNIST_CONFIG)}'\n"
                      f"model = dict(backbone=dict(arch='{TINY}'), neck=dict(in_channels={_channels(TINY)}))\n")
    options = {**data_root_options(fmnist_root), 'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
               'param_scheduler.0.end': 1, 'param_scheduler.1.begin': 1, 'param_scheduler.1.end': 3,
               'train_dataloader.batch_size': 2, 'default_hooks.checkpoint.interval': 1,
               'default_hooks.logger.interval': 1, 'model.test_cfg.rcnn.score_thr': 0.0}
    work_dir = tmp_path / 'work'
    allow_mmengine_checkpoints()
    runner = Runner.from_cfg(load_config(config, work_dir, options))
    runner.train()
    assert runner.iter == 2 and (work_dir / 'iter_2.pth').is_file()
    scalars = [json.loads(line) for path in work_dir.glob('*/vis_data/scalars.json')
               for line in path.read_text().splitlines()]
    assert any('coco/bbox_mAP' in record and 'coco/segm_mAP' in record for record in scalars)
    logging.getLogger().handlers.clear()

    tools = REPO_ROOT / 'tools'
    cli_options = [f'{key}={value}' for key, value in options.items() if key not in data_root_options(fmnist_root)]
    runpy.run_path(str(tools / 'det_train.py'))['main']([
        str(config), '--work-dir', str(work_dir), '--resume', '--data-root', str(fmnist_root), '--cfg-options',
        *cli_options, 'train_cfg.max_iters=3'])
    assert torch.load(work_dir / 'iter_3.pth', weights_only=True)['meta']['iter'] == 3

    metrics_file = tmp_path / 'metrics.json'
    runpy.run_path(str(tools / 'det_test.py'))['main']([
        str(config), str(work_dir / 'iter_3.pth'), '--work-dir', str(tmp_path / 'test'),
        '--metrics-out', str(metrics_file), '--data-root', str(fmnist_root), '--cfg-options', *cli_options])
    metrics = json.loads(metrics_file.read_text())
    assert all(0 <= metrics[f'coco/{kind}_mAP'] <= 1 for kind in ('bbox', 'segm'))

    png = tmp_path / 'prediction.png'
    runpy.run_path(str(tools / 'det_infer.py'))['main']([
        str(config), str(work_dir / 'iter_3.pth'), str(fmnist_root / 'val' / '000001.png'), '--out', str(png),
        '--score-thr', '0.0', '--cfg-options', *cli_options])
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_tools_refuse_a_checkpoint_that_does_not_fit_the_config(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 fmnist_root: Path) -> None:
    """det_test.py and det_infer.py exit with one message naming the checkpoint, the config and the first
    mismatch, before building the runner or drawing (mmengine loads the checkpoint non-strictly)."""
    tiny = MODELS.build(load_config(FMNIST_CONFIG, cfg_options=_tiny_options()).model)
    checkpoint = tmp_path / 'tiny.pth'
    _mmengine_checkpoint_of(checkpoint, tiny.state_dict())
    check_checkpoint(load_config(FMNIST_CONFIG, cfg_options=_tiny_options()), checkpoint)  # it fits its own config
    tools = REPO_ROOT / 'tools'
    image = str(fmnist_root / 'val' / '000001.png')
    for tool, args in (('det_test.py', ['--work-dir', str(tmp_path / 'test'), '--data-root', str(fmnist_root)]),
                       ('det_infer.py', [image, '--out', str(tmp_path / 'p.png')])):
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(tools / tool))['main']([FMNIST_CONFIG, str(checkpoint), *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert re.search(rf'error: checkpoint {checkpoint} does not fit the config \S*{FMNIST_CONFIG}.py: '
                         r'\d+ tensors of another shape \(first: backbone.model.patch_embed.proj.weight '
                         r'\(checkpoint \(16, 3, 4, 4\), config \(32, 3, 8, 8\)\)\)', err), err
        assert not (tmp_path / 'test').exists() and not (tmp_path / 'p.png').exists()
    partial = {k: v for k, v in tiny.state_dict().items() if not k.startswith('roi_head.mask_head.')}
    _mmengine_checkpoint_of(checkpoint, {**partial, 'extra.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match=r'tensors of the config missing \(first: roi_head.mask_head.\S+\); '
                                         r'1 tensors not in the config \(first: extra.weight\)'):
        check_checkpoint(load_config(FMNIST_CONFIG, cfg_options=_tiny_options()), checkpoint)


@pytest.mark.parametrize('tool, split', [('det_train.py', 'train'), ('det_test.py', 'val')])
def test_tools_name_a_data_root_without_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture, tool: str,
                                                    split: str) -> None:
    args = [FMNIST_CONFIG] + (['checkpoint.pth'] if tool == 'det_test.py' else [])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / 'tools' / tool))['main']([*args, '--data-root', str(tmp_path)])
    assert exit_info.value.code == 2
    assert (f'error: --data-root: {annotation_file(tmp_path, split)} not found: {tmp_path} is not a dataset written '
            f'by tools/make_det_data.py --out {tmp_path}') in capsys.readouterr().err


@pytest.mark.parametrize('tool, args, message', [
    ('det_train.py', ['nope'], "config 'nope' is neither a file nor a shipped config; shipped: ['mask-rcnn_asvit"),
    ('det_test.py', ['nope', 'x.pth'], "config 'nope' is neither a file nor a shipped config"),
    ('det_train.py', [FMNIST_CONFIG], 'train_dataloader: annotation file data/fmnist_coco/annotations/instances_'
                                      'train.json not found'),
    ('det_test.py', [FMNIST_CONFIG, 'x.pth'], 'test_dataloader: annotation file data/fmnist_coco/annotations/'
                                              'instances_val.json not found'),
    ('det_train.py', ['retinanet_asvit-small_fpn_1x_coco', '--data-root', 'fm'],  # a Fashion-MNIST root for COCO
     'train_dataloader: annotation file {cwd}/fm/annotations/instances_train2017.json not found'),
    ('det_train.py', [FMNIST_CONFIG, '--data-root', 'fm', '--resume', 'gone.pth'], '--resume: checkpoint gone.pth '
                                                                                    'not found'),
    ('det_infer.py', [FMNIST_CONFIG, 'x.pth', 'gone.png', '--out', 'p.png'], 'image gone.png not found'),
    ('det_infer.py', [FMNIST_CONFIG, 'x.pth', 'gone.png', '--out', 'p.png', '--device', 'cuda:99'], "device 'cuda:99'"),
])
def test_tools_refuse_bad_arguments_before_building_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture, tool: str,
                                                             args: List[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)  # no data/fmnist_coco here
    for split in ('train', 'val'):
        annotation_file(tmp_path / 'fm', split).parent.mkdir(parents=True, exist_ok=True)
        annotation_file(tmp_path / 'fm', split).write_text('{}')
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / 'tools' / tool))['main'](args + (['--work-dir', 'wd'] if tool != 'det_infer.py'
                                                                         else []))
    assert exit_info.value.code == 2
    assert f'error: {message.format(cwd=tmp_path)}' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['fm']  # no work dir, no output


def _short_run_commands(text: str) -> List[List[str]]:
    """The det_train.py command lines of ``text`` that set train_cfg.max_iters, split as a shell would."""
    lines = text.replace('\\\n', ' ').splitlines()
    return [shlex.split(line.strip().strip('`')) for line in lines if 'det_train.py' in line and 'max_iters=' in line]


@pytest.mark.parametrize('source', ['tools/det_train.py', 'README.md'])
def test_documented_short_run_sizes_the_lr_schedule(source: str) -> None:
    """The documented short run changes the warm-up, the cosine schedule and the validation with max_iters."""
    text = (REPO_ROOT / source).read_text()
    commands = _short_run_commands(text)
    assert commands, f'{source} documents no short det_train.py run'
    for command in commands:
        options = dict(option.split('=', 1) for option in command[command.index('--cfg-options') + 1:])
        cfg = load_config(command[command.index('tools/det_train.py') + 1],
                          cfg_options={key: int(value) for key, value in options.items()})
        max_iters = cfg.train_cfg.max_iters
        warmup, cosine = cfg.param_scheduler
        assert cfg.train_cfg.val_interval == cosine.end == max_iters, command
        assert 0 < warmup.end == cosine.begin < max_iters, command


def test_backbone_windows_keep_their_224_side():
    """Detection inputs get more windows of the 224 side (Swin-like cost), unless window_img_size=None."""
    from asvit_zoo.detection.backbone import AsViT as AsViTBackbone
    fixed = AsViTBackbone(arch='asvit_seed')
    assert [stage.blocks[0].window_side for stage in fixed.model.stages] == [28, 28, 14, 7]
    per_split = AsViTBackbone(arch='asvit_seed', window_img_size=None)
    assert all(stage.blocks[0].window_side is None for stage in per_split.model.stages)


@pytest.mark.parametrize('tool', ['det_train.py', 'det_test.py', 'det_infer.py', 'make_det_data.py'])
def test_every_tool_option_has_a_help_text(tool: str, monkeypatch: pytest.MonkeyPatch):
    parser = parser_of(runpy.run_path(str(REPO_ROOT / 'tools' / tool), run_name='not_main')['main'], monkeypatch)
    assert parser._actions[1:] and options_without_help(parser) == []
