"""The temporal processing adapter (TPA) and the block that hosts it (docs/design.md 2.6).

``LN -> Linear(D, r) -> [AM flow] -> TPU along time -> GELU -> Linear(r, D)``, scaled by
``AdapterSpec.scale``, with drop-path, added to the residual stream either in parallel with the
block's MLP or right after its attention. The up-projection starts at zero, so an untrained adapter
adds exactly nothing and the model equals the frozen backbone.

How AM flow's scores enter (``model.am_flow.integration``; ``pool`` acts in the head instead, see
:mod:`amflow.models.video_model`):

- ``gate``: patch tokens are multiplied by their score before the TPU (a fixed per-token scale).
- ``attn_bias`` (transformer TPU): the attention logits from frame t to frame k get
  ``alpha_h * score_k`` (one learned ``alpha`` per head): frames where the token changes get more
  or less attention.
- ``channels``: ``Linear(10, r)`` of the score, its change from the previous frame and its 8 grid
  neighbours is added to the patch tokens' bottleneck: the TPU sees where and when the change is,
  which a magnitude alone cannot tell it.
- ``residual_gate``: the TPU's output on patch tokens is scaled by ``1 + w * (score - 1)``
  (``w`` learned per channel).

Every parameter of the last three starts at zero and is created without drawing random numbers, so
an untrained ``amflow`` with them computes exactly what ``tpa`` built from the same seed does.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from amflow.models.attention import attention_branch, mlp_branch
from amflow.models.context import ClipContext
from amflow.errors import AmflowError
from amflow.models.tpu import TransformerTPU, build_tpu, over_time, to_sequences
from amflow.params import INTEGRATIONS, AdapterSpec

SCORE_FEATURES = 10  # score, its change over time, its 8 grid neighbours


def gate_patch_tokens(z: torch.Tensor, scores: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Multiply patch tokens ``z[:, prefix:]`` by their scores ``[B*T, N]``; CLS / registers pass unchanged."""
    ones = scores.new_ones(scores.shape[0], num_prefix)
    gate = torch.cat([ones, scores], dim=1).to(z.dtype)
    return z * gate[..., None]


def score_features(scores: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
    """``[B*T, N]`` scores -> ``[B*T, N, 10]``: the score, its change from the previous frame (0 on
    the first) and its 8 neighbours on the patch grid (edges replicated)."""
    BT, N = scores.shape
    h, w = grid
    s = scores.view(BT // frames, frames, N)
    change = torch.cat([torch.zeros_like(s[:, :1]), s[:, 1:] - s[:, :-1]], dim=1).reshape(BT, N, 1)
    padded = F.pad(scores.view(BT, 1, h, w), (1, 1, 1, 1), mode="replicate")
    around = F.unfold(padded, kernel_size=3).transpose(1, 2)                       # [B*T, N, 9]
    neighbours = torch.cat([around[..., :4], around[..., 5:]], dim=-1)             # centre dropped
    return torch.cat([scores[..., None], change, neighbours], dim=-1)


def with_prefix(values: torch.Tensor, num_prefix: int, fill: float) -> torch.Tensor:
    """Per-patch ``[B*T, N, ...]`` -> per-token ``[B*T, prefix + N, ...]``, prefix tokens set to ``fill``."""
    pad = values.new_full((values.shape[0], num_prefix, *values.shape[2:]), fill)
    return torch.cat([pad, values], dim=1)


class TemporalProcessingAdapter(nn.Module):
    def __init__(self, dim: int, spec: AdapterSpec, num_frames: int, integration: Optional[str] = None):
        """``integration``: how AM flow's scores enter (:data:`INTEGRATIONS`); None for ``tpa``."""
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
        if integration is not None and integration not in INTEGRATIONS:
            raise AmflowError(f"model.am_flow.integration must be one of {INTEGRATIONS}, got {integration!r}")
        self.integration = integration
        r = spec.bottleneck
        # Zero tensors, not nn.Linear: no random draws, so the rest of the init matches tpa's.
        if integration == "attn_bias":
            if not isinstance(self.tpu, TransformerTPU):
                raise AmflowError(f"model.am_flow.integration: attn_bias biases the transformer TPU's "
                                  f"attention; model.adapter.tpu is '{spec.tpu}': use tpu: transformer "
                                  f"or another integration (gate, channels, residual_gate)")
            self.score_bias = nn.Parameter(torch.zeros(spec.tpu_heads))
        elif integration == "channels":
            self.score_in = nn.Parameter(torch.zeros(r, SCORE_FEATURES))
        elif integration == "residual_gate":
            self.score_gate = nn.Parameter(torch.zeros(r))

    def forward(self, x: torch.Tensor, ctx: ClipContext, scores: Optional[torch.Tensor]) -> torch.Tensor:
        z = self.down(self.norm(x))
        mode = self.integration if scores is not None else None
        extra = {}
        if mode == "gate":
            z = gate_patch_tokens(z, scores, ctx.num_prefix)
        elif mode == "channels":
            feats = score_features(scores.to(z.dtype), ctx.frames, ctx.grid)
            z = z + with_prefix(feats @ self.score_in.t(), ctx.num_prefix, 0.0)
        elif mode == "attn_bias":
            extra["bias"] = self._attention_bias(scores.to(z.dtype), ctx)
        # Every token position, CLS and registers included, gets its own sequence over time.
        z = over_time(self.tpu, z, ctx.frames, **extra)
        if mode == "residual_gate":
            z = z * (1 + with_prefix((scores.to(z.dtype) - 1)[..., None] * self.score_gate, ctx.num_prefix, 0.0))
        return self.drop_path(self.scale * self.up(self.act(z)))

    def _attention_bias(self, scores: torch.Tensor, ctx: ClipContext) -> torch.Tensor:
        """``[S * heads, T, T]``: ``alpha_h * score`` of the attended (key) frame, 0 for prefix tokens."""
        keys = to_sequences(with_prefix(scores, ctx.num_prefix, 0.0), ctx.frames)   # [S, T]
        bias = keys[:, None, None, :] * self.score_bias[None, :, None, None]        # [S, heads, 1, T]
        S, heads, T = keys.shape[0], self.score_bias.shape[0], ctx.frames
        return bias.expand(S, heads, T, T).reshape(S * heads, T, T)


class TPABlock(nn.Module):
    """A frozen timm block with a TPA. With ``use_am_flow`` the block computes AM flow's scores: for its
    TPA (the integrations but ``pool``) and, where ``scores_for_head``, for the ``pool`` integration of
    the head (:class:`amflow.models.video_model.VideoModel`), which reads them from ``ctx.head_scores``."""

    def __init__(self, dim: int, spec: AdapterSpec, num_frames: int, use_am_flow: bool,
                 integration: str = "gate", scores_for_head: bool = False):
        super().__init__()
        self.feeds_adapter = use_am_flow and integration != "pool"
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
