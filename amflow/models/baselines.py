"""The adapter baselines of the comparison table (docs/design.md 2.7), on the same frozen timm blocks.

- AIM (Yang et al., ICLR 2023), per block as in docs/design.md 2.7:
  1. temporal: the block's frozen attention run along T at each token position, through a
     T-adapter (bottleneck, no skip) and added with drop-path;
  2. spatial: the frozen attention as usual, its output passed through an S-adapter (bottleneck with
     skip) before the block's layer-scale;
  3. MLP: an MLP-adapter (bottleneck, no skip) on the MLP's normalised input, in parallel with the
     MLP, times ``scale``, with drop-path.
  A zero-initialised temporal embedding is added to the tokens once, after the positional one
  (held by the video model). Every up-projection starts at zero: untrained == frozen backbone.
- ST-Adapter (Pan et al., NeurIPS 2022): ``fc1 -> depthwise Conv3d over (T, h, w) -> fc2`` on the
  patch tokens (CLS and registers untouched), in series on the residual stream before the attention
  (the official code's ``adapter_pre_attn``). Not before the MLP (its other option): there, the last
  block's adapter changes only patch tokens that no later attention reads, so it cannot reach the CLS
  head and never gets a gradient (tests/models/test_models_video.py checks every parameter learns). As in
  the official code the conv (weight and bias) and both fc biases start at zero; fc2's weight keeps
  its random init, since zeroing it too would leave conv and fc2 without gradient (each one's
  gradient is proportional to the other).
Both use the adapter's ``bottleneck`` as their width, so every method gets the same budget.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from amflow.errors import AmflowError
from amflow.models.attention import attention_branch, mlp_branch
from amflow.models.context import ClipContext
from amflow.models.config import AdapterConfig
from amflow.models.methods import MethodModel, register_method_model


class Bottleneck(nn.Module):
    """AIM's adapter: ``fc1 -> GELU -> fc2`` (fc2 zero-init), optionally with a skip connection."""

    def __init__(self, dim: int, hidden: int, skip: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x)))
        return x + y if self.skip else y


def _time_major(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B*T, L, D]`` -> ``[B*L, T, D]``: one sequence over time per token position."""
    BT, L, D = x.shape
    return x.view(BT // frames, frames, L, D).transpose(1, 2).reshape(-1, frames, D)


def _frame_major(x: torch.Tensor, frames: int, tokens: int) -> torch.Tensor:
    """Inverse of :func:`_time_major`."""
    D = x.shape[-1]
    return x.view(-1, tokens, frames, D).transpose(1, 2).reshape(-1, tokens, D)


class AIMBlock(nn.Module):
    def __init__(self, dim: int, spec: AdapterConfig):
        super().__init__()
        r = spec.bottleneck
        self.t_adapter = Bottleneck(dim, r, skip=False)
        self.s_adapter = Bottleneck(dim, r, skip=True)
        self.mlp_adapter = Bottleneck(dim, r, skip=False)
        self.scale = spec.scale
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path > 0 else nn.Identity()

    def forward(self, blk: nn.Module, x: torch.Tensor, ctx: ClipContext, index: int) -> torch.Tensor:
        T, L = ctx.frames, x.shape[1]
        # 1. temporal attention: the frozen attention weights, along time.
        xt = blk.attn(blk.norm1(_time_major(x, T)))
        x = x + self.drop_path(_frame_major(self.t_adapter(xt), T, L))
        # 2. spatial attention, adapted before the block's layer-scale.
        x = x + blk.drop_path1(blk.ls1(self.s_adapter(blk.attn(blk.norm1(x)))))
        # 3. MLP with a parallel adapter on the same normalised input.
        xn = blk.norm2(x)
        return (x + blk.drop_path2(blk.ls2(blk.mlp(xn)))
                + self.drop_path(self.scale * self.mlp_adapter(xn)))


class STAdapter(nn.Module):
    def __init__(self, dim: int, spec: AdapterConfig):
        super().__init__()
        r = spec.bottleneck
        kernel = tuple(int(k) for k in spec.st_kernel)
        if any(k % 2 == 0 or k < 1 for k in kernel):
            raise AmflowError(f"model.adapter.st_kernel must be positive odd sizes (got {list(kernel)})")
        self.fc1 = nn.Linear(dim, r)
        self.conv = nn.Conv3d(r, r, kernel, padding=tuple(k // 2 for k in kernel), groups=r)
        self.fc2 = nn.Linear(r, dim)
        for p in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, ctx: ClipContext) -> torch.Tensor:
        """Update for ``x`` ``[B*T, L, D]``: non-zero on patch tokens only."""
        P, (h, w), T = ctx.num_prefix, ctx.grid, ctx.frames
        BT, L, _ = x.shape
        z = self.fc1(x[:, P:])                                            # [B*T, N, r]
        r = z.shape[-1]
        z = z.view(BT // T, T, h, w, r).permute(0, 4, 1, 2, 3)           # [B, r, T, h, w]
        z = self.conv(z).permute(0, 2, 3, 4, 1).reshape(BT, h * w, r)
        delta = self.fc2(z)
        return torch.cat([delta.new_zeros(BT, P, delta.shape[-1]), delta], dim=1)


class STAdapterBlock(nn.Module):
    def __init__(self, dim: int, spec: AdapterConfig):
        super().__init__()
        self.adapter = STAdapter(dim, spec)

    def forward(self, blk: nn.Module, x: torch.Tensor, ctx: ClipContext, index: int) -> torch.Tensor:
        x = x + self.adapter(x, ctx)
        x = x + attention_branch(blk, x, ctx.num_prefix, need_map=False)[0]
        return x + mlp_branch(blk, x)


register_method_model("aim", MethodModel(lambda dim, adapter, num_frames, am_flow, last: AIMBlock(dim, adapter),
                                         temporal_embedding=True))
register_method_model("st_adapter", MethodModel(lambda dim, adapter, num_frames, am_flow, last:
                                                STAdapterBlock(dim, adapter)))
