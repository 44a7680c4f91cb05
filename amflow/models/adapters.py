"""The temporal processing adapter (TPA) and the block that hosts it (docs/design.md 2.6).

``LN -> Linear(D, r) -> [AM flow] -> TPU along time -> GELU -> Linear(r, D)``, scaled by
the adapter's ``scale``, with drop-path, added to the residual stream either in parallel with the
block's MLP or right after its attention. The up-projection starts at zero, so an untrained adapter
adds exactly nothing and the model equals the frozen backbone.

How AM flow's scores enter (``model.am_flow.integration``): one module each in
:mod:`amflow.models.integrations`, registered by name; the adapter calls its hooks around the TPU.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import DropPath
from torch import nn

from amflow.models.attention import attention_branch, mlp_branch
from amflow.models.config import AdapterConfig, AmFlowConfig
from amflow.models.context import ClipContext
from amflow.models.integrations import INTEGRATIONS, Integration
from amflow.models.methods import MethodModel, register_method_model
from amflow.models.tpu import build_tpu, over_time


class TemporalProcessingAdapter(nn.Module):
    def __init__(self, dim: int, spec: AdapterConfig, num_frames: int, integration: Optional[str] = None):
        """``integration``: how AM flow's scores enter (a name of :data:`INTEGRATIONS`); None for ``tpa``."""
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
        self.integration: Optional[Integration] = INTEGRATIONS.get(integration) if integration is not None else None
        if self.integration is not None:
            self.integration.add_parameters(self, self.tpu, spec.tpu, spec.bottleneck, spec.tpu_heads)

    def forward(self, x: torch.Tensor, ctx: ClipContext, scores: Optional[torch.Tensor]) -> torch.Tensor:
        z = self.down(self.norm(x))
        extra = {}
        if scores is not None:
            z, extra = self.integration.before_tpu(self, z, scores, ctx)
        # Every token position, CLS and registers included, gets its own sequence over time.
        z = over_time(self.tpu, z, ctx.frames, **extra)
        if scores is not None:
            z = self.integration.after_tpu(self, z, scores, ctx)
        return self.drop_path(self.scale * self.up(self.act(z)))


class TPABlock(nn.Module):
    """A frozen timm block with a TPA. With ``use_am_flow`` the block computes AM flow's scores: for its
    TPA (an integration that feeds the adapter) and, where ``scores_for_head``, for an integration in
    the head (``pool``; :class:`amflow.models.video_model.VideoModel`), which reads them from
    ``ctx.head_scores``."""

    def __init__(self, dim: int, spec: AdapterConfig, num_frames: int, use_am_flow: bool,
                 integration: str = "gate", scores_for_head: bool = False):
        super().__init__()
        self.feeds_adapter = use_am_flow and INTEGRATIONS.get(integration).feeds_adapter
        self.adapter = TemporalProcessingAdapter(dim, spec, num_frames, integration if self.feeds_adapter else None)
        self.position = spec.position
        self.scores_for_head = use_am_flow and scores_for_head

    def forward(self, blk: nn.Module, x: torch.Tensor, ctx: ClipContext, index: int) -> torch.Tensor:
        wants_scores = self.feeds_adapter or self.scores_for_head
        attn_update, patch_map = attention_branch(blk, x, ctx.num_prefix, need_map=wants_scores and ctx.needs_own_map)
        scores = ctx.scores_for(index, patch_map) if wants_scores else None
        if self.scores_for_head:
            ctx.head_scores = scores
        if not self.feeds_adapter:
            scores = None
        x = x + attn_update
        if self.position == "after_attn":
            x = x + self.adapter(x, ctx, scores)
            return x + mlp_branch(blk, x)
        return x + mlp_branch(blk, x) + self.adapter(x, ctx, scores)


def _tpa_block(dim: int, adapter: AdapterConfig, num_frames: int, am_flow: Optional[AmFlowConfig],
               last: bool) -> TPABlock:
    # The 'pool' integration reads the deepest adapted block's scores.
    return TPABlock(dim, adapter, num_frames, use_am_flow=am_flow is not None,
                    integration=am_flow.integration if am_flow is not None else "gate", scores_for_head=last)


register_method_model("tpa", MethodModel(_tpa_block))
register_method_model("amflow", MethodModel(_tpa_block))
