"""Training-free complexity measures of As-ViT networks at initialisation (spec, section 3).

``f`` is the pooled feature before the final norm (mean over the last stage's tokens).

* ``exp``, expected length distortion (:func:`length_distortion`, higher ranks better): the output
  curve of a circle ``x(theta) = cos(theta) u1 + sin(theta) u2`` in input space, every LayerNorm
  replaced by identity, train mode: ``sum_i ||d f(x(theta_i)) / d theta||_2`` over the curve's points.
* ``curvature`` (:func:`curvature`): extrinsic curvature of the same output curve at each point,
  ``kappa_i = sqrt(|f'|^2 |f''|^2 - (f'.f'')^2) / |f'|^3``, **summed over the points** (as ``exp`` and
  as the authors' unused ``get_extrinsic_curvature``).
* ``combined``: ``sum_i kappa_i |f'_i|``, length distortion and curvature together: the discrete length
  of the curve's Gauss map (``|d/dtheta (f'/|f'|)| = kappa |f'|``), i.e. how far the output curve turns
  while it is stretched, in radians per angle step. It does not change when the output is rescaled
  (``exp`` grows and ``curvature`` shrinks with the scale). A closed curve turns by at least 2 pi
  (Fenchel), so with the default curve it is about 10 for a nearly flat loop and grows with the
  wiggles. The authors' ``get_curve_complexity_gauss`` aims at the same quantity but holds ``|f'|``
  constant, giving ``sum |f''| / |f'|``; we take the exact derivative.
* ``ntk``, NTK condition number (:func:`ntk_condition`, lower ranks better): per-sample gradients of
  ``sum(f(x_i))`` with respect to every parameter whose name contains ``weight``, LayerNorms as in the
  model, train mode; Gram matrix ``G = J J^T``; ``cond = largest / smallest eigenvalue``.

How. Length distortion is one forward-mode pass (dual tensors of ``torch.autograd.forward_ad``) over all
curve points in one batch, with the closed-form tangent ``dx/dtheta = -sin(theta) u1 + cos(theta) u2``.
PyTorch has no forward-mode rule for its fused attention kernels, so while measuring,
``F.scaled_dot_product_attention`` on dual tensors goes through :func:`_attention_jvp`, which computes
the output and its exact tangent ``dO = P dV + (P * dS) V - rowsum(P * dS) O`` (``P`` the attention
weights, ``dS = s (dQ K^T + Q dK^T)``) with batched matrix products, a block of about a million scores at a
time (4 MiB, which stays in cache): the unnormalised weights ``W = exp(S - c)`` (the row shift ``c`` folded
into the score product), ``dS`` as one product ``s [dQ, Q] [K, dK]^T``, then ``W [V, dV, 1]`` and
``(W * dS) [V, 1]``; the ones give the row sums, and one division per row normalises at the end. That is
``6 d + 3`` multiply-adds per score for head size ``d``. The previous route, one fused attention pass over
``[K, dK, dV, V]`` and one fused backward pass, did 28 d (the fused kernels want one head size for q, k
and v: 4 d, padded) and took twice as long at d = 8 (stage 1 at 224 px: 0.46 s, now 0.23-0.27 s; length
distortion 3.67x -> 2.3-2.5x a plain forward pass). This route rounds more in float32 (1.5e-6 relative to
float64 at 784 tokens, against 1.5e-7), still well inside the golden tolerance of 1e-4. Linear and Conv2d
layers on dual tensors run as two plain calls, value and tangent: PyTorch's rule gives the weights zero tangents
and costs several times more (22% of the measure at 64 px, 10% at 224 px). The model itself is made the
curve network for the call (LayerNorms swapped for identity) and restored, rather than copied.
Curvature needs forward over forward; it runs the unfused attention, which PyTorch differentiates
twice. The NTK needs ONE batched forward and backward pass: forward hooks keep each weighted module's
input, the backward gives the gradient of its output, and the per-sample weight gradients follow in
closed form (Linear ``g^T a``; Conv2d, one weight-gradient pass with the samples as groups; LayerNorm
``sum(g * x_hat)``, where a fresh LayerNorm's output is ``x_hat``); for small token grids the Gram share of
a layer comes straight from ``(a a^T) * (g g^T)``. The Gram matrix is
accumulated in float64 (float32 products summed over 8192 columns at a time).

Golden values. Length distortion equals the authors' to 1e-7. Their NTK eigenvalues come out
0.04-0.25% lower than the exact ones: their Gram matrix is a float32 product of 2M-long gradient
rows whose accumulation loses the smallest terms (replaying their float32 accumulation, 4 sequential
lanes, on our per-sample gradients gives their eigenvalues to 1e-6; see tests/test_measures.py). We
return the exact value.

The authors' code (spec, section 3, "Further behaviour") and what we do:

* Kept: the default curve has 10 angles ``linspace(0, 2 pi, 10)``, so 0 and 2 pi, the same point,
  count twice (values stay comparable with the authors'); one NTK batch for every copy; train mode
  for both measures; gradients of the summed pooled feature, not a per-logit NTK.
* Changed: the authors re-draw every Linear layer and the LayerNorms between the two measures, and
  never re-draw the stage-1 convolution, so all their ``repeat`` copies share it. Here each copy is
  one fresh initialisation (its convolution included) on which all measures are taken.
* Changed: the authors turn a NaN condition number into -1 and average it with the other copies (a
  bad network then looks well conditioned), and a negative smallest eigenvalue passes as a negative
  condition number. Here a Gram matrix that is not finite or numerically singular (smallest
  eigenvalue at most ``n * eps * largest``, eps of the model's dtype) gives a NaN condition number;
  :class:`Measures` then has ``ntk = nan`` and ``bad = True``, and the caller decides (the seed search
  gives it the worst value seen, spec section 4).
* A point where ``f' = 0`` has no curvature: NaN (the authors' formula divides by zero too).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import jvp
from torch.overrides import TorchFunctionMode

from .asvit import AsViT, checkpoint_filter_fn, classifier_classes, resolve_genotype
from .cost import PAPER_CLASSES, count_macs, param_count
from .datasets import noise_batch
from .devices import resolve_device
from .distributed import gather_objects, group_size, my_share
from .genotype import Genotype
from .hub import load_safetensors, read_metadata, recorded_genotype, state_dict_mismatch
from .modes import kept_modes
from .validation import check_count, check_seed, is_count
from .weights import load_weights

__all__ = [
    'MEASURES', 'CURVE_POINTS', 'NTK_BATCH', 'Curvature', 'Measures', 'pooled_before_norm', 'curve_network',
    'default_curve', 'curve_points', 'curve_velocity', 'length_distortion', 'curvature', 'ntk_jacobian', 'ntk_gram',
    'ntk_condition', 'load_measure_inputs', 'measure_genotype',
]

MEASURES = ('exp', 'curvature', 'ntk')
CURVE_POINTS = 10  # angles of the length-distortion curve (code), 0 and 2 pi included
NTK_BATCH = 16  # images of the NTK batch (the authors' scripts)
CURVATURE_PIXELS = 2 * 224 * 224  # curve points per second-order pass: this many pixels in all
# attention scores held at a time by the attention JVP: on CPUs 4 MiB in float32, which stays in cache; on
# other devices more, so that kernel launches do not dominate (chosen, not yet measured on a GPU)
SCORE_BLOCK = 1 << 20
SCORE_BLOCK_ACCELERATOR = 1 << 26
SHIFT_BOUND = 8.  # largest bound on a row's scores the attention JVP shifts by instead of the row's own maximum
GRAM_CHUNK = 8192  # columns summed in float32 before the float64 accumulation of the NTK Gram matrix
# multiply-adds per second of the Gram-from-rows route (large matrix products) over the per-sample gradient
# route (one small product per sample, then the Gram): measured 3-4x on the 2-core CPU
ROWS_GRAM_SPEED = 3
NUM_CLASSES = PAPER_CLASSES  # head of freshly initialised networks: params and GMACs as the paper counts them
INPUT_KEYS = ('curve_basis', 'curve_theta', 'ntk_inputs')  # keys of an --inputs file (the golden io files)

_sdpa = F.scaled_dot_product_attention
_linear = F.linear
_conv2d = F.conv2d


# --------------------------------------------------------------------------- helpers
def pooled_before_norm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean over the last stage's tokens, without the final norm: (B, C, H, W) -> (B, num_features)."""
    last = len(model.stages) - 1
    return model.forward_intermediates(x, indices=[last], intermediates_only=True)[0].mean((2, 3))


def _param(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


_ATTENTION_SETTINGS = ('fused_attn', 'cpu_plain_attn_max_tokens')  # of WindowAttention


def _attention_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if hasattr(m, 'fused_attn')]


def _set_fused_attn(model: nn.Module, enable: bool) -> None:
    """SDPA in every window (``enable``: the forward-mode rule of :class:`_ForwardADMode` replaces it, also in
    the small windows where the model itself would take plain attention on CPU) or plain attention."""
    for m in _attention_modules(model):
        m.fused_attn = enable
        if hasattr(m, 'cpu_plain_attn_max_tokens'):
            m.cpu_plain_attn_max_tokens = 0


def _norms_to_identity(model: nn.Module) -> List[Tuple[nn.Module, str, nn.Module]]:
    """Replace every LayerNorm child module by ``nn.Identity``; returns (parent, name, norm) to put back."""
    replaced = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(module, name, nn.Identity())
                replaced.append((module, name, child))
    return replaced


@contextmanager
def _measure_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as the measures run it, for the duration of the block: train mode, no gradient checkpointing
    (its recomputation would run the forward hooks of the NTK pass twice; the values are the same without it),
    and autograd on even inside a caller's ``torch.inference_mode()``. Every module's settings are restored
    after."""
    checkpointing = {m: m.grad_checkpointing for m in model.modules() if hasattr(m, 'grad_checkpointing')}
    try:
        for m in checkpointing:
            m.grad_checkpointing = False
        with kept_modes(model), torch.inference_mode(False):
            yield model.train()
    finally:
        for m, enabled in checkpointing.items():
            m.grad_checkpointing = enabled


@contextmanager
def _as_curve_network(model: nn.Module, fused_attn: bool) -> Iterator[nn.Module]:
    """``model`` itself turned into :func:`curve_network` for the duration of the block (no copy: the
    copy costs about half a forward pass at 64 px); its modules, modes and attention path are restored
    after. Not for a model that another thread runs meanwhile."""
    attention = {m: {k: getattr(m, k) for k in _ATTENTION_SETTINGS if hasattr(m, k)}
                 for m in _attention_modules(model)}
    with _measure_mode(model):
        replaced = _norms_to_identity(model)
        try:
            _set_fused_attn(model, fused_attn)
            yield model
        finally:
            for parent, name, norm in replaced:
                setattr(parent, name, norm)
            for m, settings in attention.items():
                for k, v in settings.items():
                    setattr(m, k, v)


def curve_network(model: nn.Module, fused_attn: bool = True) -> nn.Module:
    """The network of the curve measures: a deep copy of the modules (sharing the parameters, which are not
    modified) in train mode, with every LayerNorm replaced by identity and the fused (SDPA) or plain
    attention path. The caller's model is not touched."""
    net = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    _norms_to_identity(net)
    _set_fused_attn(net, fused_attn)
    return net.train()


def default_curve(image_size: int, in_chans: int = 3, points: int = CURVE_POINTS,
                  seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The authors' curve: ``(basis, thetas)``, basis = the first two left-singular vectors of a
    (in_chans * H * W) x 2 standard normal matrix drawn from ``seed``, thetas = linspace(0, 2 pi, points)."""
    for name, value in (('image_size', image_size), ('in_chans', in_chans), ('points', points)):
        check_count(name, value)
    check_seed(seed)
    gaussian = torch.randn(in_chans * image_size * image_size, 2, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    basis = torch.linalg.svd(gaussian, full_matrices=False).U.float().contiguous()
    return basis, torch.linspace(0, 2 * math.pi, points)


def _image_shape(model: nn.Module, curve_basis: torch.Tensor) -> Tuple[int, int, int]:
    in_chans = getattr(model, 'in_chans', 3)
    rows = curve_basis.shape[0] if curve_basis.dim() == 2 else 0
    side = math.isqrt(rows // in_chans)
    if curve_basis.dim() != 2 or curve_basis.shape[1] != 2 or in_chans * side * side != rows:
        raise ValueError(f'curve_basis must have shape ({in_chans} * H * H, 2) (two flattened square '
                         f'{in_chans}-channel images), got {tuple(curve_basis.shape)}')
    return in_chans, side, side


def curve_points(curve_basis: torch.Tensor, thetas: torch.Tensor,
                 image_shape: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Points ``x(theta) = cos(theta) u1 + sin(theta) u2`` and tangents ``dx/dtheta``, each (n, *image_shape)."""
    cos, sin = torch.cos(thetas), torch.sin(thetas)
    x = (curve_basis @ torch.stack([cos, sin])).T.reshape(len(thetas), *image_shape)
    dx = (curve_basis @ torch.stack([-sin, cos])).T.reshape(len(thetas), *image_shape)
    return x, dx


def _curve_on(model: nn.Module, curve_basis: torch.Tensor, thetas: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``curve_basis`` and ``thetas`` as 1-d/2-d tensors of the model's dtype and device."""
    p = _param(model)
    thetas = torch.as_tensor(thetas).to(p.device, p.dtype)
    if thetas.dim() != 1 or len(thetas) < 1:
        raise ValueError(f'thetas must be a non-empty 1-d tensor of angles, got shape {tuple(thetas.shape)}')
    return torch.as_tensor(curve_basis).to(p.device, p.dtype), thetas


# --------------------------------------------------------------------------- forward-mode attention
def _attention_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor,
                   dv: torch.Tensor, mask: Optional[torch.Tensor], scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``scaled_dot_product_attention`` (no dropout, not causal) and its exact JVP, from batched matrix products
    over blocks of about :data:`SCORE_BLOCK` scores (:data:`SCORE_BLOCK_ACCELERATOR` off the CPU; see the
    module docstring). Each row of weights is shifted by the bound ``s |q_i| max_j |k_j|`` of its largest
    score, folded into the score product, where that bound is at most :data:`SHIFT_BOUND` (so the row's
    largest weight is at least ``exp(-2 SHIFT_BOUND)``), and by its largest score otherwise. Returns
    (output, tangent)."""
    *batch, n, _ = q.shape
    m, e = k.shape[-2], v.shape[-1]

    def groups(*parts: torch.Tensor) -> torch.Tensor:  # (..., rows, widths) -> (groups, rows, sum of widths)
        joined = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        return joined.reshape(-1, *joined.shape[-2:])

    ones = k.new_ones(()).expand(*k.shape[:-1], 1)
    q, dq = q * scale, dq * scale
    bound = q.norm(dim=-1, keepdim=True) * k.norm(dim=-1).amax(-1)[..., None, None]
    exact = (mask is not None and mask.dtype != torch.bool) or bool(bound.max() > SHIFT_BOUND)
    query, key = (groups(q), groups(k)) if exact else (groups(q, -bound), groups(k, ones))
    key, tangent_key = key.transpose(1, 2), groups(k, dk).transpose(1, 2)
    tangent_query, values, tangent_values = groups(dq, q), groups(v, dv, ones), groups(v, ones)
    if mask is not None:
        mask = groups(mask.expand(*batch, *torch.atleast_2d(mask).shape[-2:]))
    out = q.new_empty(len(query), n, 2 * e + 1)  # [W V, W dV, W 1] for unnormalised weights W
    tangent_out = q.new_empty(len(query), n, e + 1)  # [(W * dS) V, (W * dS) 1]
    step = max(1, (SCORE_BLOCK if q.device.type == 'cpu' else SCORE_BLOCK_ACCELERATOR) // (n * m))
    for i in range(0, len(query), step):
        g = slice(i, i + step)
        weights = torch.bmm(query[g], key[g])
        if mask is not None and mask.dtype == torch.bool:
            weights.masked_fill_(~mask[g], -math.inf)
        elif mask is not None:
            weights += mask[g]
        if exact:
            weights -= weights.amax(-1, keepdim=True)
        weights.exp_()
        torch.bmm(weights, values[g], out=out[g])
        torch.bmm(torch.bmm(tangent_query[g], tangent_key[g]).mul_(weights), tangent_values[g], out=tangent_out[g])
    total = out[..., -1:]
    output = out[..., :e] / total
    tangent = (out[..., e:2 * e] + tangent_out[..., :e] - tangent_out[..., -1:] * output) / total
    return output.view(*batch, n, e), tangent.view(*batch, n, e)


def _dual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                    scale: float) -> torch.Tensor:
    """Attention of forward-mode dual tensors (:mod:`torch.autograd.forward_ad`), through :func:`_attention_jvp`."""
    (q, dq), (k, dk), (v, dv) = (fwAD.unpack_dual(t)[:2] for t in (q, k, v))
    if dq is None and dk is None and dv is None:
        return _sdpa(q, k, v, attn_mask=mask, scale=scale)
    dq, dk, dv = (torch.zeros_like(t) if d is None else d for t, d in ((q, dq), (k, dk), (v, dv)))
    return fwAD.make_dual(*_attention_jvp(q, k, v, dq, dk, dv, mask, scale))


def _sdpa_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
               dropout_p: float = 0., is_causal: bool = False, scale: Optional[float] = None,
               enable_gqa: bool = False) -> Optional[Tuple[Any, ...]]:
    """(q, k, v, mask, scale) when :func:`_dual_attention` computes the call exactly, else None."""
    if dropout_p or is_causal or enable_gqa:
        return None
    return q, k, v, attn_mask, q.shape[-1] ** -0.5 if scale is None else scale


def _dual_affine(func: Callable, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 *args: Any, **kwargs: Any) -> Optional[torch.Tensor]:
    """``func(x, weight, bias, ...)`` (linear or conv2d) of a dual ``x`` and plain weights as two plain calls, the
    value and ``func(dx, weight, None, ...)``; None when that does not apply. PyTorch's own rule gives the
    weights zero tangents and costs about 9x the two calls (a Linear on 2560 x 32 rows: 2.8 ms, 0.3 ms)."""
    x, dx = fwAD.unpack_dual(x)[:2]
    if dx is None or any(fwAD.unpack_dual(t).tangent is not None for t in (weight, bias) if t is not None):
        return None
    return fwAD.make_dual(func(x, weight, bias, *args, **kwargs), func(dx, weight, None, *args, **kwargs))


class _ForwardADMode(TorchFunctionMode):
    """While active: attention through :func:`_dual_attention` (``attention=True``); Linear and Conv2d layers
    on a dual input through :func:`_dual_affine`; other Linear layers on inputs of more than 2 dims run on
    a 2-d view (forward-mode AD of such calls otherwise falls back to a bmm with one copy of the weight per
    row block)."""

    def __init__(self, attention: bool = True):
        super().__init__()
        self.attention = attention

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if func is _sdpa and self.attention:
            bound = _sdpa_args(*args, **kwargs)
            if bound is not None:
                return _dual_attention(*bound)
        elif func in (_linear, _conv2d) and len(args) >= 2:
            rest = {k: v for k, v in kwargs.items() if k != 'bias'}
            bias = kwargs.get('bias', args[2] if len(args) > 2 else None)
            out = _dual_affine(func, args[0], args[1], bias, *args[3:], **rest)
            if out is not None:
                return out
        if func is _linear and args and args[0].dim() > 2:
            x = args[0]
            y = _linear(x.reshape(-1, x.shape[-1]), *args[1:], **kwargs)
            return y.view(*x.shape[:-1], y.shape[-1])
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- curve measures
def _make_dual(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``fwAD.make_dual(x, dx)``. Its first call loads torch's forward-AD decompositions, which torch scripts
    with its own deprecated ``torch.jit.script``: that one FutureWarning (torch's, nothing a caller can act on)
    is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
        return fwAD.make_dual(x, dx)


def curve_velocity(model: nn.Module, curve_basis: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """``d f(x(theta_i)) / d theta`` at every point, (n, num_features): one forward-mode pass over all points in
    one batch with the closed-form tangent, on :func:`curve_network` (LayerNorms removed, train mode).

    Args:
        model: An :class:`~asvit_zoo.AsViT`; made the curve network for the call, in place, and restored.
        curve_basis: (in_chans * H * W, 2) orthonormal pair ``u1, u2`` of flattened images.
        thetas: (n,) angles of the curve's points.
    """
    basis, thetas = _curve_on(model, curve_basis, thetas)
    with _as_curve_network(model, fused_attn=True) as net:
        x, dx = curve_points(basis, thetas, _image_shape(model, basis))
        with torch.no_grad(), fwAD.dual_level(), _ForwardADMode():  # forward mode only: no autograd graph
            return fwAD.unpack_dual(pooled_before_norm(net, _make_dual(x, dx))).tangent


def length_distortion(model: nn.Module, curve_basis: torch.Tensor, thetas: torch.Tensor) -> float:
    """Expected length distortion ``sum_i ||d f(x(theta_i)) / d theta||_2`` (see :func:`curve_velocity`)."""
    return float(curve_velocity(model, curve_basis, thetas).double().norm(dim=1).sum())


class Curvature(NamedTuple):
    """Extrinsic curvature of the output curve: ``total`` = sum over points of ``per_point``, ``combined`` =
    sum over points of ``kappa_i * |f'_i|``; ``speed`` = ``|f'_i|`` (its sum is the length distortion)."""
    total: float
    combined: float
    per_point: torch.Tensor
    speed: torch.Tensor


def curvature(model: nn.Module, curve_basis: torch.Tensor, thetas: torch.Tensor) -> Curvature:
    """Extrinsic curvature ``kappa = sqrt(|f'|^2 |f''|^2 - (f'.f'')^2) / |f'|^3`` of the output curve at each
    point, on :func:`curve_network` (LayerNorms removed, train mode, unfused attention); ``f'`` and ``f''``
    by forward over forward ``jvp`` in the angle (``x''(theta) = -x(theta)`` comes with it), in chunks of
    points of at most ``CURVATURE_PIXELS`` pixels. NaN where ``f' = 0``."""
    basis, thetas = _curve_on(model, curve_basis, thetas)
    shape = _image_shape(model, basis)

    def along(angles: torch.Tensor) -> torch.Tensor:
        return pooled_before_norm(model, curve_points(basis, angles, shape)[0])

    def speed(angles: torch.Tensor) -> torch.Tensor:
        return jvp(along, (angles,), (torch.ones_like(angles),))[1]

    # second-order forward AD keeps a few copies of every attention matrix: bound the batch by its pixels
    chunk = max(1, CURVATURE_PIXELS // (shape[1] * shape[2]))
    # the fused kernels have no second-order forward rule: plain attention
    with _as_curve_network(model, fused_attn=False), torch.no_grad(), _ForwardADMode(attention=False):
        derivatives = [jvp(speed, (part,), (torch.ones_like(part),)) for part in thetas.split(chunk)]
    d1 = torch.cat([d for d, _ in derivatives]).double()
    d2 = torch.cat([d for _, d in derivatives]).double()
    s1, s2, s12 = (d1 * d1).sum(1), (d2 * d2).sum(1), (d1 * d2).sum(1)
    norm1 = s1.sqrt()
    kappa = (s1 * s2 - s12 * s12).clamp_min(0).sqrt() / (norm1 ** 3)
    kappa = torch.where(norm1 > 0, kappa, torch.full_like(kappa, math.nan))
    return Curvature(float(kappa.sum()), float((kappa * norm1).sum()), kappa, norm1)


# --------------------------------------------------------------------------- NTK
# A weight's per-sample gradient from the input ``a``, output ``out`` and output gradient ``g`` of each call of
# its module. The leading dim of ``a`` and ``g`` holds the samples in order (several rows per sample allowed:
# windows). Linear gives "rows": per sample, T pairs (a_t, g_t) with gradient sum_t g_t a_t^T; Conv2d and
# LayerNorm give their (n, numel) per-sample gradients directly.
Rows = Tuple[torch.Tensor, torch.Tensor]  # a (n, T, in), g (n, T, out)


def _linear_rows(m: nn.Linear, a: torch.Tensor, out: torch.Tensor, g: torch.Tensor, n: int) -> Rows:
    return a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])


def _conv_grads(m: nn.Conv2d, a: torch.Tensor, out: torch.Tensor, g: torch.Tensor, n: int) -> torch.Tensor:
    if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != 'zeros' or a.shape[0] != n:
        raise TypeError(f'ntk_gram: a Conv2d with groups={m.groups}, padding={m.padding!r}, padding_mode='
                        f'{m.padding_mode!r} on a batch of {a.shape[0]} is not supported (groups=1, numeric zero '
                        f'padding, one image per sample)')
    # the samples as the groups of one convolution: one weight-gradient pass for all of them (1.3-2x faster
    # than unfolding the images, which the stem's overlapping kernels make 4x larger than the batch)
    grads = torch.nn.grad.conv2d_weight(a.reshape(1, -1, *a.shape[2:]), (n * m.out_channels, *m.weight.shape[1:]),
                                        g.reshape(1, -1, *g.shape[2:]), m.stride, m.padding, m.dilation, groups=n)
    return grads.reshape(n, -1)


def _layer_norm_grads(m: nn.LayerNorm, a: torch.Tensor, out: torch.Tensor, g: torch.Tensor,
                      n: int) -> torch.Tensor:
    # sum_t g_t * x_hat_t. A freshly initialised LayerNorm (weight 1, bias 0, as in every search) outputs
    # x_hat itself; otherwise x_hat is recomputed from the input.
    identity = bool((m.weight == 1).all()) and (m.bias is None or not bool(m.bias.any()))
    x_hat = out.detach() if identity else F.layer_norm(a, m.normalized_shape, eps=m.eps)
    return (g * x_hat).reshape(n, -1, *m.normalized_shape).sum(1).flatten(1)


_ROW_RULES = ((nn.Linear, _linear_rows),)
_GRAD_RULES = ((nn.Conv2d, _conv_grads), (nn.LayerNorm, _layer_norm_grads))
_SUPPORTED = ', '.join(kind.__name__ for kind, _ in _ROW_RULES + _GRAD_RULES)


def _weight_owners(model: nn.Module) -> Dict[nn.Module, str]:
    """Every module holding a parameter whose name contains 'weight', with that parameter's name."""
    owners = {}
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f'{module_name}.{pname}' if module_name else pname
            if 'weight' not in full:
                continue
            if pname != 'weight' or not isinstance(module, tuple(k for k, _ in _ROW_RULES + _GRAD_RULES)):
                raise TypeError(f'ntk_gram: parameter {full!r} ({type(module).__name__}.{pname}) is not supported; '
                                f'per-sample gradients are implemented for the `weight` of {_SUPPORTED} modules')
            owners[module] = full
    return owners


def _per_sample_terms(model: nn.Module, inputs: torch.Tensor) -> Iterator[Tuple[str, Union[Rows, torch.Tensor]]]:
    """(name, rows or (n, numel) per-sample gradients) for every weight that gets a gradient, from one batched
    forward and backward pass of ``sum f(x_i)`` in train mode; the model's modes are restored."""
    in_chans = getattr(model, 'in_chans', 3)
    if inputs.dim() != 4 or inputs.shape[0] < 1 or inputs.shape[1] != in_chans:
        raise ValueError(f'inputs (the NTK batch) must have shape (n >= 1, {in_chans}, H, W) for a model of '
                         f'{in_chans} input channels, got {tuple(inputs.shape)}')
    n = inputs.shape[0]
    owners = _weight_owners(model)
    calls: Dict[nn.Module, List[Tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def keep(module: nn.Module, args: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls[module].append((args[0], output))

    handles = [m.register_forward_hook(keep) for m in owners]
    try:
        with _measure_mode(model), torch.enable_grad():
            x = inputs.to(_param(model)).clone().requires_grad_(True)  # clone: not an inference tensor
            total = pooled_before_norm(model, x).sum()
            outputs = [out for seen in calls.values() for _, out in seen]
            grads = iter(torch.autograd.grad(total, outputs, allow_unused=True))
    finally:
        for h in handles:
            h.remove()
    for m, seen in calls.items():
        name = owners[m]
        used = [(a.detach(), out, g) for (a, out), g in zip(seen, grads) if g is not None]
        for a, _, g in used:
            if a.shape[0] % n or g.shape[0] != a.shape[0]:
                raise ValueError(f'ntk_gram: {name} saw a leading dim of {a.shape[0]} for {n} samples; the '
                                 f'per-sample rule needs whole rows per sample, in sample order')
        if not used:
            continue
        rows_rule = next((rule for kind, rule in _ROW_RULES if isinstance(m, kind)), None)
        if rows_rule is not None:  # several calls of one module: their rows join (their gradients add up)
            rows = [rows_rule(m, a, out, g, n) for a, out, g in used]
            if len(rows) > 1:
                rows = [(torch.cat([a for a, _ in rows], 1), torch.cat([g for _, g in rows], 1))]
            yield name, rows[0]
        else:
            rule = next(rule for kind, rule in _GRAD_RULES if isinstance(m, kind))
            yield name, sum(rule(m, a, out, g, n) for a, out, g in used)


def _rows_grads(rows: Rows) -> torch.Tensor:
    a, g = rows
    return torch.bmm(g.transpose(1, 2), a).flatten(1)


def _rows_gram(rows: Rows) -> torch.Tensor:
    """Gram matrix of the per-sample gradients of rows without forming them: ``sum_{t,s} (g_t.g_s)(a_t.a_s)``;
    cheaper than ``n T in out`` when there are few rows (small token grids)."""
    a, g = rows
    n, t = a.shape[:2]
    a, g = a.reshape(n * t, -1), g.reshape(n * t, -1)
    return ((a @ a.T) * (g @ g.T)).view(n, t, n, t).sum((1, 3), dtype=torch.float64)


def _gram(grad: torch.Tensor) -> torch.Tensor:
    """``grad @ grad.T`` in float64: float32 products are summed over chunks of ``GRAM_CHUNK`` columns and the
    chunks in float64 (as exact as a float64 product here, without converting the gradients)."""
    if grad.dtype == torch.float64:
        return grad @ grad.T
    full = grad.shape[1] // GRAM_CHUNK * GRAM_CHUNK
    rest = grad[:, full:]
    gram = (rest @ rest.T).double()
    if full:
        chunks = grad[:, :full].unflatten(1, (-1, GRAM_CHUNK)).transpose(0, 1)
        gram += torch.bmm(chunks, chunks.transpose(1, 2)).sum(0, dtype=torch.float64)
    return gram


def ntk_jacobian(model: nn.Module, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample gradients of ``sum f(x_i)`` (``f`` = :func:`pooled_before_norm`) for every parameter whose
    name contains 'weight' and that gets a gradient: name -> (n, numel), in the model's parameter order.
    LayerNorms as in the model, train mode; one batched forward and backward pass."""
    grads = {name: _rows_grads(term) if isinstance(term, tuple) else term
             for name, term in _per_sample_terms(model, inputs)}
    return {name: grads[name] for name, _ in model.named_parameters() if name in grads}


def ntk_gram(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """NTK Gram matrix ``G[i, j] = <grad_w sum f(x_i), grad_w sum f(x_j)>`` over every parameter whose name
    contains 'weight' (float64, (n, n)); see :func:`ntk_jacobian`. Each weight's share comes from its
    per-sample gradients or, where that is cheaper, straight from its rows (:func:`_rows_gram`)."""
    n = inputs.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=inputs.device)
    for _, term in _per_sample_terms(model, inputs):
        if isinstance(term, tuple):
            a, g = term
            t, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
            if (n * t) ** 2 * (d_in + d_out) < ROWS_GRAM_SPEED * (n * t + n * n) * d_in * d_out:
                gram += _rows_gram(term)
                continue
            term = _rows_grads(term)
        gram += _gram(term)
    return gram


def _condition(gram: torch.Tensor, eps: float) -> Tuple[float, torch.Tensor]:
    """(largest / smallest eigenvalue, eigenvalues ascending); NaN when not finite or numerically singular."""
    if not torch.isfinite(gram).all():
        return math.nan, torch.full((gram.shape[0],), math.nan, dtype=gram.dtype, device=gram.device)
    eigenvalues = torch.linalg.eigvalsh(gram)
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    if not smallest > gram.shape[0] * eps * largest:
        return math.nan, eigenvalues
    return largest / smallest, eigenvalues


def ntk_condition(model: nn.Module, inputs: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """NTK condition number and the Gram matrix's eigenvalues (ascending, float64) on ``inputs``
    (see :func:`ntk_gram`). The condition number is NaN (a "bad" network) when the Gram matrix is not
    finite or its smallest eigenvalue is at most ``n * eps * largest`` (eps of the model's dtype)."""
    return _condition(ntk_gram(model, inputs), torch.finfo(_param(model).dtype).eps)


# --------------------------------------------------------------------------- one genotype
@dataclass
class Measures:
    """Measures of one genotype, means over ``repeat`` copies (None: not measured). ``ntk_eigenvalues`` is
    the mean over copies of each copy's ascending eigenvalues; ``bad`` is True when any copy's NTK
    condition number is NaN (then ``ntk`` is NaN); ``seconds`` is the wall time of each measure over
    all copies; ``params`` and ``gmacs`` (at the measured image size) are those of the network."""

    exp: Optional[float] = None
    curvature: Optional[float] = None
    combined: Optional[float] = None
    ntk: Optional[float] = None
    ntk_eigenvalues: Optional[List[float]] = None
    bad: bool = False
    params: int = 0
    gmacs: float = 0.
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready fields: NaN and infinities become None."""
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value
        return clean(dataclasses.asdict(self))


def _load_weights(path: Union[str, Path], genotype: Genotype) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file (authors' or our layout), checked against its ``genotype`` metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'weights file not found: {path}')
    if path.suffix == '.safetensors':
        other = recorded_genotype(path, read_metadata(path))
        if other is not None and (other.seed() if other.is_seed else other) != (
                genotype.seed() if other.is_seed else genotype):
            raise ValueError(f"weights file {path} was saved for genotype '{other}', not {genotype}")
    return load_weights(path)


def _fitting(state_dict: Dict[str, torch.Tensor], model: nn.Module, path: Union[str, Path],
             genotype: Genotype) -> Dict[str, torch.Tensor]:
    problems = state_dict_mismatch(state_dict, model.state_dict(), 'weights', 'model')
    if problems:
        raise ValueError(f'weights file {path} does not fit genotype {genotype}: {problems}; measure the genotype '
                         f'the weights were trained with')
    return state_dict


def _check_inputs(inputs: torch.Tensor, image_size: int, in_chans: int = 3) -> None:
    if inputs.dim() != 4 or inputs.shape[0] < 2 or tuple(inputs.shape[1:]) != (in_chans, image_size, image_size):
        raise ValueError(f'inputs (the NTK batch) must have shape (n >= 2, {in_chans}, {image_size}, {image_size}) '
                         f'for image_size={image_size}, got {tuple(inputs.shape)}')


def load_measure_inputs(path: Union[str, Path]) -> Tuple[Tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``((curve_basis, curve_theta), ntk_inputs)`` from a safetensors file with the golden io files' keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'inputs file not found: {path}')
    tensors = load_safetensors(path)
    missing = [k for k in INPUT_KEYS if k not in tensors]
    if missing:
        raise ValueError(f'inputs file {path} lacks {missing}; it must hold {list(INPUT_KEYS)} (as the golden '
                         f'*.io.safetensors files), has {sorted(tensors)}')
    for key in INPUT_KEYS:
        if not tensors[key].is_floating_point():
            raise ValueError(f'inputs file {path}: {key} must be a floating-point tensor (normalised images and '
                             f'angles, as in the golden io files), got {tensors[key].dtype}')
    basis, thetas, batch = (tensors[k] for k in INPUT_KEYS)
    if batch.dim() != 4 or batch.shape[0] < 2 or batch.shape[2] != batch.shape[3]:
        raise ValueError(f'inputs file {path}: ntk_inputs must be a batch of n >= 2 square images (n, C, H, H), got '
                         f'shape {tuple(batch.shape)}')
    rows = batch[0].numel()
    if tuple(basis.shape) != (rows, 2):
        raise ValueError(f'inputs file {path}: curve_basis must have shape (C * H * H, 2) = ({rows}, 2) for the '
                         f'{tuple(batch.shape[1:])} images of ntk_inputs, got {tuple(basis.shape)}')
    if thetas.dim() != 1 or len(thetas) < 1:
        raise ValueError(f'inputs file {path}: curve_theta must be a non-empty 1-d tensor of angles, got shape '
                         f'{tuple(thetas.shape)}')
    return (basis, thetas), batch


def _timed(seconds: Dict[str, float], name: str, device: torch.device, fn: Callable[[], Any]) -> Any:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds[name] = seconds.get(name, 0.) + time.perf_counter() - start
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def measure_genotype(
        genotype: Union[Genotype, str],
        *,
        embed_dim: Optional[int] = None,
        depths: Optional[Sequence[int]] = None,
        image_size: int = 224,
        repeat: int = 1,
        inputs: Optional[torch.Tensor] = None,
        seed: int = 0,
        device: Union[str, torch.device] = 'cpu',
        weights: Optional[Union[str, Path]] = None,
        curve: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        which: Sequence[str] = MEASURES,
        distributed: bool = False,
) -> Measures:
    """Measure one genotype at initialisation: means over ``repeat`` fresh copies, copy ``r`` initialised
    under ``torch.manual_seed(seed + r)`` (on the CPU, then moved to ``device``: the same numbers on
    any device up to rounding), or over the given ``weights`` (authors' or our layout; one network).

    With ``distributed`` and a process group (torchrun), the processes share the copies: rank ``k`` measures
    copies ``k, k + world_size, ...``, and every process returns the same means, taken in copy order as in one
    process. Every process must then call with the same arguments.

    Args:
        genotype: Seed string (with ``embed_dim``, optional ``depths``) or scaled string or Genotype.
        image_size: Input resolution of the curve and of the default NTK batch.
        repeat: Number of independently initialised copies (1 with ``weights``).
        inputs: NTK batch (n, C, image_size, image_size); default: ``NTK_BATCH`` Gaussian images from ``seed``.
            C is 3, or the input channels of ``weights`` (e.g. 1 for grayscale Fashion-MNIST weights).
        seed: Seed of the copies' inits, of the default curve and of the default NTK batch.
        device: 'cpu' or 'cuda[:N]'.
        weights: Weights file to measure instead of fresh initialisations.
        curve: ``(curve_basis, thetas)``; default :func:`default_curve` of ``image_size`` and ``seed``.
        which: Subset of ``('exp', 'curvature', 'ntk')``, or one of them; the others stay None.
        distributed: Share the copies among the processes of the default process group (a collective call).
    """
    g = resolve_genotype(genotype, embed_dim, depths)
    which = (which,) if isinstance(which, str) else tuple(which)
    unknown = [w for w in which if w not in MEASURES]
    if unknown or not which:
        raise ValueError(f'which={list(which)}: measures must be a non-empty subset of {list(MEASURES)}')
    if not is_count(image_size):
        raise ValueError(f'image_size must be a positive integer, got {image_size!r}')
    if not is_count(repeat):
        raise ValueError(f'repeat must be an integer >= 1, got {repeat!r}')
    check_seed(seed)
    dev = resolve_device(device)
    state_dict, num_classes, in_chans = None, NUM_CLASSES, 3
    if weights is not None:
        if repeat != 1:
            raise ValueError(f'repeat={repeat}: with weights there is one network to measure; use repeat=1')
        state_dict = _load_weights(weights, g)
        num_classes = classifier_classes(None, state_dict)  # 0: a headless model (a detection backbone's)
        if 'patch_embed.proj.weight' in state_dict:
            in_chans = state_dict['patch_embed.proj.weight'].shape[1]
    basis, thetas = curve if curve is not None else default_curve(image_size, in_chans, seed=seed)
    if 'ntk' in which:  # the batch is the NTK's alone
        if inputs is None:
            inputs = noise_batch(NTK_BATCH, image_size, seed, in_chans)
        _check_inputs(inputs, image_size, in_chans)
        inputs = inputs.to(dev)
    if in_chans * image_size * image_size != basis.shape[0]:
        raise ValueError(f'curve_basis has {basis.shape[0]} rows; image_size={image_size} needs {in_chans} * '
                         f'{image_size}^2 = {in_chans * image_size * image_size}')
    basis, thetas = basis.to(dev), thetas.to(dev)

    ranks = group_size() if distributed else 1
    result = Measures()
    copies: List[Tuple[int, Dict[str, Any]]] = []  # (copy, measure -> value) of the copies of this process
    for r in my_share(repeat) if distributed else range(repeat):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + r)
            model = AsViT(g, num_classes=num_classes, in_chans=in_chans)
        if state_dict is not None:
            model.load_state_dict(_fitting(checkpoint_filter_fn(state_dict, model), model, weights, g))
        model = model.to(dev)
        if r == 0:
            result.params = param_count(model)
            result.gmacs = count_macs(model, (in_chans, image_size, image_size)) / 1e9
        values: Dict[str, Any] = {}
        if 'exp' in which:
            values['exp'] = _timed(result.seconds, 'exp', dev, lambda: length_distortion(model, basis, thetas))
        if 'curvature' in which:
            c = _timed(result.seconds, 'curvature', dev, lambda: curvature(model, basis, thetas))
            values['curvature'] = (c.total, c.combined)
        if 'ntk' in which:
            cond, eigenvalues = _timed(result.seconds, 'ntk', dev, lambda: ntk_condition(model, inputs))
            values['ntk'] = (cond, eigenvalues.cpu())
        copies.append((r, values))
    if ranks > 1:  # params and GMACs from rank 0 (copy 0); wall times of the slowest process
        shared = gather_objects((result.params, result.gmacs, result.seconds, copies))
        result.params, result.gmacs = shared[0][:2]
        result.seconds = {name: max(seconds.get(name, 0.) for _, _, seconds, _ in shared)
                          for name in MEASURES if name in which}
        copies = sorted((entry for *_, part in shared for entry in part), key=lambda entry: entry[0])
    found = [values for _, values in copies]
    if 'exp' in which:
        result.exp = _mean(v['exp'] for v in found)
    if 'curvature' in which:
        result.curvature = _mean(v['curvature'][0] for v in found)
        result.combined = _mean(v['curvature'][1] for v in found)
    if 'ntk' in which:
        conds = [v['ntk'][0] for v in found]
        result.bad = any(math.isnan(c) for c in conds)
        result.ntk = _mean(conds)
        result.ntk_eigenvalues = torch.stack([v['ntk'][1] for v in found]).mean(0).tolist()
    return result
