"""Attention for the blocks whose maps AM flow needs (docs/design.md 2.2).

timm's ``Attention`` uses the fused ``scaled_dot_product_attention`` kernel, which never materialises
``softmax(q k^T * scale)``. The blocks that feed AM flow compute their output with the same fused
kernel (same qkv projection, q/k norms, scale, output norm, gate and projection as timm, so the block
output is timm's), and the probabilities a second time, without gradient and with the q·k logits in
float32. The maps are detached anyway: keeping them out of autograd saves the [B, heads, L, L]
softmax and its bf16 copy that backward would otherwise hold per adapted block (about 57 MB per
frame over 12 ViT-B blocks), and float32 logits keep bf16 rounding out of the scores AM flow
differentiates. Every other block keeps timm's own forward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def explicit_attention(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention.forward`` plus its probabilities: ``(output [B, L, C], probs [B, heads, L, L])``.

    ``output`` carries gradients (fused kernel); ``probs`` is float32 and detached.
    """
    B, L, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0,
                                         scale=attn.scale)
    out = out.transpose(1, 2).reshape(B, L, attn.attn_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), attention_probs(q, k, attn.scale)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale)`` in float32 without gradient (autocast off: bf16 logits distort it)."""
    with torch.no_grad(), torch.autocast(device_type=q.device.type, enabled=False):
        return ((q.float() * scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)


def patch_attention_map(probs: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Head-averaged patch-to-patch map ``[B, N, N]`` (CLS / register rows and columns dropped).

    Detached and in float32: the map is an input to AM flow, never a path for gradients, and the
    differences AM flow takes are of order 1/N, too fine for bf16.
    """
    return probs.detach()[:, :, num_prefix:, num_prefix:].float().mean(dim=1)


def attention_branch(blk: nn.Module, x: torch.Tensor, num_prefix: int,
                     need_map: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The residual update of a timm ``Block``'s attention half, plus its patch map if ``need_map``."""
    h = blk.norm1(x)
    if not need_map:
        return blk.drop_path1(blk.ls1(blk.attn(h))), None
    out, probs = explicit_attention(blk.attn, h)
    return blk.drop_path1(blk.ls1(out)), patch_attention_map(probs, num_prefix)


def mlp_branch(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual update of a timm ``Block``'s MLP half."""
    return blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
