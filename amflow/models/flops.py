"""GFLOPs per clip, counted by ``torch.utils.flop_counter.FlopCounterMode`` (docs/design.md 2.7).

Convention: FlopCounterMode counts a multiply-add as 2 FLOPs (matmuls, convolutions, attention);
element-wise work (softmax, norms, activations) is not counted. Papers that quote fvcore numbers
(AIM, ST-Adapter: "GFLOPs") count 1 per multiply-add, i.e. half of this figure.

FlopCounterMode has no formulas for three kernels our models hit, so they are added here from the
operators' shapes: CPU flash attention (the fused path timm and ``nn.TransformerEncoderLayer`` take on
CPU), and the oneDNN / cuDNN LSTM kernels. The forward runs with autograd enabled because under
``no_grad`` ``nn.TransformerEncoderLayer`` switches to a fused inference kernel that is not counted.
"""
from __future__ import annotations

from math import prod
from typing import Union

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _rnn_matmul_flop(steps: int, weight_shapes) -> int:
    # Each time step multiplies the input by W_ih and the state by W_hh: 2 FLOPs per weight entry.
    return 2 * steps * sum(prod(s) for s in weight_shapes if len(s) == 2)


def _mkldnn_rnn_layer_flop(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return _rnn_matmul_flop(prod(input_shape[:-1]), [w_ih, w_hh])


def _cudnn_rnn_flop(input_shape, weights, *args, out_shape=None, **kwargs) -> int:
    return _rnn_matmul_flop(prod(input_shape[:-1]), weights)


EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
    aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flop,
    aten._cudnn_rnn: _cudnn_rnn_flop,
}


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` with the extra formulas above."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def clip_gflops(model: torch.nn.Module, num_frames: int, img_size: Union[int, tuple[int, int]]) -> float:
    """Forward GFLOPs of one clip ``[1, num_frames, 3, H, W]`` (identity transforms if the model needs them,
    an empty actor coverage for a control that reads it)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    ref = next(model.parameters())
    video = torch.zeros(1, num_frames, 3, h, w, device=ref.device, dtype=ref.dtype)
    transforms = None
    if getattr(model, "needs_transforms", False):
        transforms = torch.eye(3, device=ref.device).expand(1, num_frames - 1, 3, 3).contiguous()
    extra = {}
    if getattr(model, "reads_coverage", False):
        extra["coverage"] = torch.zeros(1, num_frames, h, w, device=ref.device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            flops = count_flops(model, video, transforms, **extra)
    finally:
        model.train(was_training)
    return flops / 1e9
