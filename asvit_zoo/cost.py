"""Model cost: parameter counts and multiply-accumulates (MACs) counted with torch's FlopCounterMode."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .asvit import AsViT
from .genotype import Genotype
from .modes import kept_modes
from .validation import is_count


# torch's FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel that
# scaled_dot_product_attention uses on CPU; count it with torch's own attention formulas.
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}

__all__ = ['CPU_ATTENTION_FLOPS', 'param_count', 'check_input_size', 'count_macs', 'genotype_params', 'genotype_gmacs']

PAPER_CLASSES = 1000  # the head the paper's parameter and MAC counts include


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_input_size(input_size: Any) -> None:
    """Raise ``ValueError`` unless ``input_size`` is one image's (C, H, W), three integers >= 1."""
    if not (isinstance(input_size, Sequence) and len(input_size) == 3 and all(map(is_count, input_size))):
        raise ValueError(f'input_size must be (C, H, W), three integers >= 1, got {input_size!r}')


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of one image of ``input_size`` (C, H, W).

    FlopCounterMode counts matmuls, convolutions and attention (2 FLOPs per MAC); elementwise work
    (norms, activations, softmax) is not counted, as in the paper's numbers.
    """
    check_input_size(input_size)
    with kept_modes(model):
        model.eval()
        param = next(model.parameters(), torch.zeros(()))
        x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            model(x)
    return counter.get_total_flops() // 2


def genotype_params(genotype: Genotype, num_classes: int = PAPER_CLASSES) -> int:
    """Parameters of the As-ViT of ``genotype``, counted on the meta device (nothing is allocated)."""
    with torch.device('meta'):
        return param_count(AsViT(genotype, num_classes=num_classes))


def genotype_gmacs(genotype: Genotype, image_size: int = 224, num_classes: int = PAPER_CLASSES) -> float:
    """GMACs of the As-ViT of ``genotype`` on one RGB image of ``image_size``; building it leaves the global
    random state as it was."""
    with torch.random.fork_rng(devices=[]):
        return count_macs(AsViT(genotype, num_classes=num_classes), (3, image_size, image_size)) / 1e9
