"""The As-ViT model: equality with the authors' code, size parity, any input size, timm citizenship."""
import math
import re
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode

import asvit_zoo
from asvit_zoo import asvit
from asvit_zoo.asvit import (CPU_PLAIN_ATTN_MAX_TOKENS, AsViT, AsViTBlock, WindowAttention, checkpoint_filter_fn,
                             stage_grid_sides, unfold_nhwc, window_grid)
from asvit_zoo.cost import count_macs, param_count
from asvit_zoo.registry import load_registry
from asvit_zoo.retokenization import schedule_cost

from conftest import GOLDEN_NETWORKS

LARGE = '8,2,3,5|4,1,2,2|4,1,4,5|4,1,6,2|32,180'
VARIANTS = [card.name for card in load_registry()]
SMALL_INPUT = (3, 32, 32)


def _golden_model(reference_dir: Path, expected: dict, name: str) -> AsViT:
    kwargs = dict(genotype=expected['genotype'], num_classes=expected['num_classes'])
    if expected['seed_form']:
        kwargs['embed_dim'] = expected['embed_dim']
    return timm.create_model(
        'asvit', pretrained=True,
        pretrained_cfg_overlay=dict(file=str(reference_dir / f'{name}.weights.safetensors')), **kwargs).eval()


# --------------------------------------------------------------------------- equality with the authors
@pytest.mark.parametrize('num_classes', [5, 0])
def test_authors_weights_load_under_another_classifier(reference_dir, reference_expected, num_classes):
    """The README's recipe for the authors' weights: a model with another head keeps their backbone."""
    name = GOLDEN_NETWORKS[0]
    expected = reference_expected[name]
    golden = _golden_model(reference_dir, expected, name)
    model = _golden_model(reference_dir, dict(expected, num_classes=num_classes), name)
    assert model.num_classes == num_classes and model.pretrained_cfg['num_classes'] == expected['num_classes']
    x = load_file(reference_dir / f'{name}.io.safetensors')['input']
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), golden.forward_features(x))

@pytest.mark.parametrize('name', GOLDEN_NETWORKS)
@pytest.mark.parametrize('attention', [dict(), dict(cpu_plain_max_tokens=0), dict(enable=False)],
                         ids=['default', 'sdpa', 'matmul'])
def test_golden_outputs(reference_dir, reference_expected, name, attention):
    expected = reference_expected[name]
    model = _golden_model(reference_dir, expected, name)
    model.set_fused_attn(**attention)
    io = load_file(reference_dir / f'{name}.io.safetensors')
    with torch.no_grad():
        final, stages = model.forward_intermediates(io['input'])
        logits = model.forward_head(final)
    assert param_count(model) == expected['params_num_classes10']
    assert torch.allclose(logits, io['logits'], atol=1e-4, rtol=0)
    assert torch.allclose(final.mean(dim=(1, 2)), io['pooled_after_norm'], atol=1e-4, rtol=0)
    assert torch.allclose(stages[-1].mean(dim=(2, 3)), io['pooled_before_norm'], atol=1e-4, rtol=0)
    for i, stage in enumerate(stages):
        tokens = stage.flatten(2).transpose(1, 2)  # (B, tokens in row-major grid order, C)
        assert tokens.shape == io[f'stage{i}_tokens'].shape
        assert torch.allclose(tokens, io[f'stage{i}_tokens'], atol=1e-4, rtol=0), f'stage {i}'


@pytest.mark.parametrize('name', GOLDEN_NETWORKS)
def test_golden_parameter_count_at_1000_classes(reference_expected, name):
    expected = reference_expected[name]
    model = AsViT(expected['genotype'], embed_dim=expected['embed_dim'] if expected['seed_form'] else None,
                  num_classes=1000)
    assert param_count(model) == expected['params_224_1000cls']


def test_authors_state_dict_keys_all_convert(reference_dir, reference_expected):
    for name in GOLDEN_NETWORKS:
        expected = reference_expected[name]
        model = _golden_model(reference_dir, expected, name)
        converted = checkpoint_filter_fn(load_file(reference_dir / f'{name}.weights.safetensors'), model)
        assert set(converted) == set(model.state_dict())
        assert sorted(expected['state_dict_keys']) == sorted(load_file(reference_dir / f'{name}.weights.safetensors'))


def test_checkpoint_filter_passes_our_layout_through():
    model = AsViT('8,2,3|4,1,2|4,1,4|4,1,6|32', embed_dim=16, num_classes=5)
    ours = model.state_dict()
    wrapped = {'state_dict': {f'module.{k}': v for k, v in ours.items()}}
    converted = checkpoint_filter_fn(wrapped, model)
    assert converted.keys() == ours.keys()
    assert all(converted[k] is ours[k] for k in ours)
    # the authors' (None) attention-mask buffers of shifted windows are dropped, in their layout and ours
    masked = checkpoint_filter_fn({**ours, 'layers.0.blocks.0.attn_mask': None, 'stages.0.blocks.0.attn_mask': None})
    assert masked.keys() == ours.keys()


# --------------------------------------------------------------------------- size parity
def test_large_size_parity():
    model = timm.create_model('asvit', genotype=LARGE)
    assert param_count(model) == 87_580_820
    gmacs = count_macs(model, (3, 224, 224)) / 1e9
    assert abs(gmacs - 22.36) / 22.36 <= 0.01, gmacs


def test_macs_count_attention_whether_fused_or_not():
    model = timm.create_model('asvit_seed')
    fused = count_macs(model, (3, 96, 80))
    model.set_fused_attn(False)
    model.stages[1].eval()  # one module's mode, left as the caller set it
    assert count_macs(model, (3, 96, 80)) == fused
    assert model.training and not model.stages[1].training and model.stages[2].training
    with pytest.raises(ValueError, match=re.escape('input_size must be (C, H, W), three integers >= 1, got (96, 80)')):
        count_macs(model, (96, 80))
    with pytest.raises(ValueError, match=re.escape('input_size must be (C, H, W), three integers >= 1, got (96, 80)')):
        schedule_cost(model, 'short', (96, 80))
    assert count_macs(torch.nn.ReLU(), (3, 8, 8)) == 0  # a module without parameters runs on the CPU in float32


# --------------------------------------------------------------------------- any input size
@pytest.mark.parametrize('size', [(28, 28), (32, 32), (64, 64), (224, 224), (256, 256), (320, 320), (96, 160),
                                  (61, 47)])
def test_any_input_size(size):
    model = timm.create_model('asvit_seed', num_classes=7).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        stages = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    h, w = size
    for i, stage in enumerate(stages):
        h, w = math.ceil(h / (4 if i == 0 else 2)), math.ceil(w / (4 if i == 0 else 2))
        assert stage.shape[-2:] == (h, w), (i, stage.shape)
    assert [tuple(stage.shape[-2:]) for stage in stages] == list(zip(*map(stage_grid_sides, size)))


def test_detection_size_800x1333():
    model = timm.create_model('asvit_seed', features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 800, 1333))
    assert [tuple(m.shape[-2:]) for m in maps] == [(200, 334), (100, 167), (50, 84), (25, 42)]
    assert [m.shape[1] for m in maps] == model.feature_info.channels()


@pytest.mark.parametrize('grid', [(7, 7), (5, 9), (1, 3), (8, 8)])
@pytest.mark.parametrize('split', [1, 2, 4])
@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'matmul'])
def test_padded_windows_equal_unpadded_attention(grid, split, fused):
    """Windows of a grid that does not divide evenly attend over their real tokens only."""
    torch.manual_seed(0)
    block = AsViTBlock(dim=12, num_heads=2, split=split, mlp_ratio=2).eval()
    block.attn.fused_attn = fused
    block.attn.cpu_plain_attn_max_tokens = 0  # SDPA in the small windows too
    x = torch.randn(2, *grid, 12)
    with torch.no_grad():
        got = block._attention(x)
        want = torch.empty_like(x)
        (win_h, n_h), (win_w, n_w) = window_grid(grid[0], split), window_grid(grid[1], split)
        for i in range(n_h):
            for j in range(n_w):
                window = x[:, i * win_h:(i + 1) * win_h, j * win_w:(j + 1) * win_w]
                b, h, w, c = window.shape
                out = block.attn(window.reshape(b, h * w, c))
                want[:, i * win_h:(i + 1) * win_h, j * win_w:(j + 1) * win_w] = out.reshape(b, h, w, c)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('tokens', [1, 4, CPU_PLAIN_ATTN_MAX_TOKENS, CPU_PLAIN_ATTN_MAX_TOKENS + 1, 196])
def test_cpu_attention_takes_plain_attention_in_small_windows(monkeypatch, tokens):
    """On CPU the default attention is plain matmul-softmax in windows of at most CPU_PLAIN_ATTN_MAX_TOKENS tokens
    and SDPA in larger ones; both give SDPA's values and gradients."""
    torch.manual_seed(0)
    attn = WindowAttention(dim=24, num_heads=4).train()
    x = torch.randn(6, tokens, 24, requires_grad=True)
    g = torch.randn(6, tokens, 24)
    sdpa_calls = []
    sdpa = asvit.F.scaled_dot_product_attention
    monkeypatch.setattr(asvit.F, 'scaled_dot_product_attention', lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k))
    out = attn(x)
    grads = torch.autograd.grad(out, [x, *attn.parameters()], g)
    assert len(sdpa_calls) == (tokens > CPU_PLAIN_ATTN_MAX_TOKENS)
    attn.cpu_plain_attn_max_tokens = 0
    want = attn(x)
    want_grads = torch.autograd.grad(want, [x, *attn.parameters()], g)
    assert len(sdpa_calls) == 1 + (tokens > CPU_PLAIN_ATTN_MAX_TOKENS)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_set_fused_attn_refuses_a_window_size_that_is_not_a_count():
    model = timm.create_model('asvit_seed')
    for bad in (-1, None, 2.5, True):
        with pytest.raises(ValueError, match=rf'cpu_plain_max_tokens must be an integer >= 0 .* got {bad!r}'):
            model.set_fused_attn(True, bad)
    model.set_fused_attn(False, cpu_plain_max_tokens=0)
    assert {(m.fused_attn, m.cpu_plain_attn_max_tokens) for m in model.modules()
            if isinstance(m, WindowAttention)} == {(False, 0)}


@pytest.mark.parametrize('shape, kernel', [((2, 5, 7, 3), 3), ((3, 10, 10, 16), 4), ((1, 4, 4, 8), 2),
                                           ((2, 9, 6, 5), 5), ((2, 3, 3, 4), 3)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_unfold_nhwc_picks_the_values_of_nn_unfold(shape, kernel, dtype):
    """The merging layers' windows: on CPU an index gather, exactly nn.Unfold's values in its channel-major order;
    its gradient adds the same terms (in another order)."""
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=dtype) * 1e3).requires_grad_(True)
    B, H, W, C = shape
    out_h, out_w = (H - kernel) // 2 + 1, (W - kernel) // 2 + 1
    want = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), kernel, stride=2).transpose(1, 2).reshape(
        B, out_h, out_w, C * kernel * kernel)
    got = unfold_nhwc(x, kernel, 2)
    assert torch.equal(got, want)
    g = torch.randn_like(want)
    (grad_got,), (grad_want,) = torch.autograd.grad(got, x, g), torch.autograd.grad(want, x, g)
    tol = 1e-6 if dtype == torch.float32 else 1e-14  # the gradient sums up to 4 unit-size terms
    torch.testing.assert_close(grad_got, grad_want, rtol=tol, atol=tol)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # a copy: autocast leaves it alone
        assert torch.equal(unfold_nhwc(x, kernel, 2), want)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # count_macs: the gather costs no MACs
        assert torch.equal(unfold_nhwc(x, kernel, 2), want)
    assert counter.get_total_flops() == 0


def test_window_img_size_fixes_window_sides():
    """Windows fixed at their 224 side: equal outputs at 224, more windows of the same side on larger inputs."""
    torch.manual_seed(0)
    split_windows = timm.create_model('asvit_seed').eval()
    fixed = timm.create_model('asvit_seed', window_img_size=224).eval()
    fixed.load_state_dict(split_windows.state_dict())
    assert [stage.blocks[0].window_side for stage in fixed.stages] == [28, 28, 14, 7]  # splits 2,1,1,1 at 224
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(fixed(x), split_windows(x), atol=1e-6)
        block = fixed.stages[0].blocks[0]
        tokens = torch.randn(1, 60, 90, block.norm1.normalized_shape[0])
        got = block._attention(tokens)
        want = torch.empty_like(tokens)
        for i in range(0, 60, 28):
            for j in range(0, 90, 28):
                window = tokens[:, i:i + 28, j:j + 28]
                b, h, w, c = window.shape
                want[:, i:i + 28, j:j + 28] = block.attn(window.reshape(b, h * w, c)).reshape(b, h, w, c)
    assert torch.allclose(got, want, atol=1e-5)


def test_window_grid_every_window_has_real_tokens():
    for size in range(1, 80):
        for split in (1, 2, 4, 8):
            window, count = window_grid(size, split)
            assert count <= split and window * count >= size > window * (count - 1)
            if size % split == 0:
                assert (window, count) == (size // split, split)  # the reference's partition


# --------------------------------------------------------------------------- construction
def test_genotype_arguments():
    assert timm.create_model('asvit', genotype='8,2,3|4,1,2|4,1,4|4,1,6|32', embed_dim=24,
                             depths=(1, 2, 1, 1)).genotype == asvit_zoo.Genotype.parse(
        '8,2,3,1|4,1,2,2|4,1,4,1|4,1,6,1|32,24')
    with pytest.raises(ValueError, match='pass embed_dim'):
        timm.create_model('asvit', genotype='8,2,3|4,1,2|4,1,4|4,1,6|32')
    with pytest.raises(ValueError, match='conflicts with embed_dim=64'):
        timm.create_model('asvit', genotype=LARGE, embed_dim=64)
    with pytest.raises(TypeError, match="needs genotype="):
        timm.create_model('asvit')
    with pytest.raises(ValueError, match='K1 = 3 is outside the search space'):
        timm.create_model('asvit', genotype='3,2,3|4,1,2|4,1,4|4,1,6|32', embed_dim=32)


def test_drop_path_schedule():
    model = timm.create_model('asvit', genotype=LARGE, drop_path_rate=0.3)
    rates = [block.drop_path1.drop_prob if hasattr(block.drop_path1, 'drop_prob') else 0.
             for stage in model.stages for block in stage.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 14).tolist())


@pytest.mark.parametrize('rate', [1.0, 2.0, -0.1, '0.1', True])
def test_drop_path_rate_outside_zero_one_is_refused(rate: Any):
    # a rate of 1 or more failed only in a training forward, in torch's bernoulli_ ("p=-0.333333")
    with pytest.raises(ValueError, match=rf'drop_path_rate must be a number in \[0, 1\), got {re.escape(repr(rate))}'):
        timm.create_model('asvit_seed', drop_path_rate=rate)


def test_list_models_and_pretrained_without_weights():
    assert set(VARIANTS) <= set(timm.list_models('asvit*'))
    assert 'asvit' in timm.list_models('asvit*')
    with pytest.raises(RuntimeError, match='asvit_large_paper has no pretrained weights'):
        timm.create_model('asvit_large_paper', pretrained=True)


# --------------------------------------------------------------------------- timm model properties, every variant
@pytest.fixture(scope='module', params=VARIANTS)
def variant(request):
    torch.manual_seed(0)
    return request.param, timm.create_model(request.param)


def test_forward_backward(variant):
    name, model = variant
    model.train()
    out = model(torch.randn(2, *SMALL_INPUT))
    assert out.shape == (2, model.num_classes)
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    model.zero_grad(set_to_none=True)
    assert not no_grad, f'{name}: parameters without gradient: {no_grad}'


def test_default_cfg(variant):
    name, model = variant
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name
    assert cfg['num_classes'] == model.num_classes == 1000
    assert (tuple(cfg['mean']), tuple(cfg['std'])) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert cfg['input_size'][0] == 3
    first_conv = model.get_submodule(cfg['first_conv'])
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == 3
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert model.get_classifier().out_features == model.num_classes
    assert cfg['license'] == 'mit' and cfg['paper_ids'] == 'arXiv:2202.11921'
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *cfg['input_size']))
        assert features.shape == (1, *cfg['pool_size'], model.num_features)  # NHWC (model.output_fmt)
        assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)


def test_any_genotype_defaults_to_imagenet_normalisation():
    cfg = timm.create_model('asvit', genotype='4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,8').pretrained_cfg
    assert (cfg['mean'], cfg['std'], cfg['input_size']) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, (3, 224, 224))


def test_pool_size_of_a_tag_is_its_last_grid():
    model = timm.create_model('asvit_tiny.fmnist').eval()  # 28 px grayscale: a 1 x 1 last grid, not 7 x 7
    cfg = model.pretrained_cfg
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *cfg['input_size']))
    assert cfg['input_size'] == (1, 28, 28) and features.shape[1:3] == cfg['pool_size'] == (1, 1)


def test_reset_classifier_keeps_the_models_dtype():
    model = timm.create_model('asvit_tiny').to(torch.bfloat16).eval()
    model.reset_classifier(5)
    assert model.get_classifier().weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert model(torch.randn(1, *SMALL_INPUT, dtype=torch.bfloat16)).shape == (1, 5)


def test_num_classes_zero_and_reset_classifier(variant):
    name, model = variant
    headless = timm.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        assert headless(torch.randn(1, *SMALL_INPUT)).shape == (1, headless.num_features)
    headless.reset_classifier(3)
    with torch.no_grad():
        assert headless(torch.randn(1, *SMALL_INPUT)).shape == (1, 3)
    headless.reset_classifier(0, '')  # no pooling: per-token pre-logits, NHWC
    with torch.no_grad():
        tokens = headless(torch.randn(1, *SMALL_INPUT))
    assert tokens.shape == (1, SMALL_INPUT[1] // 32, SMALL_INPUT[2] // 32, headless.num_features)
    with pytest.raises(ValueError, match="global_pool must be 'avg'"):
        headless.reset_classifier(0, 'max')


def test_in_chans_one(variant):
    name, _ = variant
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_features_only(variant):
    name, _ = variant
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, *SMALL_INPUT))
    assert len(maps) == 4
    for m, channels, reduction in zip(maps, model.feature_info.channels(), model.feature_info.reduction()):
        assert m.shape == (1, channels, SMALL_INPUT[1] // reduction, SMALL_INPUT[2] // reduction)
    partial = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    assert partial.feature_info.reduction() == [8, 32]


@pytest.mark.parametrize('feature_cls', ['list', 'dict', 'hook', 'fx'])
def test_every_timm_feature_extractor_gives_the_stage_outputs(feature_cls):
    """timm's other feature extractors (module list, hooks, torch.fx graph) return the stages' NHWC outputs, as
    for Swin; the default one (NCHW) holds the same values."""
    x = torch.randn(2, 3, 72, 56)  # odd token grids: padded windows and merges, which torch.fx does not trace
    torch.manual_seed(0)
    default = timm.create_model('asvit_seed', features_only=True, out_indices=(1, 3)).eval()
    torch.manual_seed(0)
    other = timm.create_model('asvit_seed', features_only=True, out_indices=(1, 3), feature_cls=feature_cls).eval()
    with torch.no_grad():
        expected, maps = default(x), other(x)
    maps = list(maps.values()) if isinstance(maps, dict) else maps
    assert [tuple(m.shape) for m in maps] == [(2, 9, 7, 64), (2, 3, 2, 256)]
    for m, e in zip(maps, expected):
        torch.testing.assert_close(m.permute(0, 3, 1, 2), e, rtol=0, atol=1e-6)


def test_forward_intermediates_match_forward_features(variant):
    _, model = variant
    model.eval()
    x = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert torch.allclose(model.forward_head(final), model(x))
        nhwc = model.forward_intermediates(x, indices=[1, 2], output_fmt='NHWC', intermediates_only=True)
        for a, b in zip(nhwc, stages[1:3]):
            assert torch.equal(a.permute(0, 3, 1, 2), b)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        assert torch.allclose(normed.permute(0, 2, 3, 1), final)


def test_prune_intermediate_layers(variant):
    name, _ = variant
    model = timm.create_model(name).eval()
    x = torch.randn(1, *SMALL_INPUT)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.stages) == 2
    with torch.no_grad():
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # without the last stage, the features end at stage 1: no final norm or head sized for stage 3
    assert model.num_features == model.head_hidden_size == model.feature_info[1]['num_chs']
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, indices=[1])
        pooled = model(x)
    assert torch.equal(final.permute(0, 3, 1, 2), intermediates[0]) and torch.equal(final, model.forward_features(x))
    assert torch.allclose(pooled, final.mean((1, 2))) and pooled.shape == (1, model.num_features)


def test_grad_checkpointing_equality(variant):
    _, model = variant
    model.eval()
    x = torch.randn(2, *SMALL_INPUT)
    plain = model(x)
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    try:
        checkpointed = model(x)
        checkpointed.sum().backward()
    finally:
        model.set_grad_checkpointing(False)
    assert torch.allclose(plain, checkpointed)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n
    model.zero_grad(set_to_none=True)


def test_group_matcher_gives_layer_decay_by_depth(variant):
    _, model = variant
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): group['lr_scale'] for group in optimizer.param_groups for p in group['params']}
    stem = scale[id(model.patch_embed.proj.weight)]
    first_block = scale[id(model.stages[0].blocks[0].attn.qkv.weight)]
    last_block = scale[id(model.stages[-1].blocks[-1].mlp.fc2.weight)]
    head = scale[id(model.head.fc.weight)]
    assert stem < first_block < last_block < head == 1.0
    assert len(scale) == len(list(model.parameters()))


def test_torchscript(variant):
    _, model = variant
    model.eval()
    scripted = torch.jit.script(model)
    for size in [(32, 32), (44, 36)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert torch.allclose(scripted(x), model(x), atol=1e-6)


@pytest.mark.timeout(300)
def test_torch_compile_fixes_each_new_image_size():
    """A changed input size makes Dynamo trace sizes as symbols; the image side must come out as a constant
    (before: the padded token grids' shape formulas took the compiler more than ten minutes)."""
    graph_inputs = []

    def recording_backend(graph: torch.fx.GraphModule, example_inputs: list) -> Any:
        graph_inputs.append(example_inputs)
        return graph.forward

    torch._dynamo.reset()  # Dynamo remembers the sizes other tests compiled these functions at
    model = timm.create_model('asvit_tiny').eval()
    compiled = torch.compile(model, backend=recording_backend)
    with torch.no_grad():
        for size in [(64, 64), (72, 60), (31, 33)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(compiled(x), model(x))
    assert len(graph_inputs) == 3
    for inputs in graph_inputs:  # the image sides are constants (a batch size may be symbolic)
        assert all(isinstance(d, int) for i in inputs if isinstance(i, torch.Tensor) for d in i.shape[-2:])


def test_torch_export_takes_a_dynamic_batch_at_a_fixed_image_size():
    model = timm.create_model('asvit_tiny').eval()
    batch = torch.export.Dim('batch', min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 40, 36),), dynamic_shapes={'x': {0: batch}})
    for n in (1, 5):
        x = torch.randn(n, 3, 40, 36)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x))
