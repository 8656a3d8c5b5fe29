"""Elastic stage-1 tokenizer and progressive re-tokenization schedules (spec section 6)."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from asvit_zoo.asvit import AsViT
from asvit_zoo.cost import CPU_ATTENTION_FLOPS
from asvit_zoo.retokenization import (
    SCHEDULES, Phase, RetokenizationSchedule, parse_schedule, parse_tokenizer, plot_schedule, schedule_cost)
from asvit_zoo.train import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,8'
SETTINGS = ((4, 1), (5, 1), (6, 1), (8, 1), (8, 2), (3, 2), (16, 2), (2, 3))
SIZES = ((28, 28), (32, 32), (31, 31), (33, 29), (17, 40))


def _tiny(num_classes: int = 10, in_chans: int = 3) -> AsViT:
    torch.manual_seed(0)
    return AsViT(TINY, num_classes=num_classes, in_chans=in_chans)


def _grid(size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


# --------------------------------------------------------------------------- elastic tokenizer
def test_set_tokenizer_leaves_every_weight_untouched():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for stride, dilation in SETTINGS:
        model.set_tokenizer(stride, dilation)
        model(torch.randn(2, 3, 31, 31))
        after = model.state_dict()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before), (stride, dilation)
    model.set_tokenizer(4, 1)
    assert model.patch_embed.proj.weight.shape == (model.embed_dim, 3, 4, 4)


@pytest.mark.parametrize('size', SIZES)
def test_token_grid_and_output_shapes_at_every_setting(size):
    model = _tiny().eval()
    x = torch.randn(2, 3, *size)
    for stride, dilation in SETTINGS:
        model.set_tokenizer(stride, dilation)
        assert (model.patch_embed.stride, model.patch_embed.dilation) == (stride, dilation)
        grid = _grid(size, stride)
        tokens = model.patch_embed(x)
        assert tokens.shape == (2, *grid, model.embed_dim)
        assert model.patch_embed.grid_size(size) == grid
        with torch.no_grad():
            assert model(x).shape == (2, 10)
            intermediates = model.forward_intermediates(x, intermediates_only=True)
        assert [info['reduction'] for info in model.feature_info] == [stride, 2 * stride, 4 * stride, 8 * stride]
        for info, feat in zip(model.feature_info, intermediates):
            assert feat.shape == (2, info['num_chs'], *grid), (size, stride, dilation)
            grid = _grid(grid, 2)


def test_gradients_reach_every_parameter_at_every_setting():
    model = _tiny()
    x, y = torch.randn(4, 3, 29, 29), torch.tensor([0, 1, 2, 3])
    for stride, dilation in SETTINGS:
        model.set_tokenizer(stride, dilation)
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (stride, dilation, name)
            assert p.grad.abs().sum() > 0, (stride, dilation, name)


@pytest.mark.parametrize('stride, dilation', [(0, 1), (4, 0), (-2, 1), (2.7, 1), (4, 1.5), (True, 1), (10 ** 20, 1),
                                              (4, 2 ** 16 + 1)])
def test_set_tokenizer_rejects_invalid_settings(stride, dilation):
    with pytest.raises(ValueError, match=r'stride and dilation must be integers in \[1, 65536\]'):
        _tiny().set_tokenizer(stride, dilation)


def test_every_token_reads_the_image_while_the_dilation_is_at_most_the_side():
    """The premise of the forward pass's shortcut, checked tap by tap (the padding is the model's own)."""
    from asvit_zoo.asvit import _same_padding

    for size, kernel, stride in itertools.product(range(1, 40), (2, 4, 7, 8), range(1, 45)):
        for dilation in range(1, size + 1):
            before, _ = _same_padding(size, kernel, stride, dilation)
            assert all(any(0 <= i * stride - before + j * dilation < size for j in range(kernel))
                       for i in range(math.ceil(size / stride))), (size, kernel, stride, dilation)


def test_set_tokenizer_takes_integers_of_any_kind():
    import numpy as np

    model = _tiny()
    model.set_tokenizer(np.int64(8), torch.tensor(2))
    assert (model.patch_embed.proj.stride, model.patch_embed.proj.dilation) == ((8, 8), (2, 2))
    assert type(model.patch_embed.stride) is int
    with pytest.raises(ValueError, match='must be integers'):
        model.set_tokenizer(np.float64(8))


def test_a_setting_whose_tokens_read_only_padding_is_refused_by_the_forward_pass():
    model, x = _tiny(in_chans=1), torch.randn(1, 1, 28, 28)
    model.set_tokenizer(4, 4)  # the dilated kernel spans 29 pixels: each token still reads the image
    assert model(x).shape == (1, 10)
    model.set_tokenizer(4, 30)  # a tap every 30 pixels: the middle tokens fall between the image's sides
    with pytest.raises(ValueError, match='tokenizer stride 4, dilation 30 on a 28x28 image: with kernel 4, token 3 '
                                         'of 7 would read only padding of a side of 28 pixels'):
        model(x)
    model.set_tokenizer(64, 1)  # one token; a stride past the side is allowed
    assert model.forward_features(x).shape[1:3] == (1, 1)
    model.set_tokenizer(4, 2 ** 16)  # refused before any padding is allocated
    with pytest.raises(ValueError, match='token 0 of 7 would read only padding'):
        model(x)


# --------------------------------------------------------------------------- schedules
def test_parse_schedule_forms_agree():
    text = '0.5:8:2,0.25:6:1,0.25:4:1'
    expected = RetokenizationSchedule((Phase(0.5, 8, 2), Phase(0.25, 6, 1), Phase(0.25, 4, 1)))
    assert parse_schedule(text) == expected
    assert parse_schedule(' 0.5:8:2 , 0.25:6 , 0.25:4:1 ') == expected  # dilation defaults to 1
    assert parse_schedule([[0.5, 8, 2], [0.25, 6, 1], [0.25, 4, 1]]) == expected
    assert parse_schedule(json.loads('[{"fraction": 0.5, "stride": 8, "dilation": 2}, '
                                     '{"fraction": 0.25, "stride": 6}, {"fraction": 0.25, "stride": 4}]')) == expected
    assert str(expected) == text and parse_schedule(str(expected)) == expected
    thirds = parse_schedule([[1 / 3, 16, 2], [1 / 3, 8, 2], [1 / 3, 4, 1]])  # str keeps each fraction exactly
    assert parse_schedule(str(thirds)) == thirds and str(thirds).startswith('0.3333333333333333:16:2,')
    for name, spec in SCHEDULES.items():
        assert parse_schedule(name) == parse_schedule(spec)
    assert parse_schedule('full').phases == (Phase(1.0, 4, 1),)


@pytest.mark.parametrize('spec, message', [
    ('0.5:8:2,0.25:4:1', 'fractions must sum to 1, got 0.75'),
    ('0.5:8:2,0.6:4:1', 'fractions must sum to 1, got 1.1'),
    ('0.5:4:1,0.5:8:2', 'last phase must train on the full token grid'),
    ('1:4:2', 'last phase must train on the full token grid'),
    ('0.5:0:1,0.5:4:1', 'phase 1 .*stride must be an integer >= 1'),
    ('0.5:8:0,0.5:4:1', 'phase 1 .*dilation must be an integer >= 1'),
    ('0:8:1,1:4:1', r'phase 1: fraction must be a number in \(0, 1\]'),
    ('0.5-8-2,0.5:4:1', r'phase 1: expected "fraction:stride\[:dilation\]"'),
    ('0.5:8:2:1,0.5:4:1', 'phase 1: expected'),
    ('0.5:eight:2,0.5:4:1', 'phase 1: expected'),
    ('', r'expected a name \(full, short, paper\) or "fraction:stride\[:dilation\],...", got \'\''),
    ('shrot', r'expected a name \(full, short, paper\) or .*, got \'shrot\''),
    ('0.5:٨:2,0.5:4:1', 'phase 1: expected'),  # plain ASCII digits only, as in genotypes
    ('0.5:8_0:2,0.5:4:1', 'phase 1: expected'),
    ('nan:8:2,0.5:4:1', 'phase 1: expected'),
    ([['0.5', 8, 2], [0.5, 4, 1]], r"phase 1: fraction must be a number in \(0, 1\], got '0.5'"),
    ([[None, 8, 2], [1, 4, 1]], r'phase 1: fraction must be a number in \(0, 1\], got None'),
    ([[True, 4, 1]], r'phase 1: fraction must be a number in \(0, 1\], got True'),
    ([], 'at least one phase'),
    ([{'fraction': 1, 'stride': 4, 'dilatation': 1}], 'phase 1: expected keys fraction, stride'),
    (3, 'a name, a string or a list of phases'),
])
def test_parse_schedule_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(spec)


@pytest.mark.parametrize('spec, expected', [('8:2', (8, 2)), (' 6 ', (6, 1)), ('4:1', (4, 1)), ((16, 2), (16, 2))])
def test_parse_tokenizer(spec, expected):
    assert parse_tokenizer(spec) == expected


@pytest.mark.parametrize('spec', ['', '8:2:1', 'eight:2', '0:1', '8:0', '4.0', (1.5, 2), 8, None, '4_0:1', '٨:2',
                                  '+8'])
def test_parse_tokenizer_errors_name_the_setting(spec):
    message = r'expected "stride\[:dilation\]" with integers >= 1 .*got ' + re.escape(repr(spec))
    with pytest.raises(ValueError, match=message):
        parse_tokenizer(spec)


def test_phase_of_each_step():
    schedule = parse_schedule('0.6:8:2,0.2:6:1,0.2:4:1')
    assert [schedule.phase_index(i, 10) for i in range(10)] == [0] * 6 + [1] * 2 + [2] * 2
    assert [schedule.phase_index(i, 7) for i in range(7)] == [0, 0, 0, 0, 0, 1, 2]
    assert schedule.phase_at(9, 10) == Phase(0.2, 4, 1)
    with pytest.raises(ValueError, match='outside'):
        schedule.phase_index(10, 10)
    # exact however long the run: half of 2,000,000 steps is 1,000,000 (a float tolerance moved 2 steps)
    halves = parse_schedule('0.5:8:2,0.5:4:1')
    assert halves.phase_ends(2_000_000) == (1_000_000, 2_000_000)
    assert (halves.phase_index(999_999, 2_000_000), halves.phase_index(1_000_000, 2_000_000)) == (0, 1)
    assert parse_schedule('0.3:16:2,0.4:8:2,0.3:4:1').phase_ends(10) == (3, 7, 10)  # 0.3 + 0.4 is 0.7, not more


def test_a_run_too_short_for_every_phase_is_refused(tmp_path):
    schedule = parse_schedule('0.9:8:2,0.1:4:1')
    schedule.check_steps(10)
    assert [schedule.phase_index(i, 10) for i in range(10)] == [0] * 9 + [1]
    with pytest.raises(ValueError, match=r'phase 2 \(0.1:4:1\) gets none of the 5 training steps'):
        schedule.check_steps(5)
    tail = parse_schedule(SCHEDULES['short']).phases[-1]
    with pytest.raises(ValueError, match=re.escape(f'phase 2 ({tail}) gets none of the 2 training steps')):
        train(TrainConfig(genotype=TINY, data='synthetic', img_size=16, synthetic_train=8, synthetic_eval=4,
                          batch_size=4, epochs=1, workers=0, device='cpu', retokenization='short'), tmp_path / 'run')


def _macs_counted(model: AsViT, stride: int, dilation: int, input_size: Tuple[int, int, int]) -> int:
    """Forward MACs of one image, counted here with FlopCounterMode directly."""
    model.set_tokenizer(stride, dilation)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        model.eval()(torch.zeros(1, *input_size))
    model.set_tokenizer(4, 1)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize('input_size', [(3, 28, 28), (1, 33, 31)])
def test_schedule_cost_is_the_exact_flop_counter_account(input_size):
    model = _tiny(in_chans=input_size[0])
    model.set_tokenizer(5, 1)
    spec = '0.5:8:2,0.2:6:1,0.1:5:1,0.2:4:1'
    cost = schedule_cost(model, spec, input_size)
    assert (model.patch_embed.stride, model.patch_embed.dilation) == (5, 1)  # restored
    schedule = parse_schedule(spec)
    macs = [_macs_counted(model, p.stride, p.dilation, input_size) for p in schedule.phases]
    full = _macs_counted(model, 4, 1, input_size)
    assert list(cost.macs) == macs and cost.full_macs == full
    assert cost.tokens == tuple(math.prod(_grid(input_size[1:], p.stride)) for p in schedule.phases)
    assert cost.relative_macs == pytest.approx(sum(p.fraction * m for p, m in zip(schedule.phases, macs)) / full,
                                               rel=1e-12)
    assert macs[0] < macs[1] < macs[2] < macs[3] == full
    assert 0 < cost.relative_macs < 1
    assert cost.macs_of(6, 1) == macs[1]
    assert 'relative to full tokens' in cost.table()


def test_full_schedule_costs_exactly_full_training():
    cost = schedule_cost(_tiny(), 'full', (3, 32, 32))
    assert cost.relative_macs == 1.0 and cost.macs == (cost.full_macs,)


def test_short_schedule_saves_40_percent_on_the_fashion_mnist_recipe_model():
    recipe = json.loads((REPO_ROOT / 'recipes' / 'fmnist_tiny.json').read_text())
    model = AsViT(recipe['genotype'], num_classes=10, in_chans=1)
    cost = schedule_cost(model, 'short', (1, recipe['img_size'], recipe['img_size']))
    assert cost.relative_macs <= 0.6


def test_plot_schedule_writes_a_png_and_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    cost = schedule_cost(_tiny(), 'paper', (3, 64, 64))
    before = matplotlib.get_backend()
    matplotlib.use('svg')  # a user's backend (a notebook's, say): a plot of ours must not switch it to Agg
    try:
        path = plot_schedule(cost, tmp_path / 'schedule.png')
        assert matplotlib.get_backend() == 'svg' and plt.get_fignums() == []
    finally:
        matplotlib.use(before)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
