"""``residual_gate``: the TPU's output on patch tokens is scaled by ``1 + w * (score - 1)``, ``w``
learned per bottleneck channel."""
from __future__ import annotations

import torch
from torch import nn

from amflow.models.integrations.base import Integration, register, with_prefix


class ResidualGate(Integration):
    def add_parameters(self, adapter, tpu, tpu_name, bottleneck, tpu_heads):
        adapter.score_gate = nn.Parameter(torch.zeros(bottleneck))

    def after_tpu(self, adapter, z, scores, ctx):
        return z * (1 + with_prefix((scores.to(z.dtype) - 1)[..., None] * adapter.score_gate, ctx.num_prefix, 0.0))


register("residual_gate", ResidualGate())
