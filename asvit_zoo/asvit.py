"""As-ViT: Auto-scaling Vision Transformers without Training.

A timm model family for the topologies of Chen et al., "Auto-scaling Vision Transformers without
Training", ICLR 2022 (https://arxiv.org/abs/2202.11921). The architecture follows the authors'
public PyTorch code (MIT licence); weights in the authors' state-dict layout load through
:func:`checkpoint_filter_fn`.

A network is a :class:`~asvit_zoo.genotype.Genotype`: four stages, each with an overlapping
tokenizer (stage 1: a strided convolution, stages 2-4: unfold-based patch merging), window
attention over an S x S split of the token grid and an FFN of expansion E. No image size is fixed at
construction: grids that do not divide evenly are padded (and padded keys masked in attention), so
the model runs at 224, 800x1333 or 28x28 alike. Where the reference would fail (odd grids) we pad;
on every input the reference accepts, outputs are equal.

The stage-1 tokenizer is elastic: ``set_tokenizer(stride, dilation)`` changes the token grid without
touching any weight (progressive re-tokenization). A forward pass refuses a setting under which some token
would read only the padding around the image (a dilation too large for the image side).
"""

import dataclasses
import math
import operator
import re
import warnings
from collections import OrderedDict
from functools import partial
from numbers import Real
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm, Mlp, get_device_dtype, trunc_normal_, use_fused_attn
from timm.models import (build_model_with_cfg, generate_default_cfgs, is_model, register_model,
                         split_model_name_tag)
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._features_fx import register_notrace_module
from timm.models._manipulate import checkpoint_seq, named_apply

from .genotype import NUM_STAGES, Genotype
from .hub import (HF_HUB_PREFIX, LOCAL_DIR_PREFIX, describe_mismatch, hub_file, read_checkpoint, resolve_weights,
                  safetensors_shapes)
from .registry import (CONFIG_FILE, RegistryError, VariantCard, extra_registries, load_card, load_registry,
                       tagged_name)
from .validation import is_count

__all__ = ['AsViT', 'checkpoint_filter_fn', 'unwrap_state_dict', 'classifier_classes', 'register_cards',
           'registered_card', 'registered_cards', 'registered_folder', 'check_architecture_name']

STEM_STRIDE = 4
MERGE_STRIDE = 2
MAX_TOKENIZER_STEP = 2 ** 16  # the largest stride or dilation set_tokenizer takes (torch's conv needs bounded ints)
DEFAULT_DEPTHS = (1, 1, 1, 1)
# On CPU, plain matmul-softmax attention beats torch's fused kernel in small windows (5-11x at 1 token, 1.1-2.9x
# at 4-64 tokens, forward and backward) and loses from about 196 tokens on (3.7-4x slower at 784).
CPU_PLAIN_ATTN_MAX_TOKENS = 64

_LayerNormRef = partial(LayerNorm, eps=1e-5)  # the reference uses torch's default eps


# --------------------------------------------------------------------------- helpers
def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """(before, after) zero padding of one axis, as the reference pads, extended so that the output
    has ``ceil(size / stride)`` positions for any size (the reference needs size % stride == 0)."""
    eff_kernel = dilation * (kernel - 1) + 1
    before = max(0, (eff_kernel - stride) // 2)
    after = max(0, (eff_kernel - stride + 1) // 2)
    needed = eff_kernel + stride * (math.ceil(size / stride) - 1)
    after += max(0, needed - (size + before + after))
    return before, after


def _tokenizer_fault(size: int, kernel: int, stride: int, dilation: int) -> str:
    """Why a (stride, dilation) tokenizer setting does not tokenize an image axis of ``size`` pixels, or '':
    every token must read at least one pixel of the axis, not only padding."""
    if dilation <= size:  # taps at most a side apart reach the image from every token: no per-token loop per forward
        return ''
    before, _ = _same_padding(size, kernel, stride, dilation)
    for i in range((size + stride - 1) // stride):
        first = i * stride - before  # the token's taps are first + j * dilation, j < kernel
        j = max(0, (dilation - 1 - first) // dilation)  # the first tap at or after pixel 0
        if j >= kernel or first + j * dilation >= size:
            return (f'with kernel {kernel}, token {i} of {(size + stride - 1) // stride} would read only padding '
                    f'of a side of {size} pixels')
    return ''


def _integer(value: Any) -> Optional[int]:
    """``value`` as a Python int when it is an integer of any kind (numpy's and one-element tensors' included),
    not a bool; else None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _static_size(size: int) -> int:
    """An image side as a constant for torch.compile. Traced as a symbolic size (Dynamo's default once an input
    size changes), the padded token grids stage after stage gave shape formulas that took the compiler more than
    ten minutes; ``range`` needs a concrete int, so Dynamo fixes the side instead, and a new image size compiles
    again (as fast as the first); the batch size is left to Dynamo. Outside compilation: ``size`` itself."""
    if torch.jit.is_scripting():
        return size
    return len(range(size))


def stage_grid_sides(image_side: int) -> List[int]:
    """Token-grid side of each stage for an image side at the default tokenizer: the stage-1 tokenizer and each
    patch merging round up (``ceil``), as their padding does."""
    sides = [math.ceil(image_side / STEM_STRIDE)]
    for _ in range(NUM_STAGES - 1):
        sides.append(math.ceil(sides[-1] / MERGE_STRIDE))
    return sides


def window_grid(size: int, split: int) -> Tuple[int, int]:
    """(window side, number of windows) of one axis of ``size`` tokens cut into ``split`` parts.

    The window side is ``ceil(size / split)``; the number of windows is chosen so that every window
    holds at least one real token. For ``size % split == 0`` this is the reference's ``size // split``.
    """
    window = math.ceil(size / split)
    return window, math.ceil(size / window)


def _window_taps(out_h: int, out_w: int, W: int, kernel_size: int, stride: int,
                 device: torch.device) -> torch.Tensor:
    """Flat indices (into H * W) of the taps of the ``out_h`` x ``out_w`` windows: window by window (row-major),
    each window's taps row-major, as ``nn.Unfold`` orders them."""
    k = kernel_size
    taps = torch.arange(k, device=device)
    rows = (torch.arange(out_h, device=device) * stride).view(out_h, 1, 1, 1) + taps.view(1, 1, k, 1)
    cols = (torch.arange(out_w, device=device) * stride).view(1, out_w, 1, 1) + taps.view(1, 1, 1, k)
    return (rows * W + cols).flatten()


def unfold_nhwc(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Every ``kernel_size`` x ``kernel_size`` window (at ``stride``) of NHWC ``x`` as one vector, channel-major as
    ``nn.Unfold``: (B, H, W, C) -> (B, out_h, out_w, C * k * k)."""
    B, H, W, C = x.shape
    k = kernel_size
    out_h, out_w = (H - k) // stride + 1, (W - k) // stride + 1
    if x.device.type == 'cpu':
        # On CPU an index gather of the taps takes the same values (copies) 2-6x faster than unfold (im2col), and
        # 2-12x faster with its backward (a scatter-add instead of col2im). GPUs keep unfold: index_select's
        # backward adds with atomics there, in no fixed order.
        taps = x.reshape(B, H * W, C).index_select(1, _window_taps(out_h, out_w, W, k, stride, x.device))
        return taps.view(B, out_h, out_w, k * k, C).transpose(3, 4).reshape(B, out_h, out_w, C * k * k)
    cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=k, stride=stride)  # B, C*k*k, out_h*out_w
    return cols.transpose(1, 2).reshape(B, out_h, out_w, C * k * k)


# --------------------------------------------------------------------------- modules
@register_notrace_module  # a leaf for torch.fx (timm's fx features): its padding depends on the input's size
class ElasticPatchEmbed(nn.Module):
    """Stage-1 tokenizer: zero-pad, Conv2d(kernel K, stride 4), LayerNorm; NCHW image -> NHWC tokens.

    Stride and dilation can be changed at run time (:meth:`set_tokenizer`) without touching weights.
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, norm_layer: Callable = _LayerNormRef):
        super().__init__()
        self.kernel_size = kernel_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=STEM_STRIDE)
        self.norm = norm_layer(embed_dim)

    @property
    def stride(self) -> int:
        return self.proj.stride[0]

    @property
    def dilation(self) -> int:
        return self.proj.dilation[0]

    def set_tokenizer(self, stride: int = STEM_STRIDE, dilation: int = 1) -> None:
        values = [_integer(stride), _integer(dilation)]
        if not all(v is not None and 1 <= v <= MAX_TOKENIZER_STEP for v in values):
            raise ValueError(f'tokenizer stride and dilation must be integers in [1, {MAX_TOKENIZER_STEP}], got '
                             f'stride={stride!r}, dilation={dilation!r}')
        stride, dilation = values
        self.proj.stride = (stride, stride)
        self.proj.dilation = (dilation, dilation)

    def grid_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return math.ceil(img_size[0] / self.stride), math.ceil(img_size[1] / self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride, dilation = self.proj.stride[0], self.proj.dilation[0]
        height, width = _static_size(x.shape[-2]), _static_size(x.shape[-1])
        for side in (height, width):
            fault = _tokenizer_fault(side, self.kernel_size, stride, dilation)
            if fault:
                raise ValueError(f'tokenizer stride {stride}, dilation {dilation} on a {height}x{width} image: '
                                 f'{fault}; use a smaller stride or dilation')
        top, bottom = _same_padding(height, self.kernel_size, stride, dilation)
        left, right = _same_padding(width, self.kernel_size, stride, dilation)
        x = self.proj(F.pad(x, (left, right, top, bottom)))
        # contiguous here: LayerNorm would copy the permuted view in its forward and again in its backward
        return self.norm(x.permute(0, 2, 3, 1).contiguous())


@register_notrace_module  # a leaf for torch.fx (timm's fx features): its padding depends on the input's size
class PatchMerging(nn.Module):
    """Stages 2-4 tokenizer: each new token concatenates a K x K neighbourhood (stride 2, channel-major
    as ``nn.Unfold``), then LayerNorm(K*K*dim) and a bias-free Linear to ``out_dim``. NHWC -> NHWC."""

    def __init__(self, dim: int, out_dim: int, kernel_size: int, norm_layer: Callable = _LayerNormRef):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = MERGE_STRIDE
        self.norm = norm_layer(kernel_size * kernel_size * dim)
        self.reduction = nn.Linear(kernel_size * kernel_size * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        top, bottom = _same_padding(H, self.kernel_size, self.stride)
        left, right = _same_padding(W, self.kernel_size, self.stride)
        x = F.pad(x, (0, 0, left, right, top, bottom))
        # contiguous (unless it already is): one copy, not one per LayerNorm pass
        x = unfold_nhwc(x, self.kernel_size, self.stride).contiguous()
        return self.reduction(self.norm(x))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows (no relative position bias).

    q, k and v have ``num_heads * (dim // num_heads)`` channels, which can be fewer than ``dim``. With
    ``fused_attn``, ``scaled_dot_product_attention`` runs, except on CPU in windows of at most
    ``CPU_PLAIN_ATTN_MAX_TOKENS`` tokens, where plain matmul-softmax attention is faster.
    """
    fused_attn: Final[bool]
    cpu_plain_attn_max_tokens: Final[int]

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.cpu_plain_attn_max_tokens = CPU_PLAIN_ATTN_MAX_TOKENS
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (num_windows * B, N, dim); mask: boolean, True where a key may be attended, broadcastable
        to (num_windows * B, heads, N, N)."""
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn and (x.device.type != 'cpu' or N > self.cpu_plain_attn_max_tokens):
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn.masked_fill(~mask, float('-inf'))
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B_, N, self.attn_dim)
        return self.proj_drop(self.proj(x))


@register_notrace_module  # a leaf for torch.fx (timm's fx features): its windows depend on the input's size
class AsViTBlock(nn.Module):
    """Pre-norm block: window attention over an S x S split of the grid, then an MLP. NHWC -> NHWC.

    With ``window_side`` set, windows keep that side (in tokens) at any grid size instead, as Swin's do.
    """

    def __init__(self, dim: int, num_heads: int, split: int, mlp_ratio: float, qkv_bias: bool = True,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 norm_layer: Callable = _LayerNormRef, act_layer: Callable = nn.GELU,
                 window_side: Optional[int] = None):
        super().__init__()
        self.split = split
        self.window_side = window_side
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        side = self.window_side
        if side is None:
            win_h, n_h = window_grid(H, self.split)
            win_w, n_w = window_grid(W, self.split)
        else:
            win_h, win_w = min(side, H), min(side, W)
            n_h, n_w = math.ceil(H / win_h), math.ceil(W / win_w)
        pad_h, pad_w = win_h * n_h - H, win_w * n_w - W
        mask: Optional[torch.Tensor] = None
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            valid = torch.zeros(n_h * win_h, n_w * win_w, dtype=torch.bool, device=x.device)
            valid[:H, :W] = True
            valid = valid.view(n_h, win_h, n_w, win_w).permute(0, 2, 1, 3).reshape(n_h * n_w, 1, 1, win_h * win_w)
            mask = valid.repeat(B, 1, 1, 1)
        windows = x.view(B, n_h, win_h, n_w, win_w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, win_h * win_w, C)
        windows = self.attn(windows, mask=mask)
        x = windows.view(B, n_h, n_w, win_h, win_w, C).permute(0, 1, 3, 2, 4, 5).reshape(
            B, n_h * win_h, n_w * win_w, C)
        return x[:, :H, :W, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attention(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class AsViTStage(nn.Module):
    """Patch merging (stages 2-4) followed by ``depth`` blocks. NHWC -> NHWC."""

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, split: int, mlp_ratio: float,
                 merge_kernel: Optional[int], drop_path: Sequence[float], **block_kwargs: Any):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim, out_dim, merge_kernel) if merge_kernel else nn.Identity()
        self.blocks = nn.Sequential(*[
            AsViTBlock(out_dim, num_heads, split, mlp_ratio, drop_path=drop_path[i], **block_kwargs)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PreLogitsHead(nn.Module):
    """Global average pool, then Linear(F, F) -> Tanh (pre-logits) -> dropout -> Linear(F, classes).

    With ``pool_type=''`` the head is applied to every token (NHWC in, NHWC out).
    """

    def __init__(self, num_features: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.):
        super().__init__()
        self.pool_type = _check_pool(pool_type)
        self.pre_logits = nn.Sequential(OrderedDict([('fc', nn.Linear(num_features, num_features)),
                                                     ('act', nn.Tanh())]))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.drop(self.pre_logits(x))
        return x if pre_logits else self.fc(x)


def _check_pool(pool_type: str) -> str:
    if pool_type not in ('avg', ''):
        raise ValueError(f"AsViT global_pool must be 'avg' (average over tokens) or '' (none), got {pool_type!r}")
    return pool_type


# --------------------------------------------------------------------------- model
class AsViT(nn.Module):
    """As-ViT built from a genotype (seed form plus ``embed_dim``/``depths``, or scaled form)."""

    def __init__(
            self,
            genotype: Union[Genotype, str],
            embed_dim: Optional[int] = None,
            depths: Optional[Sequence[int]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Callable = _LayerNormRef,
            act_layer: Callable = nn.GELU,
            window_img_size: Optional[int] = None,
    ):
        """``window_img_size``: None (default) cuts every stage's grid into S x S windows at any input size, as
        the genotype says; an image size (e.g. 224 for detection) fixes each stage's window side to the one the
        S x S split gives at that size, so larger inputs get more windows of the same size (Swin-like cost)."""
        super().__init__()
        if window_img_size is not None and not is_count(window_img_size):
            raise ValueError(f'window_img_size must be None or an image size >= 1, got {window_img_size!r}')
        if not isinstance(drop_path_rate, Real) or isinstance(drop_path_rate, bool) or not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}')
        self.genotype = resolve_genotype(genotype, embed_dim, depths)
        self.window_img_size = window_img_size
        self.num_classes = num_classes
        self.global_pool = _check_pool(global_pool)
        self.output_fmt = 'NHWC'
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        g = self.genotype
        widths = g.stage_widths()
        heads = g.stage_heads()
        self.embed_dim = widths[0]
        self.num_features = self.head_hidden_size = widths[-1]

        self.patch_embed = ElasticPatchEmbed(in_chans, widths[0], g.kernels[0], norm_layer=norm_layer)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(g.depths), device='cpu').split(list(g.depths))]
        window_sides: List[Optional[int]] = [None] * len(widths)
        if window_img_size is not None:
            for i, (split, grid) in enumerate(zip(g.splits, stage_grid_sides(window_img_size))):
                window_sides[i] = window_grid(grid, split)[0]
        self.stages = nn.Sequential(*[
            AsViTStage(
                dim=widths[max(i - 1, 0)], out_dim=widths[i], depth=g.depths[i], num_heads=heads[i],
                split=g.splits[i], mlp_ratio=g.expansions[i], merge_kernel=g.kernels[i] if i > 0 else None,
                drop_path=dpr[i], qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                norm_layer=norm_layer, act_layer=act_layer, window_side=window_sides[i])
            for i in range(len(widths))])
        self.feature_info = [
            dict(num_chs=w, reduction=STEM_STRIDE * MERGE_STRIDE ** i, module=f'stages.{i}')
            for i, w in enumerate(widths)]
        self.norm = norm_layer(self.num_features)
        self.head = PreLogitsHead(self.num_features, num_classes, global_pool, drop_rate=drop_rate)
        named_apply(_init_weights, self)

    # ------------------------------------------------------------ timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set()  # no position embeddings; timm's optimizer factory already skips norms and biases

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = self.head.pool_type = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head.fc = (nn.Linear(self.num_features, num_classes, **get_device_dtype(self)) if num_classes > 0
                        else nn.Identity())

    def set_tokenizer(self, stride: int = STEM_STRIDE, dilation: int = 1) -> None:
        """Change the stage-1 tokenizer's stride and dilation (progressive re-tokenization); weights stay, and
        ``feature_info`` reports the new reductions."""
        self.patch_embed.set_tokenizer(stride, dilation)
        for i, info in enumerate(self.feature_info):
            info['reduction'] = stride * MERGE_STRIDE ** i

    def set_fused_attn(self, enable: bool = True, cpu_plain_max_tokens: int = CPU_PLAIN_ATTN_MAX_TOKENS) -> None:
        """Use ``scaled_dot_product_attention`` (``enable``, the default), except on CPU in windows of at most
        ``cpu_plain_max_tokens`` tokens (0: in every window), or plain matmul-softmax attention everywhere."""
        if not (isinstance(cpu_plain_max_tokens, int) and not isinstance(cpu_plain_max_tokens, bool)
                and cpu_plain_max_tokens >= 0):
            raise ValueError(f'cpu_plain_max_tokens must be an integer >= 0 (0: SDPA in every window), '
                             f'got {cpu_plain_max_tokens!r}')
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.fused_attn = enable
                m.cpu_plain_attn_max_tokens = cpu_plain_max_tokens

    # ------------------------------------------------------------ forward
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns the output of each stage (before the next stage's merging).

        Args:
            x: Input image tensor (B, C, H, W).
            indices: Take last n stages if int, all if None, select matching indices if sequence.
            norm: Apply the final norm to the last stage's intermediate.
            stop_early: Stop after the last stage needed.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Only return the intermediates.
        Returns:
            List of intermediates, or (final features NHWC after the norm, intermediates).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        x = self.patch_embed(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                x_inter = self.norm(x) if norm and i == last_idx else x
                intermediates.append(x_inter.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else x_inter)
        if intermediates_only:
            return intermediates
        if i == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and optionally the norm and head) not needed for the given intermediates. Without
        the last stage, the features end at the last stage kept: the final norm and the head, sized for the last
        stage, go too, and ``num_features`` becomes the kept stage's width (as timm's Swin does)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0)
            self.head.pre_logits = nn.Identity()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> normed last-stage tokens (B, H/32, W/32, num_features)."""
        x = self.patch_embed(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module, name: str = '') -> None:
    """The authors' init: Linear trunc_normal(0.02) and zero bias, LayerNorm (1, 0); convs keep torch's."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def resolve_genotype(genotype: Union[Genotype, str], embed_dim: Optional[int] = None,
                     depths: Optional[Sequence[int]] = None) -> Genotype:
    """A scaled genotype from a scaled one, or from a seed one plus ``embed_dim`` (and ``depths``)."""
    g = Genotype.parse(genotype) if isinstance(genotype, str) else genotype
    if g.is_seed:
        if embed_dim is None:
            raise ValueError(f'seed genotype {g}: pass embed_dim (the stage-1 width C), or use the scaled form '
                             f'K,S,E,L|...|H,C')
        return g.scaled(tuple(depths) if depths is not None else DEFAULT_DEPTHS, embed_dim)
    for name, given, own in (('embed_dim', embed_dim, g.embed_dim), ('depths', depths, g.depths)):
        if given is not None and (tuple(given) if name == 'depths' else given) != own:
            raise ValueError(f'scaled genotype {g} has {name}={own}; it conflicts with {name}={given!r}')
    return g


# --------------------------------------------------------------------------- checkpoint conversion
_AUTHOR_KEY_RULES = (
    (re.compile(r'^layers\.(\d+)\.downsample\.'), lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
    (re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.mlps\.0\.0\.'),
     lambda m: f'stages.{m.group(1)}.blocks.{m.group(2)}.norm2.'),
    (re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.mlps\.0\.1\.'),
     lambda m: f'stages.{m.group(1)}.blocks.{m.group(2)}.mlp.'),
    (re.compile(r'^layers\.(\d+)\.blocks\.'), lambda m: f'stages.{m.group(1)}.blocks.'),
    (re.compile(r'^head\.0\.'), lambda m: 'head.pre_logits.fc.'),
    (re.compile(r'^head\.2\.'), lambda m: 'head.fc.'),
)


def unwrap_state_dict(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A state dict with a ``state_dict``/``model`` wrapper and a DistributedDataParallel ``module.`` prefix
    removed."""
    for wrapper in ('state_dict', 'model'):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: Optional[AsViT] = None) -> Dict[str, Any]:
    """Convert a state dict in the authors' layout (``layers.*``, ``mlps.0.*``, ``head.0/2``) to ours (the keys;
    the values, tensors or anything else, pass unchanged; ``model``, timm's filter argument, is not needed).

    State dicts already in our layout pass through; a ``model``/``state_dict`` wrapper and a
    DistributedDataParallel ``module.`` prefix are removed.
    """
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
        if key.endswith('attn_mask'):
            continue  # the reference registers a (None) buffer for shifted windows; we have none
        for pattern, repl in _AUTHOR_KEY_RULES:
            key, n = pattern.subn(repl, key, count=1)
            if n:
                break
        out[key] = value
    return out


# --------------------------------------------------------------------------- factory
def _has_weights(cfg: Dict[str, Any]) -> bool:
    return any(cfg.get(k) for k in ('hf_hub_id', 'url', 'file', 'state_dict'))


def _recorded_sha256(variant: str, cfg: Dict[str, Any]) -> Optional[str]:
    """The sha256 the registry records for the cfg's ``file`` (None for any other file)."""
    card, tag = _CARDS.get(variant), cfg.get('tag') or ''
    if card is None or tag not in card.tags() or not cfg.get('file'):
        return None
    registered = card.weights_file(tag)
    return card.weights_sha256(tag) if registered is not None and Path(cfg['file']) == registered else None


def _create_asvit(variant: str, pretrained: bool = False, **kwargs: Any) -> AsViT:
    weights: Optional[Path] = None
    if pretrained:
        overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), overlay).to_dict()
        if not _has_weights(cfg):
            tag = cfg.get('tag') or ''
            raise RuntimeError(
                f"{tagged_name(variant, tag)} has no pretrained weights (no hf_hub_id, url or file in its "
                f"pretrained cfg). Variants with weights: {', '.join(list_pretrained_variants()) or 'none'}. "
                f"To load your own file: pretrained_cfg_overlay=dict(file='path/to/model.safetensors').")
        # Resolve (hf-hub: through the cache, honouring HF_HUB_OFFLINE) and verify the file before building.
        genotype = resolve_genotype(kwargs['genotype'], kwargs.get('embed_dim'), kwargs.get('depths'))
        weights = resolve_weights(cfg, genotype, _recorded_sha256(variant, cfg))
        # a torch file is read here: timm's own load refuses a trainer checkpoint
        state = read_checkpoint(weights)[0] if weights is not None and weights.suffix != '.safetensors' else None
        if variant == 'asvit' and 'num_classes' not in overlay:
            # A free-form genotype has no classifier of its own: the pretrained cfg takes the weights' one, so that
            # timm drops a classifier of another size (as for every variant) instead of failing to load it.
            known = weights is not None or cfg.get('state_dict') is not None
            overlay['num_classes'] = (classifier_classes(weights, state or cfg.get('state_dict')) if known
                                      else kwargs.get('num_classes', 1000))
        if weights is not None:
            overlay.update(file=str(weights), source='file', **({} if state is None else {'state_dict': state}))
        kwargs['pretrained_cfg_overlay'] = overlay
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    try:
        model = build_model_with_cfg(
            AsViT, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter', flatten_sequential=True),
            **kwargs)
    except RuntimeError as e:  # torch's load_state_dict: missing keys or size mismatch
        if weights is None:
            raise
        raise describe_mismatch(weights, variant, genotype, e) from None
    for module in model.modules():  # the loaded state dict is not kept in the cfg (a second copy of the weights)
        if isinstance(getattr(module, 'pretrained_cfg', None), dict):
            module.pretrained_cfg.pop('state_dict', None)
    return model


def classifier_classes(weights: Optional[Path], state: Optional[Mapping[str, Any]]) -> int:
    """Classes of the classifier in ``state`` (any layout), else in the safetensors file ``weights`` (its header
    only); 0 without a classifier."""
    classifier = checkpoint_filter_fn(state if state is not None else safetensors_shapes(weights)).get('head.fc.weight')
    shape = tuple(classifier.shape) if isinstance(classifier, torch.Tensor) else classifier
    return shape[0] if shape else 0


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    input_size = kwargs.get('input_size', (3, 224, 224))
    return {
        'url': '', 'num_classes': 1000, 'input_size': input_size,
        'pool_size': tuple(stage_grid_sides(side)[-1] for side in input_size[1:]),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2202.11921',
        'paper_name': 'Auto-scaling Vision Transformers without Training',
        'origin_url': 'https://github.com/VITA-Group/AsViT',
        **kwargs,
    }


# --------------------------------------------------------------------------- registration
# Every variant comes from its card in registry/ (nothing about a variant is written here): see register_cards.
_CARDS: Dict[str, VariantCard] = {}

default_cfgs = generate_default_cfgs({'asvit': _cfg()})


def registered_card(name: str) -> Optional[VariantCard]:
    """The registry card behind a registered variant name (without tag), None for another name."""
    return _CARDS.get(name)


def registered_cards() -> List[VariantCard]:
    """The cards of every registered variant (the shipped registry, ``ASVIT_ZOO_REGISTRY``, register_cards and
    register_folder), sorted by name."""
    return [_CARDS[name] for name in sorted(_CARDS)]


def registered_folder(name: str) -> Path:
    """The registry folder of a registered ``VARIANT`` (its default tag's) or ``VARIANT.TAG``."""
    architecture, tag = split_model_name_tag(name)
    card = registered_card(architecture)
    if card is None or (tag or card.tag) not in card.tags():
        names = [tagged_name(c.name, t) for c in registered_cards() for t in c.tags()]
        raise ValueError(f'unknown variant {name!r}; registered: {", ".join(names)} (another registry: '
                         f'ASVIT_ZOO_REGISTRY, or --registry where a command has it)')
    return card.folder(tag or card.tag).path


def check_architecture_name(name: str) -> None:
    """Raise ``ValueError`` when ``name`` is a timm model that is not a registered As-ViT variant: a variant
    registered under it would replace that model ('asvit', the any-genotype entry point, included)."""
    if name not in _CARDS and is_model(name):
        raise ValueError(f'architecture {name!r} is the name of a timm model that is not an As-ViT variant; '
                         f'registering it would replace that model (give the variant its own name)')


def check_pretrained_tag(name: str) -> None:
    """Raise ``ValueError`` when ``name`` is a registered variant with a tag it does not have, listing its tags."""
    architecture, tag = split_model_name_tag(name)
    card = registered_card(architecture)
    if card is not None and tag and tag not in card.tags():
        tags = [tagged_name(architecture, t) for t in card.tags()]
        raise ValueError(f'{name}: {architecture} has no pretrained tag {tag!r}; it has {tags}')


def list_pretrained_variants() -> List[str]:
    """Names (with tag) of the registered variants that have weights."""
    return [tagged_name(card.name, tag) for card in _CARDS.values() for tag in card.tags()
            if _has_weights(card.pretrained_cfg(tag))]


@register_model
def asvit(pretrained: bool = False, **kwargs: Any) -> AsViT:
    """Any As-ViT genotype: ``timm.create_model('asvit', genotype='K,S,E,L|...|H,C')`` (or a seed string
    plus ``embed_dim``)."""
    if 'genotype' not in kwargs:
        raise TypeError("create_model('asvit') needs genotype='...' (a scaled string, or a seed string "
                        "with embed_dim=C); for a named variant use e.g. 'asvit_large'")
    return _create_asvit('asvit', pretrained=pretrained, **kwargs)


def _variant_entrypoint(card: VariantCard) -> Callable[..., AsViT]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> AsViT:
        return _create_asvit(card.name, pretrained=pretrained, **dict(card.model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = card.name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'As-ViT variant {card.name}: genotype {card.genotype}.'
    return entrypoint


def register_cards(cards: Iterable[VariantCard]) -> None:
    """Register each card's architecture with timm, with one pretrained cfg per tag (``import asvit_zoo``
    registers the shipped registry; call this with ``load_registry(path)`` for another one).

    The default cfg of an architecture is its card's own (timm's ``*`` mark): weights trained on another dataset
    (``asvit_small.fmnist``: 10 classes, grayscale) do not change what ``create_model('asvit_small')`` builds.
    """
    cards = [_joined(card) for card in cards]
    # The marked default goes last: timm would move a later tag with weights in front of it.
    default_cfgs.update(generate_default_cfgs({
        f'{card.name}.{tag}{"*" if tag == card.tag else ""}': _cfg(**card.pretrained_cfg(tag))
        for card in cards for tag in reversed(card.tags())}))
    for card in cards:
        with warnings.catch_warnings():  # a known architecture is registered again on purpose, with its new tags
            warnings.filterwarnings('ignore', message=f'Overwriting {card.name} in registry')
            register_model(_variant_entrypoint(card))
        _CARDS[card.name] = card


def _joined(card: VariantCard) -> VariantCard:
    """``card`` with the tags of the registered card of its architecture, if any: another registry may add tags
    (or replace one) but keeps the registered default and must not change the genotype."""
    known = _CARDS.get(card.name)
    if known is None:
        try:
            check_architecture_name(card.name)
        except ValueError as e:
            raise RegistryError(f'{card.path}: {e}') from None
        return card
    if card.genotype != known.genotype:
        raise RegistryError(f'{card.path}: {card.name} has genotype {card.genotype}, but the registered {card.name} '
                            f'({known.path}) has {known.genotype}; another registry may add pretrained tags to a '
                            f'variant, not change its architecture (give it another name)')
    own = {card.tag: card} if card.tag else {}  # a card loaded alone has its own tag only
    return dataclasses.replace(known, tagged={**known.tagged, **own, **card.tagged})


def register_folder(folder: Union[str, Path]) -> str:
    """Register the variant of one Hub-format folder (an export, a ``local-dir:`` copy, a Hub snapshot) with timm
    unless its architecture and tag are known already; returns the architecture's name."""
    card = load_card(Path(folder), check_name=False)
    if card.name not in _CARDS or card.tag not in _CARDS[card.name].tags():
        register_cards([card])
    return card.name


def register_model_source(name: str) -> None:
    """Make a model name of ``timm.create_model`` known before it is created: the variant of an ``hf-hub:``
    repo (its config.json from the cache or the Hub; :class:`~asvit_zoo.hub.HubUnavailableError`, saying how to
    fix it, when neither has it) or of a ``local-dir:`` folder is registered, as a variant outside the registry
    must be; a registered variant's tag is checked (:func:`check_pretrained_tag`)."""
    if name.startswith(HF_HUB_PREFIX):
        register_folder(hub_file(name[len(HF_HUB_PREFIX):], CONFIG_FILE).parent)
    elif name.startswith(LOCAL_DIR_PREFIX):
        register_folder(name[len(LOCAL_DIR_PREFIX):])
    else:
        check_pretrained_tag(name)


register_cards(load_registry())
for _extra in extra_registries():
    register_cards(load_registry(_extra))
