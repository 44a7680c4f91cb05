"""``gate``: the bottleneck's patch tokens are multiplied by their score before the TPU (a fixed
per-token scale; CLS and registers pass unchanged)."""
from __future__ import annotations

import torch

from amflow.models.integrations.base import Integration, register


def gate_patch_tokens(z: torch.Tensor, scores: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Multiply patch tokens ``z[:, prefix:]`` by their scores ``[B*T, N]``; CLS / registers pass unchanged."""
    ones = scores.new_ones(scores.shape[0], num_prefix)
    gate = torch.cat([ones, scores], dim=1).to(z.dtype)
    return z * gate[..., None]


class Gate(Integration):
    def before_tpu(self, adapter, z, scores, ctx):
        return gate_patch_tokens(z, scores, ctx.num_prefix), {}


register("gate", Gate())
