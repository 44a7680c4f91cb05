"""``channels``: ``Linear(10, r)`` of the score, its change from the previous frame and its 8 grid
neighbours is added to the patch tokens' bottleneck: the TPU sees where and when the change is, which
a magnitude alone cannot tell it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amflow.models.integrations.base import Integration, register, with_prefix

SCORE_FEATURES = 10  # score, its change over time, its 8 grid neighbours


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


class Channels(Integration):
    def add_parameters(self, adapter, tpu, tpu_name, bottleneck, tpu_heads):
        adapter.score_in = nn.Parameter(torch.zeros(bottleneck, SCORE_FEATURES))

    def before_tpu(self, adapter, z, scores, ctx):
        feats = score_features(scores.to(z.dtype), ctx.frames, ctx.grid)
        return z + with_prefix(feats @ adapter.score_in.t(), ctx.num_prefix, 0.0), {}


register("channels", Channels())
