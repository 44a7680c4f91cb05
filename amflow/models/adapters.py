"""The temporal processing adapter (TPA) and the block that hosts it (docs/design.md 2.6).

``LN -> Linear(D, r) -> gate patch tokens by AM flow -> TPU along time -> GELU -> Linear(r, D)``,
scaled by ``AdapterSpec.scale``, with drop-path, added to the residual stream either in parallel with
the block's MLP or right after its attention. The up-projection starts at zero, so an untrained
adapter adds exactly nothing and the model equals the frozen backbone.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import DropPath
from torch import nn

from amflow.models.attention import attention_branch, mlp_branch
from amflow.models.context import ClipContext
from amflow.models.tpu import build_tpu, over_time
from amflow.params import AdapterSpec


def gate_patch_tokens(z: torch.Tensor, scores: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Multiply patch tokens ``z[:, prefix:]`` by their scores ``[B*T, N]``; CLS / registers pass unchanged."""
    ones = scores.new_ones(scores.shape[0], num_prefix)
    gate = torch.cat([ones, scores], dim=1).to(z.dtype)
    return z * gate[..., None]


class TemporalProcessingAdapter(nn.Module):
    def __init__(self, dim: int, spec: AdapterSpec, num_frames: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, spec.bottleneck)
        self.tpu = build_tpu(spec, num_frames)
        self.act = nn.GELU()
        self.up = nn.Linear(spec.bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = spec.scale
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: ClipContext, scores: Optional[torch.Tensor]) -> torch.Tensor:
        z = self.down(self.norm(x))
        if scores is not None:
            z = gate_patch_tokens(z, scores, ctx.num_prefix)
        # Every token position, CLS and registers included, gets its own sequence over time.
        z = over_time(self.tpu, z, ctx.frames)
        return self.drop_path(self.scale * self.up(self.act(z)))


class TPABlock(nn.Module):
    """A frozen timm block with a TPA; with ``use_am_flow`` the TPA is gated by AM flow."""

    def __init__(self, dim: int, spec: AdapterSpec, num_frames: int, use_am_flow: bool):
        super().__init__()
        self.adapter = TemporalProcessingAdapter(dim, spec, num_frames)
        self.position = spec.position
        self.use_am_flow = use_am_flow

    def forward(self, blk: nn.Module, x: torch.Tensor, ctx: ClipContext, index: int) -> torch.Tensor:
        own_map = self.use_am_flow and ctx.same_block_source
        attn_update, patch_map = attention_branch(blk, x, ctx.num_prefix, need_map=own_map)
        scores = ctx.scores_for(index, patch_map) if self.use_am_flow else None
        x = x + attn_update
        if self.position == "after_attn":
            x = x + self.adapter(x, ctx, scores)
            return x + mlp_branch(blk, x)
        return x + mlp_branch(blk, x) + self.adapter(x, ctx, scores)
