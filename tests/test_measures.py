"""Training-free measures (asvit_zoo.measures) and ``asvit measure``: golden equality with the authors' code,
finite-difference checks of the forward-mode derivatives, the one-pass NTK against per-sample backward
passes, determinism, bad networks and the CLI."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.func import jvp

from asvit_zoo import AsViT, checkpoint_filter_fn
from asvit_zoo.asvit import CPU_PLAIN_ATTN_MAX_TOKENS
from asvit_zoo import measures as M
from asvit_zoo.cli import main
from asvit_zoo.registry import registry_root
from conftest import GOLDEN_NETWORKS, torchrun

# Small networks (32 and 40 px). The second has odd kernels and token grids that splits do not divide,
# so its windows are padded and masked.
TINY = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,8'
MASKED = '5,4,3,2|3,2,2,1|2,2,2,1|2,1,2,1|16,8'
JSON_KEYS = {'exp', 'curvature', 'combined', 'ntk', 'ntk_eigenvalues', 'params', 'gmacs', 'seconds'}


def _net(genotype: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> AsViT:
    torch.manual_seed(seed)
    return AsViT(genotype, num_classes=10).to(dtype).eval()


def _golden(reference_dir: Path, expected: dict, name: str):
    model = AsViT(expected['genotype'], embed_dim=expected['embed_dim'] if expected['seed_form'] else None,
                  num_classes=expected['num_classes'])
    model.load_state_dict(checkpoint_filter_fn(load_file(reference_dir / f'{name}.weights.safetensors'), model))
    return model, load_file(reference_dir / f'{name}.io.safetensors')


def _float32_gram_as_authors(rows: np.ndarray, lanes: int = 4) -> np.ndarray:
    """The authors' float32 Gram matrix: each dot product summed sequentially in float32, in ``lanes`` lanes."""
    n = len(rows)
    gram = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            products = rows[i] * rows[j]
            products = np.pad(products, (0, (-len(products)) % lanes)).reshape(-1, lanes)
            gram[i, j] = gram[j, i] = np.cumsum(products, axis=0, dtype=np.float32)[-1].sum(dtype=np.float32)
    return gram


# --------------------------------------------------------------------------- golden equality
@pytest.mark.parametrize('name', GOLDEN_NETWORKS)
def test_golden_length_distortion(reference_dir, reference_expected, name):
    expected = reference_expected[name]
    model, io = _golden(reference_dir, expected, name)
    le = M.length_distortion(model, io['curve_basis'], io['curve_theta'])
    assert le == pytest.approx(expected['length_distortion_norms_identity'], rel=1e-4)


@pytest.mark.parametrize('name', GOLDEN_NETWORKS)
def test_golden_ntk(reference_dir, reference_expected, name):
    """Our per-sample gradients, put through the authors' float32 Gram accumulation, give their eigenvalues
    and condition number to 1e-4; our exact (float64-accumulated) values differ from theirs only by that
    accumulation (0.04-0.25% on these fixtures)."""
    expected = reference_expected[name]
    model, io = _golden(reference_dir, expected, name)
    golden = torch.tensor(expected['ntk_eigenvalues'], dtype=torch.float64)

    jacobian = M.ntk_jacobian(model, io['ntk_inputs'])
    authors_order = checkpoint_filter_fn(dict.fromkeys(expected['ntk_weight_params']), model)
    assert set(jacobian) <= set(authors_order)  # parameters without a gradient (final norm, head) are left out
    rows = torch.cat([jacobian[k] for k in authors_order if k in jacobian], 1).numpy()
    replayed = torch.linalg.eigvalsh(torch.from_numpy(_float32_gram_as_authors(rows)))
    torch.testing.assert_close(replayed, golden, rtol=1e-4, atol=0)
    assert float(replayed[-1] / replayed[0]) == pytest.approx(expected['ntk_condition'], rel=1e-4)

    cond, eigenvalues = M.ntk_condition(model, io['ntk_inputs'])
    exact = torch.linalg.eigvalsh(torch.from_numpy(rows).double() @ torch.from_numpy(rows).double().T)
    torch.testing.assert_close(eigenvalues, exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(eigenvalues, golden, rtol=3e-3, atol=0)
    assert cond == pytest.approx(expected['ntk_condition'], rel=3e-3)


def test_cli_measures_golden_weights_and_inputs(reference_dir, reference_expected, capsys):
    name = 'scaled_small64'
    expected = reference_expected[name]
    argv = ['measure', expected['genotype'], '--weights', str(reference_dir / f'{name}.weights.safetensors'),
            '--inputs', str(reference_dir / f'{name}.io.safetensors'), '--which', 'exp,ntk', '--json']
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['exp'] == pytest.approx(expected['length_distortion_norms_identity'], rel=1e-4)
    assert out['ntk'] == pytest.approx(expected['ntk_condition'], rel=1e-3)
    assert out['ntk_eigenvalues'] == pytest.approx(expected['ntk_eigenvalues'], rel=1e-3)
    assert out['params'] == expected['params_num_classes10'] and out['curvature'] is None and not out['bad']


# --------------------------------------------------------------------------- derivatives (float64)
@pytest.mark.parametrize('genotype,size', [(TINY, 32), (MASKED, 40)])
def test_length_distortion_and_curvature_match_finite_differences(genotype, size):
    model = _net(genotype, dtype=torch.float64)
    basis, thetas = M.default_curve(size, seed=1)
    basis, thetas = basis.double(), thetas.double()
    net = M.curve_network(model)
    shape = (3, size, size)

    def f(angles):
        with torch.no_grad():
            return M.pooled_before_norm(net, M.curve_points(basis, angles, shape)[0])

    h = 1e-3
    d1 = (f(thetas + h) - f(thetas - h)) / (2 * h)
    d2 = (f(thetas + h) - 2 * f(thetas) + f(thetas - h)) / h ** 2
    s1, s2, s12 = (d1 * d1).sum(1), (d2 * d2).sum(1), (d1 * d2).sum(1)
    kappa = (s1 * s2 - s12 ** 2).sqrt() / s1 ** 1.5

    assert M.length_distortion(model, basis, thetas) == pytest.approx(float(d1.norm(dim=1).sum()), rel=1e-6)
    result = M.curvature(model, basis, thetas)
    torch.testing.assert_close(result.speed, d1.norm(dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(result.per_point, kappa, rtol=1e-4, atol=0)
    assert result.total == pytest.approx(float(kappa.sum()), rel=1e-4)
    assert result.combined == pytest.approx(float((kappa * d1.norm(dim=1)).sum()), rel=1e-4)


def _math_attention(q, k, v, mask, scale):
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


@pytest.mark.parametrize('shift_bound', [0., math.inf], ids=['row-max-shift', 'bound-shift'])
@pytest.mark.parametrize('mask_kind', [None, 'keys', 'bool', 'float'])
def test_attention_jvp_equals_autograd_jvp(monkeypatch, shift_bound, mask_kind):
    """The blockwise attention JVP of the length-distortion pass against torch.func.jvp of the textbook
    attention (float64): both row shifts, boolean key masks as the model's padded windows make them, full
    boolean and additive masks, large scores, several blocks."""
    monkeypatch.setattr(M, 'SHIFT_BOUND', shift_bound)
    monkeypatch.setattr(M, 'SCORE_BLOCK', 70)  # 2 of the 6 (batch, head) groups per block
    gen = torch.Generator().manual_seed(0)
    q, k, v, dq, dk, dv = (torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64) for _ in range(6))
    q = q * 10  # scores up to about 40: the bound shift then leaves weights near exp(-80)
    mask = {None: None,
            'keys': torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool).view(2, 1, 1, 6),
            'bool': torch.rand(2, 3, 6, 6, generator=gen) > 0.4,
            'float': torch.randn(6, 6, generator=gen, dtype=torch.float64)}[mask_kind]
    if mask_kind == 'bool':
        mask[..., 0] = True  # no row without a key
    scale = 0.5
    out, tangent = M._attention_jvp(q, k, v, dq, dk, dv, mask, scale)
    expected, expected_tangent = jvp(lambda *qkv: _math_attention(*qkv, mask, scale), (q, k, v), (dq, dk, dv))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('score_size', [1., 30.])
def test_attention_jvp_in_float32_picks_a_safe_shift(score_size):
    """Small scores take the bound shift; scores near 100 (exp overflows float32, and the bound is loose
    enough to underflow every weight of a row) take the row maximum: both stay within float32 rounding of
    the float64 values."""
    gen = torch.Generator().manual_seed(1)
    q, k, v, dq, dk, dv = (torch.randn(2, 3, 50, 8, generator=gen) for _ in range(6))
    q = q * score_size
    expected = jvp(lambda *qkv: _math_attention(*qkv, None, 8 ** -0.5),
                   tuple(t.double() for t in (q, k, v)), tuple(t.double() for t in (dq, dk, dv)))
    got = M._attention_jvp(q, k, v, dq, dk, dv, None, 8 ** -0.5)
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize('genotype,size,trained_norms', [(TINY, 32, False), (MASKED, 40, False), (TINY, 32, True)])
def test_ntk_one_pass_equals_per_sample_backward(genotype, size, trained_norms):
    """The authors' method (one backward pass per sample) and ours give the same gradients and Gram matrix,
    for fresh LayerNorms (weight 1, bias 0: x_hat is their output) and for LayerNorms as training leaves them."""
    model = _net(genotype, dtype=torch.float64)
    if trained_norms:
        gen = torch.Generator().manual_seed(4)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                with torch.no_grad():
                    m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
    inputs = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    jacobian = M.ntk_jacobian(model, inputs)
    out = M.pooled_before_norm(model.train(), inputs)
    weights = {n: p for n, p in model.named_parameters() if 'weight' in n}
    for i in range(len(inputs)):
        model.zero_grad()
        out[i].sum().backward(retain_graph=True)
        for n, p in weights.items():
            if p.grad is None:
                assert n not in jacobian
            else:
                torch.testing.assert_close(jacobian[n][i], p.grad.flatten(), rtol=1e-10, atol=1e-14)
    rows = torch.cat(list(jacobian.values()), 1)
    torch.testing.assert_close(M.ntk_gram(model, inputs), rows @ rows.T, rtol=1e-10, atol=0)


@pytest.mark.parametrize('conv', [dict(kernel_size=5, stride=8, dilation=2), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=(3, 5), stride=(1, 2), padding=(2, 1), dilation=(1, 3))])
def test_conv_per_sample_grads_at_any_stride_dilation_and_padding(conv):
    """The stem's per-sample weight gradients (one grouped weight-gradient pass) equal one backward per sample,
    at the coarse re-tokenization settings too."""
    m = nn.Conv2d(4, 6, **conv).double()
    a = torch.randn(3, 4, 19, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = m(a)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = [torch.autograd.grad((m(a[i:i + 1]) * g[i:i + 1]).sum(), m.weight)[0].flatten() for i in range(3)]
    torch.testing.assert_close(M._conv_grads(m, a, out, g, 3), torch.stack(expected), rtol=1e-12, atol=1e-14)


def test_measures_leave_the_model_alone():
    model = _net(TINY)
    model.set_fused_attn(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    basis, thetas = M.default_curve(32)
    M.length_distortion(model, basis, thetas)
    M.curvature(model, basis, thetas)
    M.ntk_condition(model, torch.randn(4, 3, 32, 32))
    assert not model.training and not any(m.training for m in model.modules())
    assert [m for m in model.modules() if isinstance(m, nn.LayerNorm)] == norms and len(norms) == 13
    assert not any(m.fused_attn for m in model.modules() if hasattr(m, 'fused_attn'))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize('shape', [(4, 3, 32), (0, 3, 32, 32), (2, 1, 32, 32)])
def test_ntk_names_a_batch_of_the_wrong_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f'inputs (the NTK batch) must have shape (n >= 1, 3, H, W) for a '
                                                   f'model of 3 input channels, got {shape}')):
        M.ntk_gram(_net(TINY), torch.randn(shape))


@pytest.mark.parametrize('args, message', [((0,), 'image_size must be an integer >= 1, got 0'),
                                           ((32.0,), 'image_size must be an integer >= 1, got 32.0'),
                                           ((32, 3, 1, 1.5), 'seed must be an integer in')])
def test_default_curve_checks_its_arguments(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        M.default_curve(*args)


def test_measures_are_the_same_with_gradient_checkpointing_and_in_inference_mode():
    model = _net(TINY).eval()
    basis, thetas = M.default_curve(32)
    x = torch.randn(4, 3, 32, 32)

    def measures(basis: torch.Tensor, x: torch.Tensor):
        return (M.length_distortion(model, basis, thetas), M.curvature(model, basis, thetas).total,
                M.ntk_gram(model, x))

    plain = measures(basis, x)
    model.set_grad_checkpointing(True)  # the NTK pass saw its forward hooks run again in the recomputation
    checkpointed = measures(basis, x)
    assert all(stage.grad_checkpointing for stage in model.stages) and not model.training
    model.set_grad_checkpointing(False)
    with torch.inference_mode():  # inputs made there are inference tensors, which autograd refuses
        inference = measures(basis.clone(), x.clone())
    for got in (checkpointed, inference):
        assert got[:2] == plain[:2] and torch.equal(got[2], plain[2])


@pytest.mark.parametrize('measure', [M.length_distortion, M.curvature])
def test_a_failing_curve_measure_restores_the_model(monkeypatch, measure):
    # the curve measures turn the model itself into the curve network (no copy) and must undo that on errors
    model = _net(TINY).eval()
    modules = dict(model.named_modules())

    def settings(net):
        return [(m.fused_attn, m.cpu_plain_attn_max_tokens) for m in net.modules() if hasattr(m, 'fused_attn')]

    before = settings(model)

    def broken(net, x):
        assert not any(isinstance(m, nn.LayerNorm) for m in net.modules()) and net.training
        # length distortion: SDPA in every window (its forward-mode rule); curvature: plain attention
        assert set(settings(net)) == {(measure is M.length_distortion, 0)}
        raise RuntimeError('forward failed')

    monkeypatch.setattr(M, 'pooled_before_norm', broken)
    with pytest.raises(RuntimeError, match='forward failed'):
        measure(model, *M.default_curve(32))
    assert dict(model.named_modules()) == modules and not any(m.training for m in model.modules())
    assert settings(model) == before and before[0] == (True, CPU_PLAIN_ATTN_MAX_TOKENS)


# --------------------------------------------------------------------------- measure_genotype
def test_measure_genotype_is_deterministic_under_a_seed():
    kwargs = dict(image_size=32, repeat=2, which=('exp', 'ntk'))
    first = M.measure_genotype(TINY, seed=5, **kwargs)
    again = M.measure_genotype(TINY, seed=5, **kwargs)
    other = M.measure_genotype(TINY, seed=6, **kwargs)
    assert (first.exp, first.ntk, first.ntk_eigenvalues) == (again.exp, again.ntk, again.ntk_eigenvalues)
    assert first.exp != other.exp and first.ntk != other.ntk
    assert first.curvature is None and first.combined is None and not first.bad
    assert set(first.seconds) == {'exp', 'ntk'} and first.params == sum(p.numel() for p in AsViT(TINY).parameters())


def test_measure_genotype_means_over_copies():
    basis, thetas = M.default_curve(32, seed=0)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    singles = []
    for r in range(3):  # copy r is the network of seed r: each measure is the mean of the copies' own values
        torch.manual_seed(r)
        model = AsViT(TINY)
        bend = M.curvature(model, basis, thetas)
        cond, eigenvalues = M.ntk_condition(model, images)
        singles.append((M.length_distortion(model, basis, thetas), bend.total, bend.combined, cond, eigenvalues))
    exp, total, combined, cond, eigenvalues = zip(*singles)
    every = M.measure_genotype(TINY, image_size=32, repeat=3, seed=0, which=('exp', 'curvature', 'ntk'),
                               inputs=images)
    assert every.exp == pytest.approx(sum(exp) / 3, rel=1e-9)
    assert every.curvature == pytest.approx(sum(total) / 3, rel=1e-9)
    assert every.combined == pytest.approx(sum(combined) / 3, rel=1e-9)
    assert every.ntk == pytest.approx(sum(cond) / 3, rel=1e-6)
    assert every.ntk_eigenvalues == pytest.approx(torch.stack(eigenvalues).mean(0).tolist(), rel=1e-6)
    assert len({*exp}) == len({*combined}) == len({*cond}) == 3  # the copies differ: a mean of one would fail
    mean = M.measure_genotype(TINY, image_size=32, repeat=3, seed=0, which='exp').exp  # one name as which
    assert mean == pytest.approx(sum(exp) / 3, rel=1e-12)
    one_image = torch.randn(1, 3, 32, 32)  # the NTK batch is the NTK's alone: exp takes any
    assert M.measure_genotype(TINY, image_size=32, repeat=3, seed=0, which='exp', inputs=one_image).exp == mean
    with pytest.raises(ValueError, match=r'inputs \(the NTK batch\) must have shape \(n >= 2, 3, 32, 32\)'):
        M.measure_genotype(TINY, image_size=32, which=('exp', 'ntk'), inputs=one_image)


def test_dead_network_is_bad(tmp_path):
    """All LayerNorm weights zero: every activation after a norm is zero, so is every weight gradient; the
    Gram matrix is zero and its condition number 0/0."""
    model = _net(TINY)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.weight)
    cond, eigenvalues = M.ntk_condition(model, torch.randn(4, 3, 32, 32))
    assert math.isnan(cond) and torch.all(eigenvalues == 0)
    path = tmp_path / 'dead.safetensors'
    save_file(model.state_dict(), str(path))
    result = M.measure_genotype(TINY, image_size=32, weights=path, which=('ntk',))
    assert result.bad and math.isnan(result.ntk)
    assert result.to_dict()['ntk'] is None


def test_nan_weight_and_singular_gram_are_bad():
    model = _net(TINY)
    inputs = torch.randn(4, 3, 32, 32)
    assert math.isfinite(M.ntk_condition(model, inputs)[0])
    twice = torch.cat([inputs[:3], inputs[:1]])  # two equal samples: rank 3 of 4
    cond, eigenvalues = M.ntk_condition(model, twice)
    assert math.isnan(cond) and eigenvalues[0] <= 4 * torch.finfo(torch.float32).eps * eigenvalues[-1]
    with torch.no_grad():
        model.stages[2].blocks[0].mlp.fc1.weight[0, 0] = float('nan')
    cond, eigenvalues = M.ntk_condition(model, inputs)
    assert math.isnan(cond) and torch.isnan(eigenvalues).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_cpu():
    kwargs = dict(image_size=32, repeat=2, seed=1)
    cpu, gpu = M.measure_genotype(TINY, **kwargs), M.measure_genotype(TINY, device='cuda', **kwargs)
    for key in ('exp', 'curvature', 'combined', 'ntk'):
        assert getattr(gpu, key) == pytest.approx(getattr(cpu, key), rel=1e-3), key


# --------------------------------------------------------------------------- CLI
def test_cli_json(tmp_path, capsys):
    assert main(['measure', '4,2,2|2,1,2|2,1,2|2,1,2|16', '--embed-dim', '8', '--image-size', '32', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= set(out) and set(out['seconds']) == set(M.MEASURES)
    assert out['exp'] > 0 and out['curvature'] > 0 and out['combined'] > 0 and out['ntk'] >= 1
    assert len(out['ntk_eigenvalues']) == M.NTK_BATCH and out['ntk_eigenvalues'] == sorted(out['ntk_eigenvalues'])

    curve_basis, curve_theta = M.default_curve(32, seed=2)
    inputs = tmp_path / 'inputs.safetensors'
    save_file({'curve_basis': curve_basis, 'curve_theta': curve_theta[:4].contiguous(),
               'ntk_inputs': torch.randn(3, 3, 32, 32)}, str(inputs))
    assert main(['measure', TINY, '--inputs', str(inputs), '--which', 'exp,ntk', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out['ntk_eigenvalues']) == 3
    torch.manual_seed(0)
    assert out['exp'] == pytest.approx(M.length_distortion(AsViT(TINY), curve_basis, curve_theta[:4]), rel=1e-9)


def test_cli_prints_no_warning_of_torch_internals():
    """The first forward-mode pass of a process loads torch's JVP decompositions, which torch scripts with its
    deprecated torch.jit.script; a fresh ``asvit measure`` must not pass that FutureWarning on to the user."""
    code = ('import sys; from asvit_zoo.cli import main; '
            "sys.exit(main(['measure', '4,2,2|2,1,2|2,1,2|2,1,2|16', '--embed-dim', '8', '--image-size', '32', "
            "'--which', 'exp', '--json']))")
    done = subprocess.run([sys.executable, '-W', 'error::FutureWarning', '-c', code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'Warning' not in done.stderr and json.loads(done.stdout)['exp'] > 0


@pytest.mark.parametrize('args,message', [
    (['9,2,2|2,1,2|2,1,2|2,1,2|16', '--embed-dim', '8'], 'K1 = 9'),
    ([TINY, '--device', 'tpu'], "device 'tpu'"),
    ([TINY, '--device', 'cuda:7'], "device 'cuda:7'"),
    ([TINY, '--weights', 'no/such/file.safetensors'], 'no/such/file.safetensors'),
    ([TINY, '--inputs', 'no/such/io.safetensors'], 'no/such/io.safetensors'),
    ([TINY, '--which', 'exp,flops'], "'flops'"),
    ([TINY, '--repeat', '0'], 'repeat'),
    ([TINY, '--seed', '99999999999999999999'], 'seed must be an integer in [0, 4294967295], got 99999999999999999999'),
])
def test_cli_errors(args, message, capsys):
    assert main(['measure', *args, '--image-size', '32', '--json']) == 2
    err = capsys.readouterr().err
    assert err.startswith('asvit measure: error:') and message in err


def test_cli_inputs_file_needs_its_keys(tmp_path, capsys):
    path = tmp_path / 'partial.safetensors'
    save_file({'curve_basis': torch.zeros(3 * 32 * 32, 2)}, str(path))
    assert main(['measure', TINY, '--inputs', str(path)]) == 2
    err = capsys.readouterr().err
    assert "lacks ['curve_theta', 'ntk_inputs']" in err and str(path) in err


@pytest.mark.parametrize('tensors,message', [
    (dict(ntk_inputs=torch.tensor(1.0)),
     'ntk_inputs must be a batch of n >= 2 square images (n, C, H, H), got shape ()'),
    (dict(ntk_inputs=torch.zeros(4, 3, 32, 48)), 'square images (n, C, H, H), got shape (4, 3, 32, 48)'),
    (dict(ntk_inputs=torch.zeros(1, 3, 32, 32)), 'n >= 2 square images (n, C, H, H), got shape (1, 3, 32, 32)'),
    (dict(curve_basis=torch.zeros(3 * 16 * 16, 2)), 'curve_basis must have shape (C * H * H, 2) = (3072, 2) for the '
                                                    '(3, 32, 32) images of ntk_inputs, got (768, 2)'),
    (dict(curve_theta=torch.zeros(2, 5)), 'curve_theta must be a non-empty 1-d tensor of angles, got shape (2, 5)'),
    (dict(ntk_inputs=torch.zeros(4, 3, 32, 32, dtype=torch.uint8)),
     'ntk_inputs must be a floating-point tensor (normalised images and angles, as in the golden io files), got '
     'torch.uint8'),
    (dict(ntk_inputs=torch.ones(4, 3, 32, 32, dtype=torch.bool)), 'golden io files), got torch.bool'),
    (dict(curve_basis=torch.zeros(3 * 32 * 32, 2, dtype=torch.int32)),
     'curve_basis must be a floating-point tensor (normalised images and angles, as in the golden io files), got '
     'torch.int32'),
])
def test_cli_inputs_file_shapes_are_named(tensors, message, tmp_path, capsys):
    path = tmp_path / 'io.safetensors'
    basis, thetas = M.default_curve(32)
    save_file({'curve_basis': basis, 'curve_theta': thetas, 'ntk_inputs': torch.zeros(4, 3, 32, 32), **tensors},
              str(path))
    assert main(['measure', TINY, '--inputs', str(path), '--which', 'exp,ntk']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'asvit measure: error: inputs file {path}: ') and err.endswith(f'{message}\n'), err


def test_cli_measures_grayscale_weights_and_names_bad_values(tmp_path, capsys):
    shipped = registry_root() / 'asvit_tiny.fmnist' / 'model.safetensors'  # 1 input channel, 10 classes
    genotype = '5,2,4,2|3,1,4,2|3,1,4,1|3,1,2,1|16,32'
    assert main(['measure', genotype, '--weights', str(shipped), '--image-size', '28', '--which', 'exp,ntk',
                 '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['exp'] > 0 and out['ntk'] > 1 and out['params'] == 1311626
    assert main(['measure', TINY, '--image-size', '0', '--json']) == 2
    assert 'image_size must be a positive integer, got 0' in capsys.readouterr().err
    damaged = tmp_path / 'damaged.safetensors'
    damaged.write_bytes(shipped.read_bytes()[:1000])
    assert main(['measure', genotype, '--weights', str(damaged), '--image-size', '28']) == 2
    assert f'{damaged}: not a readable safetensors file' in capsys.readouterr().err


def test_cli_weights_of_another_genotype(tmp_path, capsys):
    path = tmp_path / 'masked.safetensors'
    save_file(_net(MASKED).state_dict(), str(path), metadata={'genotype': MASKED})
    assert main(['measure', TINY, '--weights', str(path), '--image-size', '32']) == 2
    err = capsys.readouterr().err
    assert f"was saved for genotype '{MASKED}', not {TINY}" in err
    for path in (tmp_path / 'plain.safetensors', tmp_path / 'plain.pth'):  # no genotype recorded: shapes tell
        state = {k: v.contiguous() for k, v in _net(MASKED).state_dict().items()}
        save_file(state, str(path)) if path.suffix == '.safetensors' else torch.save(state, path)
        assert main(['measure', TINY, '--weights', str(path), '--image-size', '32']) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf'asvit measure: error: weights file {re.escape(str(path))} does not fit genotype '
                            rf'{re.escape(TINY)}: \d+ tensors not in the model \(first: stages.0.blocks.1.\S+\); '
                            r'\d+ tensors of another shape \(first: patch_embed.proj.weight \(weights '
                            r'\(8, 3, 5, 5\), model \(8, 3, 4, 4\)\)\); measure the genotype the weights were '
                            r'trained with\n', err), err


def test_cli_measures_headless_weights(tmp_path, capsys):
    path = tmp_path / 'backbone.safetensors'  # the state dict of AsViT(num_classes=0), as a detection backbone's
    save_file({k: v.contiguous() for k, v in AsViT(TINY, num_classes=0).state_dict().items()}, str(path),
              metadata={'genotype': TINY})
    assert main(['measure', TINY, '--weights', str(path), '--image-size', '16', '--which', 'exp', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['exp'] > 0


def test_cli_weights_whose_genotype_metadata_does_not_parse(tmp_path, capsys):
    path = tmp_path / 'bad.safetensors'
    save_file({k: v.contiguous() for k, v in _net(TINY).state_dict().items()}, str(path), metadata={'genotype': 'xx'})
    assert main(['measure', TINY, '--weights', str(path), '--image-size', '16', '--which', 'exp']) == 2
    assert capsys.readouterr().err.startswith(f'asvit measure: error: {path}: the genotype in its metadata does not '
                                              f'parse: ')


# --------------------------------------------------------------------------- torchrun
SHARED_COPIES_SCRIPT = '''
import contextlib, io, json
from asvit_zoo import measures as M
from asvit_zoo.cli import main
from asvit_zoo.distributed import dist_env

measured = []
length_distortion = M.length_distortion
M.length_distortion = lambda model, *args: measured.append(1) or length_distortion(model, *args)
stdout = io.StringIO()
with contextlib.redirect_stdout(stdout):
    code = main(['measure', {genotype!r}, '--image-size', '32', '--repeat', '3', '--which', 'exp,ntk', '--json'])
with open({out!r} + f'.{{dist_env().rank}}.json', 'w') as f:  # one file per process: stdout lines can interleave
    json.dump(dict(code=code, copies=len(measured), stdout=stdout.getvalue()), f)
'''


def test_torchrun_processes_share_the_copies(tmp_path):
    script = tmp_path / 'share.py'
    script.write_text(SHARED_COPIES_SCRIPT.format(genotype=TINY, out=str(tmp_path / 'rank')))
    proc = torchrun([str(script)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank.{rank}.json').read_text()) for rank in (0, 1)]
    assert [r['code'] for r in ranks] == [0, 0]
    assert [r['copies'] for r in ranks] == [2, 1]  # copies 0 and 2 on rank 0, copy 1 on rank 1
    assert ranks[1]['stdout'] == ''  # process 0 alone prints the result
    got = json.loads(ranks[0]['stdout'])
    one = M.measure_genotype(TINY, image_size=32, repeat=3, which=('exp', 'ntk'))  # the mean of the same 3 copies
    assert (got['params'], got['gmacs'], sorted(got['seconds'])) == (one.params, one.gmacs, ['exp', 'ntk'])
    assert got['exp'] == pytest.approx(one.exp, rel=1e-6) and got['ntk'] == pytest.approx(one.ntk, rel=1e-6)
    assert got['ntk_eigenvalues'] == pytest.approx(one.ntk_eigenvalues, rel=1e-6)
