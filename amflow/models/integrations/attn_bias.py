"""``attn_bias`` (transformer TPU only): the attention logits from frame t to frame k get
``alpha_h * score_k``, one learned ``alpha`` per head: frames where the token changes get more or
less attention."""
from __future__ import annotations

import torch
from torch import nn

from amflow.errors import AmflowError
from amflow.models.context import ClipContext
from amflow.models.integrations.base import Integration, register, with_prefix
from amflow.models.tpu import TransformerTPU, to_sequences


def attention_bias(alpha: torch.Tensor, scores: torch.Tensor, ctx: ClipContext) -> torch.Tensor:
    """``[S * heads, T, T]``: ``alpha_h * score`` of the attended (key) frame, 0 for prefix tokens."""
    keys = to_sequences(with_prefix(scores, ctx.num_prefix, 0.0), ctx.frames)   # [S, T]
    bias = keys[:, None, None, :] * alpha[None, :, None, None]                 # [S, heads, 1, T]
    S, heads, T = keys.shape[0], alpha.shape[0], ctx.frames
    return bias.expand(S, heads, T, T).reshape(S * heads, T, T)


class AttentionBias(Integration):
    def add_parameters(self, adapter, tpu, tpu_name, bottleneck, tpu_heads):
        if not isinstance(tpu, TransformerTPU):
            raise AmflowError(f"model.am_flow.integration: attn_bias biases the transformer TPU's "
                              f"attention; model.adapter.tpu is '{tpu_name}': use tpu: transformer "
                              f"or another integration (gate, channels, residual_gate)")
        adapter.score_bias = nn.Parameter(torch.zeros(tpu_heads))

    def before_tpu(self, adapter, z, scores, ctx):
        return z, {"bias": attention_bias(adapter.score_bias, scores.to(z.dtype), ctx)}


register("attn_bias", AttentionBias())
